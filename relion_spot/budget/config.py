"""The cap and where the spend is read, from the controller's environment."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..cost.config import COSTS_TABLE

BUDGET_ENV = "RELION_SPOT_MONTHLY_BUDGET_USD"
"""The cap in US dollars per calendar month (UTC); empty or unset: no cap."""


class BudgetConfigError(ValueError):
    """A cap that cannot be used; the message names the variable, the value and what is accepted."""


@dataclass(frozen=True)
class BudgetConfig:
    cap_usd: float | None
    costs_table: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BudgetConfig:
        raw = env.get(BUDGET_ENV, "").strip()
        if not raw:
            return cls(cap_usd=None, costs_table=env.get(COSTS_TABLE, "").strip())
        if not re.fullmatch(r"\d+(\.\d+)?", raw) or float(raw) <= 0:
            raise BudgetConfigError(
                f"{BUDGET_ENV} = {raw!r}: expected an amount in US dollars above 0, or nothing "
                "for no cap"
            )
        table = env.get(COSTS_TABLE, "").strip()
        if not table:
            raise BudgetConfigError(
                f"{BUDGET_ENV} is set but {COSTS_TABLE} is not: the cap needs the job cost table"
            )
        return cls(cap_usd=float(raw), costs_table=table)
