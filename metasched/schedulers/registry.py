"""Scheduler adapters by name: ``make_adapter`` picks one by the destination's ``scheduler``."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from metasched.domain.errors import UnsupportedScheduler
from metasched.domain.ports import Adapter
from metasched.schedulers.htcondor import HTCondorAdapter
from metasched.schedulers.node import NodeAdapter
from metasched.schedulers.sge import SGEAdapter
from metasched.schedulers.slurm import SlurmAdapter
from metasched.schedulers.yarn import YarnAdapter
from metasched.settings import DestinationConfig

# scheduler name -> adapter class, constructed with the DestinationConfig
ADAPTERS: Mapping[str, Callable[[DestinationConfig], Adapter]] = {
    "slurm": SlurmAdapter,
    "node": NodeAdapter,
    "sge": SGEAdapter,
    "htcondor": HTCondorAdapter,
    "yarn": YarnAdapter,
}


def make_adapter(dest: DestinationConfig) -> Adapter:
    """The destination's adapter; UnsupportedScheduler for a scheduler without one."""
    factory = ADAPTERS.get(dest.scheduler)
    if factory is None:
        raise UnsupportedScheduler(f"scheduler {dest.scheduler!r} is not supported yet")
    return factory(dest)
