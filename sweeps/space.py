"""A study's searched hyper-parameters, declared without Ray.

`choice`, `uniform` and `loguniform` are plain values that print as what they are
(`choice of [16, 32]`) and know their own bounds, so a study file imports no Ray and `--local`
runs it on a machine without Ray. The Tune engine converts them at its edge (`to_tune`)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Choice:
    values: tuple

    def __contains__(self, value) -> bool:
        return value in self.values

    def __repr__(self) -> str:
        return f"choice of {list(self.values)}"

    def to_tune(self):
        from ray import tune

        return tune.choice(list(self.values))


@dataclass(frozen=True)
class Uniform:
    lower: float
    upper: float
    log: bool = False

    def __contains__(self, value) -> bool:
        try:
            return self.lower <= value <= self.upper
        except TypeError:
            return False

    def __repr__(self) -> str:
        return f"{'log-uniform' if self.log else 'uniform'} in [{self.lower:g}, {self.upper:g}]"

    def to_tune(self):
        from ray import tune

        return (tune.loguniform if self.log else tune.uniform)(self.lower, self.upper)


def choice(values) -> Choice:
    return Choice(tuple(values))


def uniform(lower: float, upper: float) -> Uniform:
    return Uniform(float(lower), float(upper))


def loguniform(lower: float, upper: float) -> Uniform:
    return Uniform(float(lower), float(upper), log=True)


def values_of(domain) -> list:
    """The values a domain can take when it is a choice, else []."""
    return list(getattr(domain, "values", None) or getattr(domain, "categories", None) or [])


def contains(domain, value) -> bool:
    """Whether value lies in domain (ours, or a Ray Tune domain a caller passed directly)."""
    if hasattr(domain, "categories"):
        return value in domain.categories
    if hasattr(domain, "to_tune"):
        return value in domain
    lower, upper = getattr(domain, "lower", None), getattr(domain, "upper", None)
    try:
        return lower is None or lower <= value <= upper
    except TypeError:
        return False


def to_tune(domain):
    """The Ray Tune domain of ours; a Tune domain passes through."""
    return domain.to_tune() if hasattr(domain, "to_tune") else domain
