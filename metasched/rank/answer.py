"""The rank answer as msgspec Structs: metasched/schemas/rank-response.json is generated from them
(``metasched.rank.schema``) and tests check that rank's answers convert to ``RankResponseOut``.

rank itself builds the answer as plain dicts (``metasched.rank.response``), so the rank path never
imports this module.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

NonNegative = Annotated[float, Meta(ge=0)]
ENERGY = "Only with carbon_s_per_kg or price_s_per_eur > 0"
CARBON_AT = "Only with carbon_s_per_kg > 0: this destination's fresh grid carbon intensity; null: unknown."
CO2 = "energy_kwh x carbon_g_per_kwh; null when the intensity is unknown."
CARBON_S = (
    "co2_g / 1000 x carbon_s_per_kg (unknown intensity: at the candidates' median one); added to the score."
)
PRICE_AT = "Only with price_s_per_eur > 0: this destination's fresh day-ahead price; null: unknown."
PRICE = "energy_kwh / 1000 x price (a negative price counts as 0); null when the price is unknown."
PRICE_S = "price_eur x price_s_per_eur (unknown price: at the candidates' median one); added to the score."


class ComponentsOut(Struct):
    """A destination's estimate in seconds and bytes; the energy ones only when an energy weight is on."""

    staging_s: NonNegative
    queue_s: NonNegative
    run_s: NonNegative
    total_s: NonNegative
    tpv_score: float
    staged_bytes: NonNegative
    local_bytes: NonNegative
    energy_kwh: (
        Annotated[
            NonNegative,
            Meta(description=f"{ENERGY}: (cores x watts_per_core + GPUs x watts_per_gpu) x run_s."),
        ]
        | UnsetType
    ) = UNSET
    carbon_g_per_kwh: Annotated[NonNegative | None, Meta(description=CARBON_AT)] | UnsetType = UNSET
    co2_g: Annotated[NonNegative | None, Meta(description=CO2)] | UnsetType = UNSET
    carbon_s: Annotated[NonNegative, Meta(description=CARBON_S)] | UnsetType = UNSET
    price_eur_per_mwh: Annotated[float | None, Meta(description=PRICE_AT)] | UnsetType = UNSET
    price_eur: Annotated[NonNegative | None, Meta(description=PRICE)] | UnsetType = UNSET
    price_s: Annotated[NonNegative, Meta(description=PRICE_S)] | UnsetType = UNSET


class RankedOut(Struct, forbid_unknown_fields=True):
    id: str
    rank: Annotated[int, Meta(ge=1)]
    score: Annotated[
        NonNegative,
        Meta(
            description="(total_s + carbon_s + price_s) x (1 - tpv_max_discount x tanh(tpv_weight x "
            "tpv_score)): TPV's tags move it by at most 10 % by default; carbon_s and price_s count only "
            "when their weights are > 0; lower is better."
        ),
    ]
    feasible: bool
    components: ComponentsOut
    reasons: (
        Annotated[list[str], Meta(description="Why, in words; absent with options.explain false.")]
        | UnsetType
    ) = UNSET


class RankResponseOut(Struct, forbid_unknown_fields=True):
    """stdout of `metasched rank` (exit 0). Best first. See docs/rank.md."""

    schema_version: Literal[1]
    sorted_destinations: Annotated[
        list[str],
        Meta(
            description="Every request destination id, best first; infeasible ones last (left out only "
            "with options.drop_infeasible)."
        ),
    ]
    ranked: Annotated[
        list[RankedOut], Meta(description="Every request destination, in the same order, with its estimate.")
    ]
    warnings: list[str]
