"""The opt-in energy terms: a job's electricity at a destination, its CO2 and price, as seconds of
turnaround (docs/rank.md "Carbon and price"). With both weights at 0 rank reads, computes and shows
none of it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from metasched.rank.model import MAX_SECONDS, Energy, JobSpec, Observed, fmt_num
from metasched.settings.weights import Weights

J_PER_KWH = 3.6e6


def energy_on(w: Weights) -> bool:
    """Whether any energy cost is asked for; otherwise rank reads, computes and shows none of it."""
    return w.carbon_s_per_kg > 0 or w.price_s_per_eur > 0


def energy_kwh(job: JobSpec, run_s: float, w: Weights) -> float:
    """Busy cores and GPUs for the run (queueing and staging draw nothing from the destination's grid)."""
    return (job.cores * w.watts_per_core + job.gpus * w.watts_per_gpu) * run_s / J_PER_KWH


def _fmt_s(x: float) -> str:
    return f"{x:,.1f} s" if x < 10 else f"{x:,.0f} s"


def median_known(values: Sequence[float | None]) -> tuple[float, int] | None:
    """(median, how many) of the known values: what an unknown figure is charged at."""
    known = [v for v in values if v is not None]
    return (statistics.median(known), len(known)) if known else None


def energy_cost(
    job: JobSpec,
    run_s: float,
    obs: Observed,
    carbon_mid: tuple[float, int] | None,
    price_mid: tuple[float, int] | None,
    w: Weights,
) -> tuple[Energy, list[str]]:
    """The job's energy here, its CO2 and price, and their seconds (each only when its weight is on).

    A destination without a figure pays the median of those that have one (``*_mid``); with none
    known anywhere the factor is 0 s for everyone. A negative price counts as 0: no destination is
    better than free, and scores stay >= 0 for the policies that scale them.
    """
    kwh = energy_kwh(job, run_s, w)
    parts = f"{fmt_num(job.cores)} cores x {fmt_num(w.watts_per_core)} W"
    if job.gpus > 0:
        parts += f" + {fmt_num(job.gpus)} GPUs x {fmt_num(w.watts_per_gpu)} W"
    reasons = [f"energy {kwh:,.3g} kWh ({parts} for {run_s:,.0f} s)"]
    co2: float | None = None
    carbon_s: float | None = None
    if w.carbon_s_per_kg > 0:
        carbon_s = 0.0
        per_kg = w.carbon_s_per_kg / 1000.0
        if obs.carbon_g_kwh is not None:
            co2 = kwh * obs.carbon_g_kwh
            carbon_s = co2 * per_kg
            at = fmt_num(obs.carbon_g_kwh)
            reasons.append(f"carbon {co2:,.1f} g CO2 at {at} g/kWh: +{_fmt_s(carbon_s)}")
        elif carbon_mid is not None:
            carbon_s = kwh * carbon_mid[0] * per_kg
            reasons.append(
                f"carbon intensity unknown: charged the median of {carbon_mid[1]} destination(s), "
                f"{fmt_num(carbon_mid[0])} g/kWh: +{_fmt_s(carbon_s)}"
            )
        else:
            reasons.append("carbon intensity unknown here and at every candidate: no carbon cost")
    eur: float | None = None
    price_s: float | None = None
    if w.price_s_per_eur > 0:
        price_s = 0.0
        price = obs.price_eur_mwh
        if price is not None:
            eur = kwh * max(price, 0.0) / 1000.0
            price_s = eur * w.price_s_per_eur
            floor = " (negative: counts as 0)" if price < 0 else ""
            at = fmt_num(price)
            reasons.append(f"electricity {eur:,.4f} EUR at {at} EUR/MWh{floor}: +{_fmt_s(price_s)}")
        elif price_mid is not None:
            price_s = kwh * max(price_mid[0], 0.0) / 1000.0 * w.price_s_per_eur
            reasons.append(
                f"electricity price unknown: charged the median of {price_mid[1]} destination(s), "
                f"{fmt_num(price_mid[0])} EUR/MWh: +{_fmt_s(price_s)}"
            )
        else:
            reasons.append("electricity price unknown here and at every candidate: no price cost")
    return (
        Energy(
            kwh,
            obs.carbon_g_kwh,
            co2,
            None if carbon_s is None else min(carbon_s, MAX_SECONDS),
            obs.price_eur_mwh,
            eur,
            None if price_s is None else min(price_s, MAX_SECONDS),
        ),
        reasons,
    )
