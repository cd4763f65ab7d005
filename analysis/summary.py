"""The end-of-study summary, computed from the Parquet tables alone."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

LR_MATCH_DECADES = 0.02  # trials within this distance in log10(lr) count as "the same LR"


def read_tables(study_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    res = Path(study_dir) / "results"
    return pd.read_parquet(res / "trials.parquet"), pd.read_parquet(res / "epochs.parquet")


def best_per_regime(trials: pd.DataFrame) -> pd.DataFrame:
    """Per regime: trials run, diverged, best LR by validation accuracy, val/test accuracy there."""
    rows = []
    known = ("winning_ticket", "random_reinit", "late_rewind")
    order = sorted(trials["regime"].unique(), key=lambda r: (known.index(r) if r in known else len(known), r))
    for regime in order:
        g = trials[trials["regime"] == regime]
        ok = g[(g["status"] == "completed") & g["val_acc"].notna()]
        row = {"regime": regime, "trials": len(g), "completed": len(ok), "diverged": int(g["diverged"].sum()),
               "best_lr": math.nan, "best_val_acc": math.nan, "test_acc": math.nan, "trial_id": None}
        if len(ok):
            b = ok.loc[ok["val_acc"].idxmax()]
            row.update(best_lr=b["lr"], best_val_acc=b["val_acc"], test_acc=b["test_acc"], trial_id=b["trial_id"])
        rows.append(row)
    return pd.DataFrame(rows, columns=["regime", "trials", "completed", "diverged", "best_lr", "best_val_acc",
                                       "test_acc", "trial_id"])


def acc_at_lr(trials: pd.DataFrame, regime: str, lr: float) -> tuple[float, int]:
    """Mean test accuracy of ``regime``'s completed trials at ``lr`` (log-distance match), and count."""
    g = trials[(trials["regime"] == regime) & (trials["status"] == "completed") & trials["lr"].notna()]
    near = g[np.abs(np.log10(g["lr"]) - math.log10(lr)) <= LR_MATCH_DECADES]
    return (float(near["test_acc"].mean()) if len(near) else math.nan), len(near)


def advantage(trials: pd.DataFrame, best: pd.DataFrame, a: str = "winning_ticket",
              b: str = "random_reinit") -> pd.DataFrame:
    """Test-accuracy advantage of ``a`` over ``b`` at each regime's best LR, and best vs best."""
    regimes = set(best["regime"])
    if a not in regimes or b not in regimes:
        return pd.DataFrame()
    rows = []
    for who in (a, b):
        lr = best.loc[best["regime"] == who, "best_lr"].iloc[0]
        if math.isnan(lr):
            continue
        acc_a, n_a = acc_at_lr(trials, a, lr)
        acc_b, n_b = acc_at_lr(trials, b, lr)
        rows.append({"at": f"{who}'s best LR", "lr": lr, f"{a}_test": acc_a, f"{b}_test": acc_b,
                     "advantage": acc_a - acc_b, "n": f"{n_a}/{n_b}"})
    ta = best.loc[best["regime"] == a, "test_acc"].iloc[0]
    tb = best.loc[best["regime"] == b, "test_acc"].iloc[0]
    rows.append({"at": "each at its own best LR", "lr": math.nan, f"{a}_test": ta, f"{b}_test": tb,
                 "advantage": ta - tb, "n": "1/1"})
    return pd.DataFrame(rows)


@dataclass
class Sharing:
    used_epochs: int      # pretraining and IMP epochs the trials started from
    trained_epochs: int   # of those, epochs actually trained (distinct artifacts)
    final_epochs: int     # the trials' own training

    @property
    def saved_fraction(self) -> float:
        total = self.used_epochs + self.final_epochs
        return 1.0 - (self.trained_epochs + self.final_epochs) / total if total else 0.0


def sharing(epochs: pd.DataFrame) -> Sharing:
    shared = epochs[epochs["stage"] != "final"]
    return Sharing(len(shared), int(shared[["artifact", "epoch"]].drop_duplicates().shape[0]),
                   int((epochs["stage"] == "final").sum()))


def _fmt(x: float, spec: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_summary(trials: pd.DataFrame, epochs: pd.DataFrame, wall_seconds: float | None = None,
                   verdicts: list[str] | None = None) -> str:
    """The verdicts first (when there was a confirmation), then the search, then the compute."""
    lines = [""]
    if verdicts:
        lines += ["Verdicts (confirmation on fresh seeds, test accuracy):", "", *verdicts, ""]
    trials = trials[trials["phase"] == "search"]
    best = best_per_regime(trials)
    lines += ["Search: each regime at its own best learning rate (chosen on validation accuracy):", ""]
    lines.append(f"{'regime':<16} {'best lr':>9} {'val acc':>8} {'test acc':>8} {'trials':>7} {'diverged':>8}")
    for _, r in best.iterrows():
        lines.append(f"{r['regime']:<16} {_fmt(r['best_lr'], '.3g'):>9} {_fmt(r['best_val_acc']):>8} "
                     f"{_fmt(r['test_acc']):>8} {r['trials']:>7} {r['diverged']:>8}")
    adv = advantage(trials, best)
    if len(adv):
        lines += ["", "Winning ticket's test-accuracy advantage over random re-init:", ""]
        lines.append(f"{'at':<26} {'lr':>9} {'winning':>8} {'random':>8} {'advantage':>10} {'trials':>7}")
        for _, r in adv.iterrows():
            lines.append(f"{r['at']:<26} {_fmt(r['lr'], '.3g'):>9} {_fmt(r['winning_ticket_test']):>8} "
                         f"{_fmt(r['random_reinit_test']):>8} {_fmt(r['advantage'], '+.4f'):>10} {r['n']:>7}")
        lines.append("(search: one seed per LR; the verdicts above rest on the confirmation's fresh seeds)"
                     if verdicts else "(one search seed per LR: a confirmation on fresh seeds gives intervals and verdicts)")
    sh = sharing(epochs)
    lines += ["", f"Artifact sharing: the trials started from {sh.used_epochs} epochs of pretraining and IMP, "
                  f"of which {sh.trained_epochs} were trained; with their own {sh.final_epochs} epochs, "
                  f"{100 * sh.saved_fraction:.0f}% of the training epochs were saved."]
    if wall_seconds is not None:
        lines.append(f"Wall time: {wall_seconds:.0f} s.")
    return "\n".join(lines)
