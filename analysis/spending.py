"""Lan-DeMets alpha-spending functions of the sequential confirmation (``analysis.sequential``):
the one-sided error rate spent by information fraction t (the share of the cap's seeds seen).

Standard library only, so that the flags' choices come from here without loading scipy.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable

_Z = NormalDist()


def pocock(t: float, alpha: float) -> float:
    """Spends evenly: a comparison with a clear effect stops at the first look; the last look's
    boundary is higher than the fixed design's."""
    return alpha * math.log(1 + (math.e - 1) * t)


def obrien_fleming(t: float, alpha: float) -> float:
    """Spends almost nothing early: the last look's boundary is close to the fixed design's."""
    return 2 * (1 - _Z.cdf(_Z.inv_cdf(1 - alpha / 2) / math.sqrt(t))) if t > 0 else 0.0


SPENDING: dict[str, Callable[[float, float], float]] = {"pocock": pocock, "obrien-fleming": obrien_fleming}
