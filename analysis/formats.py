"""How the analysis writes numbers, in one place: table cells (``"-"`` for a missing value), the
verdict sentences' points and p-values, LRs, intervals, counts with SI prefixes and ratios."""
from __future__ import annotations

import math

import pandas as pd


def number(x, spec: str = ".4f") -> str:
    """``x`` formatted by ``spec``; ``"-"`` when missing (None, NaN, infinite); a non-number as it is."""
    try:
        return "-" if x is None or not math.isfinite(float(x)) else format(float(x), spec)
    except (TypeError, ValueError):
        return str(x)


def lr_text(x) -> str:
    return number(x, ".3g")


def integer(x) -> str:
    return "-" if x is None or pd.isna(x) else str(int(x))


def interval(lo, hi, f=number) -> str:
    return f"[{f(lo)}, {f(hi)}]"


def p_cell(x) -> str:
    """A p-value in a table: three significant digits, or ``<0.001``."""
    return number(x, ".3g") if x is None or not math.isfinite(float(x)) or float(x) >= 0.001 else "<0.001"


def points_cell(x) -> str:
    """An accuracy difference in a table, in signed points (``+1.23``)."""
    return number(None if x is None else 100 * float(x), "+.2f")


def points(x: float, decimals: int) -> str:
    """An accuracy in a sentence, in points with ``decimals`` decimals (never ``-0.0``)."""
    return f"{round(100 * x, decimals) + 0.0:.{decimals}f}"  # + 0.0 turns -0.0 into 0.0


def p_text(p: float) -> str:
    """A p-value in a sentence: ``p=0.014`` or ``p<0.001``."""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def si(x, digits: int = 3) -> str:
    """``1234567`` -> ``"1.23M"``; ``"-"`` for a missing value."""
    if x is None or not math.isfinite(float(x)):
        return "-"
    x = float(x)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.{digits}g}{suffix}"
    return f"{x:.{digits}g}"


def times(x) -> str:
    """A ratio as ``"3.70x"``; ``"-"`` when missing."""
    return "-" if x is None or not math.isfinite(float(x)) else f"{float(x):.2f}x"
