"""Who is calling, with everything admission needs, resolved once per key and cached."""

from __future__ import annotations

from dataclasses import dataclass

NONE = "none"


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """A spend cap: ``limit`` and ``soft`` in nano-USD per ``period`` for one entity."""

    scope: str  # "key" | "team" | "user" | "end_user" | "backend" | "provider"
    entity: str  # alias or name (a label value, never a secret)
    limit: int
    period: str
    soft: int | None = None


@dataclass(frozen=True, slots=True)
class RateRule:
    """Requests (``rpm``) or tokens (``tpm``) per minute for one entity."""

    scope: str  # "key" | "key_model" | "team" | "backend"
    entity: str
    kind: str  # "rpm" | "tpm"
    limit: int
    model: str | None = None  # for key_model rules: the public model it applies to


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str | None
    key: str  # alias, the label value
    team: str
    user: str
    models: frozenset[str] | None  # None: every model
    budgets: tuple[BudgetRule, ...] = ()
    rates: tuple[RateRule, ...] = ()
    cache: bool | None = None  # the key's own cache setting; None: the config's default

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


ANONYMOUS = Principal(key_id=None, key="anonymous", team=NONE, user=NONE, models=None)
