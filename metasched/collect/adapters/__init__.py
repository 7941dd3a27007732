"""Scheduler adapters. ``make_adapter`` picks one by the destination's ``scheduler``."""

from __future__ import annotations

from importlib import import_module

from metasched.domain.errors import UnsupportedScheduler
from metasched.domain.ports import Adapter
from metasched.settings import DestinationConfig

# scheduler name -> "module:ClassName"; each class is constructed with the DestinationConfig.
ADAPTERS: dict[str, str] = {
    "slurm": "metasched.collect.adapters.slurm:SlurmAdapter",
    "node": "metasched.collect.adapters.node:NodeAdapter",
    "sge": "metasched.collect.adapters.sge:SGEAdapter",
    "htcondor": "metasched.collect.adapters.htcondor:HTCondorAdapter",
    "yarn": "metasched.collect.adapters.yarn:YarnAdapter",
}


def make_adapter(dest: DestinationConfig) -> Adapter:
    target = ADAPTERS.get(dest.scheduler)
    if target is None:
        raise UnsupportedScheduler(f"scheduler {dest.scheduler!r} is not supported yet")
    module_name, class_name = target.split(":")
    try:
        module = import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise UnsupportedScheduler(f"scheduler {dest.scheduler!r} is not supported yet") from None
    adapter: Adapter = getattr(module, class_name)(dest)
    return adapter
