"""Replay benchmark of ranking quality: the same Galaxy workload placed by TPV's default, at random,
by metasched (with and without its placement ledger) and by a perfect-knowledge greedy oracle,
scored by the jobs' turnaround.

What "good" means here is the product goal: the job finishes soonest. Each job's turnaround is
staging its inputs at the chosen destination + waiting in that destination's queue + running there.

The simulator (see docs/replay.md):

- destinations with different node shapes, per-tool speed factors, ingress bandwidth, object stores,
  coordinates; one is on the other side of the world, two have GPUs, three are Pulsar sites (a job
  is in no queue while its inputs stage there);
- each destination schedules first-come-first-served with conservative backfill on exact run times:
  a job reserves the earliest slot on one node where its cores/memory/GPUs fit for its whole run,
  from the moment its inputs are staged, without delaying any earlier reservation;
- background (non-Galaxy) jobs keep every destination busy to its own degree;
- Galaxy jobs arrive in workflow bursts (5-40 jobs of one tool within a minute) and as single jobs;
  staging follows the simulator's own transfer law, which is deliberately not the rank model's.

metasched sees what `metasched collect` on a timer would: every ``--collect-every`` simulated
seconds (default 60) every destination's state is written into a real SQLite store with
``Store.write_snapshot`` and the placement ledger is reconciled; ranks in between read that
snapshot, however old. ``--fresh-state`` instead writes every changed destination before each
decision (the optimistic upper bound). The ranking is ``metasched.rank.rank`` called in process
with a TPV-shaped request carrying the job's id; the job goes to the first id of
``sorted_destinations``.

    python bench/replay.py [--jobs 3000] [--seed 1] [--collect-every 60] [--fresh-state]
                           [--weight NAME=VALUE] [--breakdown] [--json]
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from metasched.app.ranking import rank
from metasched.domain.destination import MetricRow
from metasched.domain.jobs import HELD, PENDING, RUNNING, Job, Node, Snapshot
from metasched.rank.geo import haversine_km
from metasched.settings import Config, RankSettings, SSHSettings
from metasched.settings.weights import Weights
from metasched.store import Store
from metasched.store.reconcile import reconcile

EPOCH = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)  # simulated time 0 (a Monday morning)
INF = math.inf
# The simulator's own transfer law: a link carries min(store egress, site ingress) over zero distance,
# half of that at SIM_HALVING_KM, plus a setup cost per dataset. The rank model's defaults (100 MB/s
# for every link, half of it at 2,000 km, no per-transfer cost) deliberately differ: rank must not be
# judged on knowing the truth.
SIM_HALVING_KM = 1200.0  # long round trips hurt a single TCP stream sooner than the model assumes
SIM_SETUP_S = 20.0  # per dataset moved: connection, metadata, checksum
WATTS_PER_CORE = 10.0  # the energy the simulator charges (the rank model's defaults happen to agree)
WATTS_PER_GPU = 300.0
CARBON_EVERY_S = 900.0  # how often the simulated carbon feed is refreshed (grid figures are hourly)
CARBON_SOURCE = "pulsar_carbon_intensity"  # the InfluxDB measurement collect caches them from
JOBS_PER_HOUR = 60.0  # Galaxy arrival rate: the home cluster alone can carry the mean load


# --------------------------------------------------------------------------------------------
# Scenario


@dataclass(frozen=True, slots=True)
class NodeShape:
    count: int
    cores: int
    mem_gb: int
    gpus: int = 0


@dataclass(frozen=True, slots=True)
class Site:
    """One destination. ``speed`` multiplies a tool's run time here (missing: ``default_speed``).

    ``pulsar``: a Galaxy job is in no queue while its inputs stage (Pulsar stages, then submits);
    elsewhere it is submitted at once and held by the scheduler until its inputs are there.
    """

    id: str
    lat: float
    lon: float
    object_store: str | None
    nodes: tuple[NodeShape, ...]
    ingress_mb_s: float  # transfer throughput into this site over zero distance (10^6 bytes/s)
    tpv_score: float = 0.0  # TPV's tag score for CPU tools (the admins' preference)
    gpu_tpv_score: float = 0.0  # ... for GPU tools
    utilisation: float = 0.5  # share of the cores background jobs keep busy on average
    pulsar: bool = False
    scheduler: str = "slurm"  # only Slurm reports an expected start of pending jobs
    carbon_g_kwh: float = 300.0  # the site's grid carbon intensity (gCO2/kWh)
    default_speed: float = 1.0
    speed: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Tool:
    key: str  # what Galaxy job names carry (tool_key of the id)
    tool_id: str
    cores: int
    mem_gb: int
    gpus: int
    median_run_s: float
    sigma: float  # log-normal spread of run times
    input_min_b: float
    input_max_b: float
    weight: float  # share of the workload


@dataclass(frozen=True, slots=True)
class Scenario:
    sites: tuple[Site, ...]
    tools: tuple[Tool, ...]
    objectstores: Mapping[str, tuple[float, float]]
    egress_mb_s: Mapping[str, float]  # what one transfer out of each object store sustains (10^6 bytes/s)
    store_weights: Mapping[str, float]  # where users' data lives; "" = unknown to Galaxy


def _toolshed(owner: str, repo: str, tool: str, version: str) -> str:
    return f"toolshed.g2.bx.psu.edu/repos/{owner}/{repo}/{tool}/{version}"


GB = 1e9
TB = 1e12
MB = 1e6


def _tool(key: str, owner_repo: str, version: str, cores: int, mem_gb: int, gpus: int, *rest: float) -> Tool:
    owner, repo = owner_repo.split("/")
    run, sigma, lo, hi, weight = rest
    return Tool(key, _toolshed(owner, repo, key, version), cores, mem_gb, gpus, run, sigma, lo, hi, weight)


TOOLS: tuple[tuple[Any, ...], ...] = (
    # key, owner/repo, version, cores, mem GB, GPUs, median run s, sigma, input min, max bytes, share
    ("fastqc", "devteam/fastqc", "0.74", 1, 4, 0, 90, 0.6, 10 * MB, 2 * GB, 0.35),
    ("featurecounts", "iuc/featurecounts", "2.0.3", 4, 16, 0, 400, 0.5, 200 * MB, 20 * GB, 0.20),
    ("bwa_mem", "devteam/bwa", "0.7.17.2", 16, 32, 0, 2400, 0.5, 2 * GB, 100 * GB, 0.20),
    ("kraken2", "iuc/kraken2", "2.1.1", 8, 96, 0, 600, 0.5, GB, 50 * GB, 0.13),
    ("spades", "nml/spades", "3.15.4", 32, 200, 0, 10800, 0.6, 5 * GB, 200 * GB, 0.04),
    ("alphafold", "galaxy-australia/alphafold2", "2.3.1", 8, 64, 1, 3600, 0.4, 10 * MB, 500 * MB, 0.05),
    ("cellranger", "iuc/cellranger", "7.1.0", 32, 128, 0, 7200, 0.5, 100 * GB, 5 * TB, 0.03),
)

BUILTIN = Scenario(
    sites=(
        # The admins' home cluster (TPV prefers it): big, next to most of the data, a third busy with
        # other users' work like every site here; it alone can carry the mean Galaxy load, not its
        # bursts. Slurm; a coal-heavy grid (Poland-like).
        Site(
            "eu_big",
            47.99,
            7.85,
            "os_eu",
            (NodeShape(16, 64, 256),),
            ingress_mb_s=400,
            tpv_score=3,
            utilisation=0.3,
            carbon_g_kwh=650,
        ),
        # Small, fast, close to eu_big, no object store of its own; nodes too small for spades. Pulsar
        # in front of Slurm; a nuclear-heavy grid (France-like).
        Site(
            "eu_small",
            50.85,
            4.35,
            None,
            (NodeShape(8, 32, 128),),
            ingress_mb_s=120,
            tpv_score=1,
            utilisation=0.4,
            pulsar=True,
            default_speed=0.8,
            carbon_g_kwh=55,
        ),
        # Few fat-memory nodes on older CPUs. Grid Engine (no start estimates); UK-like grid.
        Site(
            "uk",
            52.20,
            0.12,
            "os_uk",
            (NodeShape(4, 64, 1024),),
            ingress_mb_s=150,
            tpv_score=1,
            utilisation=0.35,
            default_speed=1.2,
            scheduler="sge",
            carbon_g_kwh=200,
        ),
        # Far away but quick; two GPU nodes. Pulsar in front of Slurm; US-average grid.
        Site(
            "us",
            40.80,
            -77.86,
            "os_us",
            (NodeShape(12, 48, 384), NodeShape(2, 32, 192, 4)),
            ingress_mb_s=250,
            utilisation=0.5,
            pulsar=True,
            default_speed=0.9,
            carbon_g_kwh=380,
        ),
        # The other side of the world, mostly idle, slow ingress. Pulsar in front of HTCondor (no
        # start estimates); Australian-average grid.
        Site(
            "au",
            -37.81,
            144.96,
            "os_au",
            (NodeShape(12, 32, 256),),
            ingress_mb_s=40,
            utilisation=0.3,
            pulsar=True,
            scheduler="htcondor",
            carbon_g_kwh=500,
        ),
        # GPU nodes (TPV sends GPU tools here, and keeps CPU tools away: tag score -1). Slurm;
        # German-average grid.
        Site(
            "gpu",
            50.91,
            6.41,
            None,
            (NodeShape(4, 32, 512, 4),),
            ingress_mb_s=300,
            tpv_score=-1,
            gpu_tpv_score=2,
            utilisation=0.3,
            speed={"alphafold": 0.6},
            carbon_g_kwh=350,
        ),
    ),
    tools=tuple(_tool(*row) for row in TOOLS),
    objectstores={
        "os_eu": (47.99, 7.85),
        "os_uk": (52.20, 0.12),
        "os_us": (40.80, -77.86),
        "os_au": (-37.81, 144.96),
    },
    egress_mb_s={"os_eu": 300, "os_uk": 150, "os_us": 250, "os_au": 80},
    store_weights={"os_eu": 0.45, "os_uk": 0.15, "os_us": 0.2, "os_au": 0.15, "": 0.05},
)


# --------------------------------------------------------------------------------------------
# Workload


@dataclass(frozen=True, slots=True)
class SimJob:
    """One job; ``base`` is its intrinsic size (run time at speed 1), the same under every policy."""

    id: int
    arrival: float
    cores: int
    mem_gb: float
    gpus: int
    base_run_s: float
    tool: Tool | None = None  # None: a background (non-Galaxy) job
    user: str = ""
    site: str = ""  # background jobs: where they are submitted
    datasets: tuple[tuple[str, str | None, float], ...] = ()  # (id, object store known to Galaxy, bytes)
    real_stores: tuple[str, ...] = ()  # where each dataset really is (for datasets Galaxy cannot locate)


def _pick(rng: random.Random, weights: Mapping[str, float]) -> str:
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


def make_workload(scn: Scenario, n_jobs: int, seed: int) -> tuple[list[SimJob], float]:
    """Galaxy jobs in workflow bursts plus each site's background jobs, in arrival order; and the horizon.

    A submission is a single job (40 %) or a workflow burst: 5-40 jobs of one tool by one user
    within a minute, their data in one object store. Nearly every job is therefore part of a burst.
    """
    rng = random.Random(seed)
    users = [f"user{i}" for i in range(12)]
    horizon = n_jobs * 3600.0 / JOBS_PER_HOUR
    jobs: list[SimJob] = []
    next_id = 1000
    ds_id = 0
    tool_weights = {t.key: t.weight for t in scn.tools}
    tools = {t.key: t for t in scn.tools}
    real_stores = [s for s in scn.store_weights if s]
    galaxy = 0
    while galaxy < n_jobs:
        t0 = rng.uniform(0.0, horizon)
        tool = tools[_pick(rng, tool_weights)]
        user = rng.choice(users)
        store = _pick(rng, scn.store_weights)
        burst = 1 if rng.random() < 0.4 else min(n_jobs - galaxy, rng.randint(5, 40))
        for _ in range(burst):
            arrival = t0 + rng.uniform(0.0, 60.0)
            datasets = []
            reals = []
            for _ in range(rng.choice((1, 1, 2, 3))):
                size = math.exp(rng.uniform(math.log(tool.input_min_b), math.log(tool.input_max_b)))
                ds_id += 1
                datasets.append((str(ds_id), store or None, round(size)))
                reals.append(store or rng.choice(real_stores))
            jobs.append(
                SimJob(
                    id=next_id,
                    arrival=arrival,
                    cores=tool.cores,
                    mem_gb=tool.mem_gb,
                    gpus=tool.gpus,
                    base_run_s=tool.median_run_s * math.exp(rng.gauss(0.0, tool.sigma)),
                    tool=tool,
                    user=user,
                    datasets=tuple(datasets),
                    real_stores=tuple(reals),
                )
            )
            next_id += 1
            galaxy += 1
    bg_shapes = ((1, 4), (4, 16), (8, 32), (16, 64), (32, 120))
    for site in scn.sites:
        cores = sum(s.count * s.cores for s in site.nodes)
        max_node = max(s.cores for s in site.nodes)
        shapes = [s for s in bg_shapes if s[0] <= max_node // 2]
        mean_cores = statistics.fmean(c for c, _ in shapes)
        mean_run = 3600.0 * math.exp(0.7**2 / 2)
        rate = site.utilisation * cores / (mean_cores * mean_run)  # jobs per second
        t = -2 * 3600.0  # two hours of warm-up: the background is in its steady state at time 0
        while True:
            t += rng.expovariate(rate)
            if t > horizon * 1.2:
                break
            c, m = rng.choice(shapes)
            run = 3600.0 * math.exp(rng.gauss(0.0, 0.7))
            jobs.append(SimJob(next_id, t, c, m, 0, run, user="hpc", site=site.id))
            next_id += 1
    jobs.sort(key=lambda j: (j.arrival, j.id))
    return jobs, horizon


# --------------------------------------------------------------------------------------------
# Destinations


class NodeProfile:
    """Free cores/memory/GPUs of one node as a step function of time (reservations included)."""

    __slots__ = ("cores", "free", "gpus", "mem", "times")

    def __init__(self, cores: int, mem_gb: int, gpus: int) -> None:
        self.cores, self.mem, self.gpus = cores, float(mem_gb), gpus
        self.times: list[float] = [-INF]  # segment i is [times[i], times[i + 1])
        self.free: list[list[float]] = [[float(cores), float(mem_gb), float(gpus)]]

    def earliest(self, t0: float, dur: float, need: tuple[float, float, float]) -> float:
        """The earliest start >= t0 at which ``need`` is free for ``dur`` seconds (one linear pass)."""
        times, free = self.times, self.free
        i = bisect.bisect_right(times, t0) - 1
        cand = t0
        n = len(times)
        while True:
            f = free[i]
            if f[0] < need[0] or f[1] < need[1] or f[2] < need[2]:
                if i + 1 >= n:
                    return INF  # never fits (larger than the node)
                cand = times[i + 1]
            elif i + 1 >= n or times[i + 1] >= cand + dur:
                return cand
            i += 1

    def _split(self, t: float) -> int:
        i = bisect.bisect_right(self.times, t) - 1
        if self.times[i] == t:
            return i
        self.times.insert(i + 1, t)
        self.free.insert(i + 1, list(self.free[i]))
        return i + 1

    def reserve(self, start: float, end: float, need: tuple[float, float, float]) -> None:
        a = self._split(start)
        b = self._split(end)
        for f in self.free[a:b]:
            f[0] -= need[0]
            f[1] -= need[1]
            f[2] -= need[2]

    def used_at(self, t: float) -> tuple[float, float, float]:
        f = self.free[bisect.bisect_right(self.times, t) - 1]
        return self.cores - f[0], self.mem - f[1], self.gpus - f[2]

    def forget_before(self, t: float) -> None:
        """Drop segments that ended before ``t`` (keeps the scans short)."""
        i = bisect.bisect_right(self.times, t) - 1
        if i > 8:
            del self.times[1:i]
            del self.free[:i]
            self.free.insert(0, [float(self.cores), self.mem, float(self.gpus)])


@dataclass(slots=True)
class Placed:
    job: SimJob
    site: str
    node: int
    dispatch: float  # when Galaxy handed it over (its arrival)
    ready: float  # inputs staged: it enters the scheduler's queue
    start: float
    end: float


@dataclass(slots=True)
class Destination:
    site: Site
    nodes: list[NodeProfile]
    active: list[Placed] = field(default_factory=list)
    written_at: float = -INF  # last snapshot written to the store
    next_change: float = -INF  # earliest state transition after written_at

    @classmethod
    def build(cls, site: Site) -> Destination:
        nodes = [NodeProfile(s.cores, s.mem_gb, s.gpus) for s in site.nodes for _ in range(s.count)]
        return cls(site, nodes)

    def fits_at_all(self, job: SimJob) -> bool:
        return any(job.cores <= n.cores and job.mem_gb <= n.mem and job.gpus <= n.gpus for n in self.nodes)

    def plan(self, job: SimJob, ready: float, run_s: float) -> tuple[float, int]:
        """(earliest start, node) for the job on this destination, without reserving."""
        need = (float(job.cores), float(job.mem_gb), float(job.gpus))
        best, best_node = INF, -1
        for i, node in enumerate(self.nodes):
            s = node.earliest(ready, run_s, need)
            if s < best:
                best, best_node = s, i
        return best, best_node

    def place(self, job: SimJob, now: float, ready: float, run_s: float) -> Placed:
        start, node = self.plan(job, ready, run_s)
        need = (float(job.cores), float(job.mem_gb), float(job.gpus))
        self.nodes[node].reserve(start, start + run_s, need)
        placed = Placed(job, self.site.id, node, now, ready, start, start + run_s)
        self.active.append(placed)
        # The next collect writes this destination (see MetaschedPolicy._write), even a Pulsar one
        # whose staging job is not visible yet.
        self.next_change = min(self.next_change, now)
        return placed

    def snapshot(self, now: float, start_estimates: bool = True) -> Snapshot:
        """What squeue/sinfo would show at ``now``; finished jobs leave ``active`` here.

        A job still staging is ``held`` at an ordinary site and absent at a Pulsar site (Pulsar
        submits it to the scheduler only once its inputs are there). With ``start_estimates`` a
        Slurm site's pending jobs carry their planned start, as Slurm's backfill reports it, computed
        at ``now``: exact here (reservations never move), where real Slurm plans on time limits.
        """
        estimates = start_estimates and self.site.scheduler == "slurm"
        stamp = _at(now)
        self.active = [p for p in self.active if p.end > now]
        nodes = []
        for i, n in enumerate(self.nodes):
            n.forget_before(now)
            cores, mem, gpus = n.used_at(now)
            state = "idle" if cores == 0 else ("allocated" if cores >= n.cores else "mixed")
            nodes.append(
                Node(
                    name=f"{self.site.id}-n{i:02d}",
                    state=state,
                    available=True,
                    cores_total=n.cores,
                    cores_alloc=round(cores),
                    mem_total_mb=round(n.mem * 1024),
                    mem_alloc_mb=round(mem * 1024),
                    gpus_total=n.gpus,
                    gpus_alloc=round(gpus),
                )
            )
        jobs = []
        change = INF
        for p in self.active:
            j = p.job
            if now < p.ready:
                change = min(change, p.ready)
                if self.site.pulsar:
                    continue
                state, submit, start = HELD, None, None
            elif now < p.start:
                state, submit, start, change = PENDING, p.ready, None, min(change, p.start)
            else:
                state, submit, start, change = RUNNING, p.ready, p.start, min(change, p.end)
            planned = estimates and state == PENDING
            name = f"g{j.id}_{j.tool.key}_{j.user}" if j.tool is not None else f"bg{j.id}"
            jobs.append(
                Job(
                    job_id=str(j.id),
                    state=state,
                    name=name,
                    user="galaxy" if j.tool is not None else j.user,
                    cores=j.cores,
                    mem_mb=round(j.mem_gb * 1024),
                    gpus=j.gpus,
                    submit_time=_at(submit) if submit is not None else None,
                    start_time=_at(start) if start is not None else None,
                    nodes=f"{self.site.id}-n{p.node:02d}",
                    start_estimate=_at(p.start) if planned else None,
                    estimated_at=stamp if planned else None,
                )
            )
        self.written_at = now
        self.next_change = change
        return Snapshot(nodes=nodes, jobs=jobs)


def _at(t: float) -> datetime:
    return EPOCH + timedelta(seconds=t)


def run_time(job: SimJob, site: Site) -> float:
    speed = site.speed.get(job.tool.key, site.default_speed) if job.tool is not None else 1.0
    return job.base_run_s * speed


def staging_s(job: SimJob, site: Site, scn: Scenario) -> float:
    """Real transfer time: every dataset not in the site's own object store, one after the other,
    each with a fixed setup cost, over its link: min(store egress, site ingress) at zero distance,
    halved at ``SIM_HALVING_KM`` (the simulator's law, not the rank model's)."""
    total = 0.0
    for (_, _, size), real in zip(job.datasets, job.real_stores, strict=True):
        if real == site.object_store:
            continue
        lat, lon = scn.objectstores[real]
        km = haversine_km(lat, lon, site.lat, site.lon)
        link = min(site.ingress_mb_s, scn.egress_mb_s[real]) * 1e6 / (1.0 + km / SIM_HALVING_KM)
        total += SIM_SETUP_S + size / link
    return total


def co2_g(p: Placed, site: Site) -> float:
    """The job's emissions where it ran: busy cores and GPUs for its run (``energy_kwh``'s law)."""
    watts = p.job.cores * WATTS_PER_CORE + p.job.gpus * WATTS_PER_GPU
    return watts * (p.end - p.start) / 3.6e6 * site.carbon_g_kwh


# --------------------------------------------------------------------------------------------
# Policies


@dataclass(frozen=True, slots=True)
class Decision:
    """What a policy sees: the job, TPV's candidates (TPV's order) and the whole simulator."""

    job: SimJob
    now: float
    candidates: Sequence[Site]


Policy = Callable[[Decision], str]


def tpv_score(job: SimJob, site: Site) -> float:
    return site.gpu_tpv_score if job.gpus else site.tpv_score


def tpv_candidates(scn: Scenario, dests: Mapping[str, Destination], job: SimJob) -> list[Site]:
    """TPV's matching destinations (the job fits a node there) in TPV's order: tag score, then config."""
    fit = [s for s in scn.sites if dests[s.id].fits_at_all(job)]
    return sorted(fit, key=lambda s: -tpv_score(job, s))


def tpv_default(d: Decision) -> str:
    return d.candidates[0].id


def random_policy(seed: int) -> Policy:
    rng = random.Random(seed)
    return lambda d: rng.choice(d.candidates).id


def oracle_policy(scn: Scenario, dests: Mapping[str, Destination]) -> Policy:
    """Greedy earliest finish with perfect knowledge of staging, run time and every reservation."""

    def choose(d: Decision) -> str:
        best, best_id = INF, d.candidates[0].id
        for site in d.candidates:
            run = run_time(d.job, site)
            ready = d.now + staging_s(d.job, site, scn)
            start, _ = dests[site.id].plan(d.job, ready, run)
            if start + run < best:
                best, best_id = start + run, site.id
        return best_id

    return choose


class MetaschedPolicy:
    """Writes the simulator's state into a real Store as collect's timer would, then asks
    ``metasched.rank.rank`` and records the placement in the ledger as ``metasched rank`` does.

    ``tick`` is the collect timer (every ``collect_every`` simulated seconds): every destination's
    snapshot is written, then the ledger is reconciled, and every ``CARBON_EVERY_S`` the sites'
    carbon intensities are cached as collect caches InfluxDB's ``pulsar_carbon_intensity``. With
    ``fresh_state`` every changed destination is also written before each decision, so rank never
    sees stale state.
    """

    def __init__(
        self,
        scn: Scenario,
        dests: Mapping[str, Destination],
        db: Path,
        collect_every: float,
        *,
        fresh_state: bool = False,
        ledger: bool = True,
        weights: Mapping[str, float] | None = None,
        start_estimates: bool = True,
    ) -> None:
        self.scn = scn
        self.weights = dict(weights or {})
        self.dests = dests
        db.unlink(missing_ok=True)
        self.store = Store.open(str(db))
        self.config = Config(
            path=None, database=None, ssh=SSHSettings(), destinations=(), rank=RankSettings(ledger=ledger)
        )
        self.collect_every = collect_every
        self.fresh_state = fresh_state
        self.ledger = ledger
        self.start_estimates = start_estimates
        self.carbon_at = -INF
        self.predicted: dict[int, tuple[float, float, float]] = {}  # job id: rank's staging, queue, run
        self.writes = 0
        self.recorded = 0
        self.rank_s = 0.0
        self.write_s = 0.0
        self.objectstores = {k: {"latitude": v[0], "longitude": v[1]} for k, v in scn.objectstores.items()}

    def close(self) -> None:
        self.store.close()

    def _write(self, now: float) -> None:
        """Write every destination whose snapshot changed since its last write (or that was last
        written 4 intervals ago, well inside ``rank.max_state_age``).

        Production rewrites an unchanged destination every minute too; skipping it here only keeps
        its ``last_success`` older. The ledger cannot tell the difference: a placement marks its
        destination changed (``Destination.place``), so every in-flight entry is placed after its
        destination's last write exactly as it would be in production.
        """
        stamp = _at(now)
        for dest in self.dests.values():
            if now < dest.next_change and now - dest.written_at < self.collect_every * 4:
                continue
            snap = dest.snapshot(now, self.start_estimates)
            self.store.write_snapshot(
                dest.site.id, snap, run_id=f"r{self.writes}", started=stamp, finished=stamp
            )
            self.writes += 1

    def tick(self, now: float) -> None:
        """One run of the collect timer: the destinations' snapshots, then the ledger's reconciliation
        (``metasched.store.reconcile``, as ``metasched collect`` runs it after storing)."""
        t = time.perf_counter()
        self._write(now)
        if now - self.carbon_at >= CARBON_EVERY_S:
            stamp = _at(now)
            rows = [
                MetricRow(CARBON_SOURCE, s.id, "carbon_intensity", value=s.carbon_g_kwh, observed_at=stamp)
                for s in self.scn.sites
            ]
            self.store.replace_metrics(CARBON_SOURCE, rows, stamp)
            self.carbon_at = now
        rank_cfg = self.config.rank
        reconcile(
            self.store, _at(now), ttl_s=rank_cfg.ledger_ttl, history_days=self.config.collect.history_days
        )
        self.write_s += time.perf_counter() - t

    def request(self, d: Decision) -> dict[str, Any]:
        job = d.job
        assert job.tool is not None
        return {
            "job": {
                "tool_id": job.tool.tool_id,
                "job_id": str(job.id),
                "cores": job.cores,
                "mem": job.mem_gb,
                "gpus": job.gpus,
            },
            "destinations": [
                {
                    "id": s.id,
                    "tpv_score": tpv_score(job, s),
                    "latitude": s.lat,
                    "longitude": s.lon,
                    "object_store_id": s.object_store,
                    "max_accepted_cores": max(n.cores for n in s.nodes),
                    "max_accepted_mem": max(n.mem_gb for n in s.nodes),
                    "max_accepted_gpus": max(n.gpus for n in s.nodes),
                }
                for s in d.candidates
            ],
            "datasets": {ds: {"object_store_id": store, "size": size} for ds, store, size in job.datasets},
            "objectstores": self.objectstores,
            **({"options": {"weights": self.weights}} if self.weights else {}),
        }

    def __call__(self, d: Decision) -> str:
        if self.fresh_state:
            t = time.perf_counter()
            self._write(d.now)
            self.write_s += time.perf_counter() - t
        t = time.perf_counter()
        answer = rank(self.request(d), self.config, self.store, _at(d.now))
        self.rank_s += time.perf_counter() - t
        first: str = answer["sorted_destinations"][0]
        chosen = next(r["components"] for r in answer["ranked"] if r["id"] == first)
        self.predicted[d.job.id] = (chosen["staging_s"], chosen["queue_s"], chosen["run_s"])
        return first


# --------------------------------------------------------------------------------------------
# Replay


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    placed: list[Placed]
    seconds: float  # wall time of the replay
    notes: str = ""
    predicted: Mapping[int, tuple[float, float, float]] = field(default_factory=dict)  # metasched's

    def turnarounds(self) -> list[float]:
        return [p.end - p.dispatch for p in self.placed]


def replay(
    scn: Scenario,
    workload: Sequence[SimJob],
    make_policy: Callable[[Mapping[str, Destination]], Policy],
    name: str,
    collect_every: float = 60.0,
) -> Result:
    """Feed the workload in arrival order: background jobs to their site, Galaxy jobs as the policy says.

    A policy with a ``tick`` method (metasched) gets it called every ``collect_every`` simulated
    seconds from time 0, before the arrivals at or after that time.
    """
    wall = time.perf_counter()
    dests = {s.id: Destination.build(s) for s in scn.sites}
    policy = make_policy(dests)
    tick = getattr(policy, "tick", None)
    placed: list[Placed] = []
    next_tick = 0.0
    for job in workload:
        now = job.arrival
        if tick is not None:
            while next_tick <= now:
                tick(next_tick)
                next_tick += collect_every
        if job.tool is None:
            site = dests[job.site].site
            dests[job.site].place(job, now, now, run_time(job, site))
            continue
        cands = tpv_candidates(scn, dests, job)
        choice = policy(Decision(job, now, cands))
        site = dests[choice].site
        ready = now + staging_s(job, site, scn)
        placed.append(dests[choice].place(job, now, ready, run_time(job, site)))
    notes = ""
    predicted: Mapping[int, tuple[float, float, float]] = {}
    if isinstance(policy, MetaschedPolicy):
        notes = (
            f"{policy.writes} snapshots written and reconciled in {policy.write_s:.1f} s, "
            f"{len(placed)} rank calls in {policy.rank_s:.1f} s"
        )
        predicted = policy.predicted
        policy.close()
    return Result(name, placed, time.perf_counter() - wall, notes, predicted)


def _pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def summarize(r: Result, scn: Scenario = BUILTIN) -> dict[str, float | str]:
    ta = r.turnarounds()
    sites = {s.id: s for s in scn.sites}
    return {
        "policy": r.name,
        "mean_s": statistics.fmean(ta),
        "p50_s": _pct(ta, 0.5),
        "p95_s": _pct(ta, 0.95),
        "queue_s": statistics.fmean(p.start - p.ready for p in r.placed),
        "staging_s": statistics.fmean(p.ready - p.dispatch for p in r.placed),
        "run_s": statistics.fmean(p.end - p.start for p in r.placed),
        "makespan_s": max(p.end for p in r.placed) - min(p.dispatch for p in r.placed),
        "co2_g": statistics.fmean(co2_g(p, sites[p.site]) for p in r.placed),
        "wall_s": r.seconds,
    }


COLUMNS = ("mean_s", "p50_s", "p95_s", "queue_s", "staging_s", "run_s", "makespan_s", "co2_g", "wall_s")


def table(rows: Sequence[Mapping[str, float | str]]) -> str:
    head = f"{'policy':<12}" + "".join(f"{c:>12}" for c in COLUMNS)
    lines = [head]
    for row in rows:
        lines.append(f"{row['policy']!s:<12}" + "".join(f"{float(row[c]):>12,.0f}" for c in COLUMNS))
    return "\n".join(lines)


def shares(r: Result, sites: Sequence[Site]) -> str:
    count = {s.id: 0 for s in sites}
    for p in r.placed:
        count[p.site] += 1
    return ", ".join(f"{k} {v}" for k, v in count.items())


def _cells(mine: Sequence[Placed], count: bool = False) -> str:
    """One 31-character cell: [jobs] mean turnaround, then its staging/queue/run."""
    if not mine:
        return f"{'-':>31}"
    st = statistics.fmean(p.ready - p.dispatch for p in mine)
    qu = statistics.fmean(p.start - p.ready for p in mine)
    ru = statistics.fmean(p.end - p.start for p in mine)
    if count:
        return f"{len(mine):>5}{st + qu + ru:>7,.0f} {st:>5,.0f}/{qu:>5,.0f}/{ru:>5,.0f}"
    return f"{st + qu + ru:>9,.0f} {st:>6,.0f}/{qu:>6,.0f}/{ru:>6,.0f}"


def breakdown(results: Sequence[Result], scn: Scenario) -> str:
    """Mean turnaround (staging + queue + run) per tool and per site, each policy: where one loses."""
    names = [r.name for r in results]
    lines = [f"{'tool':<14}{'jobs':>6}" + "".join(f"{n + ' (st/queue/run)':>31}" for n in names)]
    for tool in scn.tools:
        mine = [[p for p in r.placed if p.job.tool is tool] for r in results]
        lines.append(f"{tool.key:<14}{len(mine[0]):>6}" + "".join(_cells(m) for m in mine))
    lines.append(f"{'site':<20}" + "".join(f"{n + ' (jobs, st/queue/run)':>31}" for n in names))
    for site in scn.sites:
        cells = [_cells([p for p in r.placed if p.site == site.id], count=True) for r in results]
        lines.append(f"{site.id:<20}" + "".join(cells))
    lines.append(f"{'inputs':<20}" + "".join(f"{n + ' (jobs, st/queue/run)':>31}" for n in names))
    for label, want in (("located by Galaxy", True), ("unlocated", False)):
        cells = [_cells([p for p in r.placed if located(p.job) is want], count=True) for r in results]
        lines.append(f"{label:<20}" + "".join(cells))
    return "\n".join(lines)


def _tool_key(job: SimJob) -> str:
    return job.tool.key if job.tool is not None else ""


def located(job: SimJob) -> bool:
    """Whether Galaxy knows the object store of every input (the oracle always knows where they are)."""
    return all(store is not None for _, store, _ in job.datasets)


def gap(mine: Result, ref: Result, scn: Scenario) -> str:
    """Where ``mine``'s mean turnaround exceeds ``ref``'s: each tool's and each input class's share of
    the difference (seconds per job of the whole workload, and % of the difference)."""
    n = len(mine.placed)
    total = sum(p.end - p.dispatch for p in mine.placed) - sum(p.end - p.dispatch for p in ref.placed)
    lines = [f"{mine.name} - {ref.name}: {total / n:+,.0f} s per job; by tool, then by inputs"]
    groups: list[tuple[str, Callable[[SimJob], object], object]] = [
        (t.key, _tool_key, t.key) for t in scn.tools
    ]
    groups += [("located by Galaxy", located, True), ("unlocated", located, False)]
    for label, key, want in groups:
        a = [p.end - p.dispatch for p in mine.placed if key(p.job) == want]
        b = [p.end - p.dispatch for p in ref.placed if key(p.job) == want]
        diff = sum(a) - sum(b)
        share = f"{100 * diff / total:>6.0f} %" if total else ""
        ratio = f"{sum(a) / sum(b):>7.2f}x" if sum(b) else ""
        lines.append(f"  {label:<18}{len(a):>6} jobs {diff / n:>+9,.0f} s/job {share} {ratio}")
    return "\n".join(lines)


def located_ratios(results: Sequence[Result]) -> dict[str, float]:
    """metasched's mean turnaround against the oracle's on the jobs whose inputs Galaxy can locate:
    the comparison without the oracle's knowledge of where Galaxy's unlocated datasets really are."""
    by = {r.name: r for r in results}
    out: dict[str, float] = {}
    if "oracle" not in by:
        return out
    ref = sum(p.end - p.dispatch for p in by["oracle"].placed if located(p.job))
    for mine in ("metasched", "no_ledger"):
        if mine in by and ref:
            own = sum(p.end - p.dispatch for p in by[mine].placed if located(p.job))
            out[f"{mine}/oracle"] = own / ref
    return out


def _actual(p: Placed) -> tuple[float, float, float]:
    """What happened: staging, queue wait (start - staged), run."""
    return p.ready - p.dispatch, p.start - p.ready, p.end - p.start


def prediction_errors(r: Result, scn: Scenario) -> str:
    """How right rank was about the destination it chose, per site and factor: the median of
    predicted/actual (bias: > 1 over-, < 1 underestimates) and the median |ln(predicted/actual)|
    (spread), over jobs where both are at least 1 s; queue wait is start - staged."""
    lines = [
        f"{'site/tool':<14}{'jobs':>6}"
        + "".join(f"{f + ' pred/act':>17}{'|ln|':>7}" for f in ("staging", "queue", "run"))
        + f"{'turnaround pred/act':>21}"
    ]
    groups: dict[str, list[Placed]] = {"all": list(r.placed)}
    for site in scn.sites:
        groups[site.id] = [p for p in r.placed if p.site == site.id]
    for tool in scn.tools:
        groups[tool.key] = [p for p in r.placed if p.job.tool is tool]
    for key, mine in groups.items():
        mine = [p for p in mine if p.job.id in r.predicted]
        if not mine:
            continue
        cells = []
        for k in range(3):
            pairs = [(r.predicted[p.job.id][k], _actual(p)[k]) for p in mine]
            pairs = [(a, b) for a, b in pairs if a >= 1.0 and b >= 1.0]
            if not pairs:
                cells.append(f"{'-':>17}{'':>7}")
                continue
            logs = [math.log(a / b) for a, b in pairs]
            spread = statistics.median(abs(x) for x in logs)
            cells.append(f"{math.exp(statistics.median(logs)):>12.2f} ({len(pairs):>3}){spread:>7.2f}")
        pred = sum(sum(r.predicted[p.job.id]) for p in mine)
        act = sum(p.end - p.dispatch for p in mine)
        lines.append(f"{key:<14}{len(mine):>6}" + "".join(cells) + f"{pred / act:>21.2f}")
    return "\n".join(lines)


def links(scn: Scenario) -> str:
    """Each link's throughput (10^6 bytes/s) by the simulator's law, then by the rank model's
    defaults (``bandwidth_mb_s``, ``halving_km``), from each object store to each site."""
    w = Weights()
    head = f"{'store':<8}" + "".join(f"{s.id:>16}" for s in scn.sites)
    lines = [head]
    for store, (lat, lon) in scn.objectstores.items():
        cells = []
        for site in scn.sites:
            if store == site.object_store:
                cells.append(f"{'local':>16}")
                continue
            km = haversine_km(lat, lon, site.lat, site.lon)
            sim = min(site.ingress_mb_s, scn.egress_mb_s[store]) / (1.0 + km / SIM_HALVING_KM)
            model = w.bandwidth_mb_s / (1.0 + km / w.halving_km)
            cells.append(f"{sim:>9.1f} / {model:>4.0f}")
        lines.append(f"{store:<8}" + "".join(cells))
    return "\n".join(lines)


POLICIES = ("tpv", "random", "metasched", "no_ledger", "oracle")


def run_all(
    n_jobs: int,
    seed: int,
    collect_every: float,
    workdir: Path,
    weights: Mapping[str, float] | None = None,
    *,
    fresh_state: bool = False,
    start_estimates: bool = True,
    policies: Sequence[str] = POLICIES,
) -> tuple[list[Result], float]:
    """Replay one workload under each of ``policies`` (``no_ledger``: metasched, ``rank.ledger: false``)."""
    scn = BUILTIN
    workload, horizon = make_workload(scn, n_jobs, seed)

    def metasched(ledger: bool) -> Callable[[Mapping[str, Destination]], Policy]:
        return lambda dests: MetaschedPolicy(
            scn,
            dests,
            workdir / "replay.sqlite",
            collect_every,
            fresh_state=fresh_state,
            ledger=ledger,
            weights=weights,
            start_estimates=start_estimates,
        )

    makers: dict[str, Callable[[Mapping[str, Destination]], Policy]] = {
        "tpv": lambda dests: tpv_default,
        "random": lambda dests: random_policy(seed),
        "metasched": metasched(True),
        "no_ledger": metasched(False),
        "oracle": lambda dests: oracle_policy(scn, dests),
    }
    results = [replay(scn, workload, makers[name], name, collect_every) for name in policies]
    return results, horizon


def ratios(rows: Sequence[Mapping[str, float | str]]) -> dict[str, float]:
    """metasched's (and metasched without the ledger's) mean turnaround against each other policy's."""
    by = {str(r["policy"]): float(r["mean_s"]) for r in rows}
    out: dict[str, float] = {}
    for mine in ("metasched", "no_ledger"):
        for other in ("tpv", "random", "oracle", "no_ledger"):
            if mine in by and other in by and mine != other:
                out[f"{mine}/{other}"] = by[mine] / by[other]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--jobs", type=int, default=3000, help="Galaxy jobs in the workload (default 3000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--collect-every",
        type=float,
        default=60.0,
        help="simulated seconds between collects, like the production timer (default 60)",
    )
    ap.add_argument(
        "--fresh-state",
        action="store_true",
        help="also write every changed destination before each decision (rank never sees stale state)",
    )
    ap.add_argument(
        "--no-start-estimates",
        action="store_true",
        help="Slurm sites' pending jobs carry no expected start (as if backfill never set StartTime)",
    )
    ap.add_argument(
        "--carbon-s-per-kg",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="rank.weights.carbon_s_per_kg: seconds of turnaround traded per kg of CO2 (default 0: off)",
    )
    ap.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a rank weight sent as the request's options.weights (repeatable), e.g. tpv_weight=0.02",
    )
    ap.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help=f"comma-separated subset of {','.join(POLICIES)} (default: all)",
    )
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="also print mean turnaround per tool and site, and rank's prediction errors per site",
    )
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    if args.jobs < 1 or args.collect_every <= 0:
        ap.error("--jobs must be >= 1 and --collect-every > 0")
    if not math.isfinite(args.carbon_s_per_kg) or args.carbon_s_per_kg < 0:
        ap.error("--carbon-s-per-kg must be a finite number >= 0")
    policies = [p for p in args.policies.split(",") if p]
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown or not policies:
        ap.error(f"--policies: unknown {', '.join(unknown) or '(none given)'} (known: {', '.join(POLICIES)})")
    weights: dict[str, float] = {}
    for item in args.weight:
        name, eq, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            ap.error(f"--weight {item}: expected NAME=NUMBER")
        if not eq:
            ap.error(f"--weight {item}: expected NAME=NUMBER")
    if args.carbon_s_per_kg:
        weights["carbon_s_per_kg"] = args.carbon_s_per_kg
    with tempfile.TemporaryDirectory(prefix="metasched-replay-") as tmp:
        results, horizon = run_all(
            args.jobs,
            args.seed,
            args.collect_every,
            Path(tmp),
            weights,
            fresh_state=args.fresh_state,
            start_estimates=not args.no_start_estimates,
            policies=policies,
        )
    rows = [summarize(r) for r in results]
    ratio = ratios(rows)
    located_ratio = located_ratios(results)
    if args.json:
        json.dump({"rows": rows, "ratios": ratio, "located_ratios": located_ratio}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    state = (
        "fresh state before every decision" if args.fresh_state else f"collect every {args.collect_every:g} s"
    )
    estimates = "no start estimates" if args.no_start_estimates else "Slurm start estimates"
    print(
        f"{args.jobs} Galaxy jobs over {horizon / 3600:.1f} simulated hours, seed {args.seed}, {state}, "
        f"{estimates}; turnaround = staging + queue + run (seconds), co2_g = mean gCO2 per job"
        + (f"; weights {weights}" if weights else "")
    )
    print(table(rows))
    if ratio:
        print("mean turnaround ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in ratio.items()))
    if located_ratio:
        count = sum(1 for p in results[0].placed if located(p.job))
        print(
            f"on the {count} jobs whose inputs Galaxy can locate: "
            + ", ".join(f"{k} {v:.3f}" for k, v in located_ratio.items())
        )
    for r in results:
        print(f"{r.name:<12} placed: {shares(r, BUILTIN.sites)}" + (f"; {r.notes}" if r.notes else ""))
    if args.breakdown:
        print("mean turnaround per tool and per site = staging + queue + run (seconds)")
        print(breakdown(results, BUILTIN))
        print(f"link throughput MB/s: simulator (+{SIM_SETUP_S:g} s per dataset) / rank's default model")
        print(links(BUILTIN))
        by = {r.name: r for r in results}
        for mine in ("metasched", "no_ledger"):
            if mine in by and "oracle" in by:
                print(gap(by[mine], by["oracle"], BUILTIN))
        for r in results:
            if r.predicted:
                print(f"{r.name}: rank's prediction for the chosen site against what happened")
                print(prediction_errors(r, BUILTIN))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
