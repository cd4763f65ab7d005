"""The end-of-study summary, computed from the Parquet tables alone."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.design import DEFAULT_CONTRASTS, LOTTERY, label, sort_regimes
from analysis.formats import number, si, times

LR_MATCH_DECADES = 0.02  # trials within this distance in log10(lr) count as "the same LR"


def read_tables(study_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    res = Path(study_dir) / "results"
    return pd.read_parquet(res / "trials.parquet"), pd.read_parquet(res / "epochs.parquet")


def best_per_regime(trials: pd.DataFrame) -> pd.DataFrame:
    """Per regime: trials run, completed, diverged, distinct LRs among the completed (a repeated LR is
    answered from its first result, not trained again), best LR by validation accuracy, val/test
    accuracy there."""
    rows = []
    for regime in sort_regimes(trials["regime"].unique()):
        g = trials[trials["regime"] == regime]
        ok = g[(g["status"] == "completed") & g["val_acc"].notna()]
        row = {"regime": regime, "trials": len(g), "completed": len(ok), "lrs": int(ok["lr"].nunique()),
               "diverged": int(g["diverged"].sum()),
               "best_lr": math.nan, "best_val_acc": math.nan, "test_acc": math.nan, "trial_id": None}
        if len(ok):
            b = ok.loc[ok["val_acc"].idxmax()]
            row.update(best_lr=b["lr"], best_val_acc=b["val_acc"], test_acc=b["test_acc"], trial_id=b["trial_id"])
        rows.append(row)
    return pd.DataFrame(rows, columns=["regime", "trials", "completed", "lrs", "diverged", "best_lr", "best_val_acc",
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


# efficiency ---------------------------------------------------------------------------------------
EFFICIENCY_FIELDS = ("train_epochs", "params", "dense_params", "flops", "dense_flops", "latency_ms",
                     "dense_latency_ms")
EFFICIENCY_COLUMNS = ["regime", "method", "source", "n", "train_epochs", "params", "dense_params", "params_ratio",
                      "flops", "dense_flops", "flops_ratio", "latency_ms", "dense_latency_ms", "speedup"]
EFFICIENCY_SOURCES = {"confirm": "confirmation runs of condition tuned", "search": "search trials"}


def _ratio(dense: float, pruned: float) -> float:
    ok = all(x is not None and np.isfinite(x) for x in (dense, pruned)) and pruned > 0
    return float(dense) / float(pruned) if ok else math.nan


def efficiency(trials: pd.DataFrame) -> pd.DataFrame:
    """Per regime: the pruned network's size and speed against the dense one, and the epochs of the
    regime's own training.

    Rows: the completed confirmation runs of condition ``tuned`` at the final round that carry any
    efficiency column; if there are none, the completed search trials that do (``source`` says
    which).  Means of ``train_epochs``, ``params``, ``flops`` and their dense counterparts, medians of
    the latencies; ``params_ratio`` and ``flops_ratio`` are dense / pruned ("x fewer"), ``speedup``
    is dense latency / pruned latency ("x faster").  Empty when no row carries efficiency data.
    """
    from analysis.stats import confirm_rows
    cols = [c for c in EFFICIENCY_FIELDS if c in trials.columns]
    if not cols or not len(trials):
        return pd.DataFrame(columns=EFFICIENCY_COLUMNS)
    done = trials[(trials["status"] == "completed") & trials[cols].notna().any(axis=1)]
    conf = confirm_rows(done)
    conf = conf[conf["condition"] == "tuned"]
    rows, source = (conf, "confirm") if len(conf) else (done[done["phase"] == "search"], "search")
    def stat(g: pd.DataFrame, col: str, how: str = "mean") -> float:
        v = pd.to_numeric(g[col], errors="coerce").dropna() if col in g else pd.Series(dtype=float)
        return float(getattr(v, how)()) if len(v) else math.nan

    out = []
    for regime in sort_regimes(rows["regime"].dropna().unique()):
        g = rows[rows["regime"] == regime]
        methods = sorted(m for m in g["method"].dropna().unique()) if "method" in g else []
        row = {"regime": regime, "method": ", ".join(map(str, methods)) or None, "source": source, "n": len(g),
               "train_epochs": stat(g, "train_epochs"), "params": stat(g, "params"),
               "dense_params": stat(g, "dense_params"), "flops": stat(g, "flops"), "dense_flops": stat(g, "dense_flops"),
               "latency_ms": stat(g, "latency_ms", "median"),
               "dense_latency_ms": stat(g, "dense_latency_ms", "median")}
        row.update(params_ratio=_ratio(row["dense_params"], row["params"]),
                   flops_ratio=_ratio(row["dense_flops"], row["flops"]),
                   speedup=_ratio(row["dense_latency_ms"], row["latency_ms"]))
        out.append(row)
    return pd.DataFrame(out, columns=EFFICIENCY_COLUMNS)


def efficiency_lines(eff: pd.DataFrame) -> list[str]:
    """The efficiency table as compact text lines (one per regime), for the summary."""
    if eff is None or not len(eff):
        return []
    source = EFFICIENCY_SOURCES[eff["source"].iloc[0]]
    lines = [f"Efficiency of the pruned networks against the dense one ({source}; FLOPs per example, latency per "
             f"batch of 256; epochs of the regime's own training):", ""]
    for _, r in eff.iterrows():
        parts = []
        if np.isfinite(r["params"]):
            parts.append(f"{si(r['params'])} params ({times(r['params_ratio'])} fewer)")
        if np.isfinite(r["flops"]):
            parts.append(f"{si(r['flops'])} FLOPs ({times(r['flops_ratio'])} fewer)")
        if np.isfinite(r["latency_ms"]):
            parts.append(f"{r['latency_ms']:.3g} ms vs {number(r['dense_latency_ms'], '.3g')} ms dense "
                         f"({times(r['speedup'])} faster)")
        if np.isfinite(r["train_epochs"]):
            parts.append(f"{r['train_epochs']:.4g} epochs")
        method = f" [{r['method']}]" if r["method"] else ""
        lines.append(f"{r['regime']:<16} " + ", ".join(parts or ["-"]) + method)
    return lines


# the summary --------------------------------------------------------------------------------------
_SHORT = {"winning_ticket": "winning", "random_reinit": "random", "late_rewind": "late"}


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def format_summary(trials: pd.DataFrame, epochs: pd.DataFrame, wall_seconds: float | None = None,
                   verdicts: list[str] | None = None, contrasts: list[tuple[str, str]] | None = None,
                   study_kind: str = LOTTERY, eff: pd.DataFrame | None = None) -> str:
    """The verdicts first (when there was a confirmation), then the search (with each contrast's
    advantage, default: the lottery pair), the efficiency of the pruned networks, then the compute."""
    lines = [""]
    if verdicts:
        lines += ["Verdicts (confirmation on fresh seeds, test accuracy):", "", *verdicts, ""]
    eff = efficiency(trials) if eff is None else eff  # the report's, when it has been built
    trials = trials[trials["phase"] == "search"]
    best = best_per_regime(trials)
    lines += ["Search: each regime at its own best learning rate (chosen on validation accuracy):", ""]
    lines.append(f"{'regime':<16} {'best lr':>9} {'val acc':>8} {'test acc':>8} {'trials':>7} {'LRs':>5} "
                 f"{'diverged':>8}")
    for _, r in best.iterrows():
        lines.append(f"{r['regime']:<16} {number(r['best_lr'], '.3g'):>9} {number(r['best_val_acc']):>8} "
                     f"{number(r['test_acc']):>8} {r['trials']:>7} {r['lrs']:>5} {r['diverged']:>8}")
    lines += ["(LRs: distinct learning rates trained; a repeated suggestion is answered from its first result)"]
    shown = 0
    for a, b in (DEFAULT_CONTRASTS[LOTTERY] if contrasts is None else contrasts):
        adv = advantage(trials, best, a, b)
        if not len(adv):
            continue
        na, nb = _SHORT.get(a, label(a)), _SHORT.get(b, label(b))
        wa, wb = max(8, len(na)), max(8, len(nb))
        lines += ["", f"{_cap(label(a))}'s test-accuracy advantage over {label(b)}:", ""]
        lines.append(f"{'at':<26} {'lr':>9} {na:>{wa}} {nb:>{wb}} {'advantage':>10} {'trials':>7}")
        for _, r in adv.iterrows():
            lines.append(f"{r['at']:<26} {number(r['lr'], '.3g'):>9} {number(r[f'{a}_test']):>{wa}} "
                         f"{number(r[f'{b}_test']):>{wb}} {number(r['advantage'], '+.4f'):>10} {r['n']:>7}")
        shown += 1
    if shown:
        lines.append("(search: one seed per LR; the verdicts above rest on the confirmation's fresh seeds)"
                     if verdicts else "(one search seed per LR: a confirmation on fresh seeds gives intervals and verdicts)")
    if len(eff):
        lines += ["", *efficiency_lines(eff)]
    sh = sharing(epochs)
    if study_kind != LOTTERY and not sh.used_epochs:
        lines += ["", f"Artifact sharing: none; the trials trained {sh.final_epochs} epochs of their own."]
    else:
        stages = "pretraining and IMP" if study_kind == LOTTERY else "pretraining and pruning"
        lines += ["", f"Artifact sharing: the trials started from {sh.used_epochs} epochs of {stages}, "
                      f"of which {sh.trained_epochs} were trained; with their own {sh.final_epochs} epochs, "
                      f"{100 * sh.saved_fraction:.0f}% of the training epochs were saved."]
    if wall_seconds is not None:
        lines.append(f"Wall time: {wall_seconds:.0f} s.")
    return "\n".join(lines)
