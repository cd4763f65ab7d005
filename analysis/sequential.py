"""The sequential confirmation: looks, alpha spending, repeated confidence intervals, the LR's choice.

The confirmation trains its fresh seeds in stages (looks): ``--confirm-seeds`` at the first look,
as many more at each later one, up to ``--max-confirm-seeds``.  After each look every comparison
(condition x contrast) still open is tested against the look's boundary; a decided comparison takes
no more seeds, and neither do the tuned candidates that can no longer be picked.  This module
holds the design (``Plan``, the boundaries, the bootstrap); ``analysis.stats.analyse`` replays the
looks on the trials table alone, so the driver (which asks it what the next stage trains) and
``analysis.report`` (which rebuilds the verdicts) always agree.

- **Boundaries.** A group-sequential design with Lan-DeMets alpha spending (``analysis.spending``): at look
  k of K, at information fraction t_k = n_k / n_K, the z boundary c_k is the one at which the
  probability under H0 of crossing first at look k is the alpha spent between t_{k-1} and t_k
  (recursive numerical integration, Jennison & Turnbull ch. 19, through ``gsdesign``'s grid
  routines).  The difference test spends alpha/2 on each side, each of TOST's one-sided tests
  spends alpha.  A t statistic at look k is held to the same nominal level as c_k (the t quantile
  of ``norm.sf(c_k)`` at n_k - 1 degrees of freedom).  With one look this is the fixed design.
- **Repeated confidence intervals.** The interval at each look is ``diff +- t * se`` at the look's
  nominal level: it covers the true difference at every look at once with probability >= 95%, so
  the verdict rules (TOST inside the margin -> no meaningful difference; interval without 0 ->
  advantage) hold their error rates whatever the stopping (Jennison & Turnbull ch. 9).
- **The LR's choice.** The tuned comparison picks each regime's LR among its candidates on the
  same seeds' validation accuracy.  Its standard error is that of the whole pick-then-compare step,
  bootstrapped over seeds (``BOOTSTRAP`` seeded resamples; the pick is redone in each), scaled by
  n/(n-1) so that it equals the paired t standard error when there is nothing to choose, and never
  below the standard error at the picked LRs.  The resamples also say how often each candidate
  would have been picked.
- **Candidates that can no longer be picked.** After a look, a candidate whose validation accuracy
  is below its regime's best by more than the look's boundary (paired by seed, one-sided at
  alpha/2) takes no more seeds.

docs/statistics.md explains the choices.  Nothing here imports torch, Ray or the study.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

import numpy as np
from scipy import optimize, stats

from analysis.spending import SPENDING

ALPHA = 0.05
BOOTSTRAP = 2000  # resamples of the seeds for the tuned comparison's standard error and pick frequencies


@lru_cache(maxsize=256)
def upper_bounds(fractions: tuple[float, ...], alpha: float, spending: str) -> tuple[float, ...]:
    """One-sided z boundaries c_1..c_K for looks at information ``fractions`` (increasing, last 1):
    P_H0(Z_j < c_j for j < k, Z_k >= c_k) = spent(t_k) - spent(t_{k-1}).

    The crossing probabilities are integrals over the continuation region of the previous looks;
    ``gsdesign`` (a port of gsDesign's grid routines) holds the density on a Simpson grid from
    look to look, and only the root search for each c_k is written here: the package has no
    boundary search of its own."""
    from gsdesign import h1, hupdate
    spend = SPENDING[spending]
    cum = [min(alpha, spend(t, alpha)) for t in fractions]
    cum[-1] = alpha  # the whole alpha is spent at the last look
    bounds: list[float] = []
    grid = None
    for k, t in enumerate(fractions):
        inc = cum[k] - (cum[k - 1] if k else 0.0)
        if k == 0:
            c = float(stats.norm.isf(inc))
            grid = h1(theta=0.0, info=t, a=-np.inf, b=c)
        else:
            prev, g = fractions[k - 1], grid

            def excess(c: float) -> float:
                return float(hupdate(18, 0.0, t, c, np.inf, 0.0, prev, g)[2].sum()) - inc
            c = float(optimize.brentq(excess, -2.0, 12.0, xtol=1e-10)) if inc > 1e-15 else 12.0
            grid = hupdate(18, 0.0, t, -np.inf, c, 0.0, prev, g)
        bounds.append(c)
    return tuple(bounds)


@dataclass(frozen=True)
class Plan:
    """The confirmation's looks: the fresh seeds in order (``seeds``), how many of them each look
    has seen (``looks``), the error rate, the spending function and the equivalence margin."""

    seeds: tuple[int, ...]
    looks: tuple[int, ...]
    alpha: float = ALPHA
    spending: str = "pocock"
    margin_points: float = 1.0

    @classmethod
    def of(cls, first_seed: int, per_look: int, cap: int, **kw) -> "Plan":
        """Looks after every ``per_look`` seeds up to ``cap`` (the last look at the cap)."""
        looks = tuple(range(per_look, cap, per_look)) + (cap,)
        return cls(tuple(first_seed + i for i in range(cap)), looks, **kw)

    @classmethod
    def fixed(cls, seeds: Iterable[int], **kw) -> "Plan":
        """One look at every seed given: the fixed design (tables without a study.json)."""
        s = tuple(sorted({int(x) for x in seeds}))
        return cls(s, (len(s),) if s else (0,), **kw)

    def levels(self, k: int) -> tuple[float, float]:
        """Look ``k``'s (0-based) nominal levels: two-sided for the difference test, one-sided for
        each of TOST's tests.  One look: (alpha, alpha)."""
        cap = self.looks[-1]
        fractions = tuple(n / cap for n in self.looks)
        diff = upper_bounds(fractions, self.alpha / 2, self.spending)[k]
        eq = upper_bounds(fractions, self.alpha, self.spending)[k]
        return 2 * float(stats.norm.sf(diff)), float(stats.norm.sf(eq))

    def seeds_at(self, k: int) -> tuple[int, ...]:
        return self.seeds[:self.looks[k]]

    def new_seeds(self, k: int) -> tuple[int, ...]:
        """The seeds look ``k`` adds."""
        return self.seeds[(self.looks[k - 1] if k else 0):self.looks[k]]


def _resample(n: int, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """[resamples x n] counts: how often each of n seeds is drawn into each bootstrap resample."""
    return rng.multinomial(n, np.full(n, 1 / n), size=resamples).astype(float)


def _picks(means: np.ndarray) -> np.ndarray:
    """Index of the best column per row (ties: the first, the smallest LR)."""
    return np.argmax(means, axis=-1)


def choice_bootstrap(val: dict[str, np.ndarray], test: dict[str, np.ndarray], a: str, b: str,
                     rng: np.random.Generator, resamples: int = BOOTSTRAP) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The pick-then-compare step redone on ``resamples`` resamples of the seeds (rows).  ``val`` and
    ``test`` hold each regime's [seeds x candidates] accuracies, the same seeds in the same order.
    Returns the resampled differences (a's test accuracy at its pick minus b's) and each regime's
    picks."""
    n = next(iter(val.values())).shape[0]
    counts = _resample(n, rng, resamples)
    picks = {r: _picks(counts @ val[r]) for r in (a, b)}
    rows = np.arange(resamples)
    at = {r: (counts @ test[r])[rows, picks[r]] / n for r in (a, b)}
    return at[a] - at[b], picks


def pick_shares(val: np.ndarray, rng: np.random.Generator, resamples: int = BOOTSTRAP) -> np.ndarray:
    """How often each candidate (column of ``val``, [seeds x candidates]) is the best on a resample
    of the seeds: the chance in picking it."""
    return np.bincount(_picks(_resample(val.shape[0], rng, resamples) @ val), minlength=val.shape[1]) / resamples


def seeded(first_seed: int, k: int, *names: str) -> np.random.Generator:
    """The bootstrap's generator for look ``k`` of one comparison (or regime): the same draws every
    time the look is replayed."""
    return np.random.default_rng([first_seed, k, zlib.crc32("/".join(names).encode())])
