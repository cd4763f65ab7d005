"""Figures of a study, drawn from its Parquet tables alone (matplotlib, Agg backend).

Each figure is written as ``<name>.png`` and ``<name>.svg`` into a folder; every function returns
the paths it wrote, ``[]`` when the data it needs is absent (it then logs why).  ``build`` draws all
four and also says which were skipped and why.
"""
from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from analysis import design  # noqa: E402
from analysis.stats import confirm_rows, mean_interval, only_picked  # noqa: E402
from trainables.records import CONDITIONS  # noqa: E402
from trainables.regimes import REGIMES  # noqa: E402
from trainables.storage import atomic_path  # noqa: E402

log = logging.getLogger(__name__)

FIGURES = ("lr_curve", "confirmed", "learning_curves", "sparsity")
# regimes without a colour of their own, in the order first met: colours no registered regime uses
_EXTRA_COLORS = ("#e377c2", "#bcbd22", "#393b79", "#637939", "#843c39", "#7b4173", "#3182bd", "#e6550d")
_EXTRA_ASSIGNED: dict[str, str] = {}
DPI = 120


def color(regime: str) -> str:
    """A regime's colour (its registry entry's); any other gets the next colour of a cycle (and keeps it)."""
    own = REGIMES[regime].color if regime in REGIMES else None
    if own:
        return own
    if regime not in _EXTRA_ASSIGNED:
        _EXTRA_ASSIGNED[regime] = _EXTRA_COLORS[len(_EXTRA_ASSIGNED) % len(_EXTRA_COLORS)]
    return _EXTRA_ASSIGNED[regime]


label = design.label  # the regimes' readable names live in analysis.design


def regimes_in(df: pd.DataFrame) -> list[str]:
    return design.sort_regimes(df["regime"].dropna())


def conditions_in(df: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(df["condition"].dropna()))
    return [c for c in CONDITIONS if c in present] + [c for c in present if c not in CONDITIONS]


def search_rows(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["phase"] == "search"]


def sweep_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """Confirm rows of condition ``tuned`` at every pruning round (the sweep plus the final round)."""
    t = only_picked(trials[(trials["phase"] == "confirm") & (trials["condition"] == "tuned")])
    return t[t["prune_round"].notna()]


def sweep_regimes(rows: pd.DataFrame) -> list[str]:
    """Regimes with rows before the last round (``prune_round < rounds``): those that ran a sweep."""
    early = rows[rows["prune_round"].notna() & rows["rounds"].notna() & (rows["prune_round"] < rows["rounds"])]
    return regimes_in(early)


def t_interval(values) -> tuple[float, float, float]:
    """Mean and 95% t interval (``stats.mean_interval``); a single value is its own interval."""
    iv = mean_interval(values)
    return (iv.mean, iv.mean, iv.mean) if iv.n == 1 else (iv.mean, iv.low, iv.high)


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        path = out_dir / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=DPI, bbox_inches="tight",
                        metadata={"Date": None} if ext == "svg" else None)
        paths.append(path)
    plt.close(fig)
    return paths


def _skip(name: str, why: str, skipped: dict[str, str] | None) -> list[Path]:
    log.info("figure %s skipped: %s", name, why)
    if skipped is not None:
        skipped[name] = why
    return []


def _fmt_lr(lr: float) -> str:
    return "-" if lr is None or not np.isfinite(lr) else f"{lr:.3g}"


# 1. the LR search ---------------------------------------------------------------------------------
def lr_curve(trials: pd.DataFrame, out_dir, skipped: dict[str, str] | None = None) -> list[Path]:
    s = search_rows(trials)
    s = s[s["lr"].notna() & (s["lr"] > 0) & s["val_acc"].notna()]  # failed trials have no point to draw
    if not len(s):
        return _skip("lr_curve", "no search trials with results", skipped)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for regime in regimes_in(s):
        g, c = s[s["regime"] == regime], color(regime)
        ok = g[(g["status"] == "completed") & g["val_acc"].notna()]
        best = ok.loc[ok["val_acc"].idxmax()] if len(ok) else None
        for ax, col in zip(axes, ("val_acc", "test_acc")):
            fine = ok[~ok["diverged"].fillna(False).astype(bool)]
            div = g[g["diverged"].fillna(False).astype(bool) & g[col].notna()]
            mean = fine.groupby("lr")[col].mean().sort_index()
            name = f"{label(regime)} (best LR {_fmt_lr(best['lr'])})" if best is not None else label(regime)
            ax.plot(mean.index, mean.values, "-", color=c, alpha=0.45, lw=1)
            ax.scatter(fine["lr"], fine[col], color=c, s=22, alpha=0.8, label=name)
            if len(div):
                ax.scatter(div["lr"], div[col], color=c, marker="x", s=40, label=f"{label(regime)}, diverged")
            if best is not None:
                ax.axvline(best["lr"], color=c, ls="--", lw=1, alpha=0.8)
                ax.scatter([best["lr"]], [best[col]], color=c, marker="*", s=220, edgecolor="k", zorder=5)
    for ax, what in zip(axes, ("Validation accuracy (chooses the LR)", "Test accuracy (reported only)")):
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel(what.split(" (")[0].lower())
        ax.set_title(what)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("LR search: one point per trial; star and dashed line = each regime's best LR on validation")
    return _save(fig, Path(out_dir), "lr_curve")


# 2. the confirmation ------------------------------------------------------------------------------
def confirmed(trials: pd.DataFrame, out_dir, summary: pd.DataFrame | None = None,
              skipped: dict[str, str] | None = None) -> list[Path]:
    c = confirm_rows(trials)
    c = c[(c["status"] == "completed") & c["test_acc"].notna()]
    if not len(c):
        return _skip("confirmed", "no completed confirmation runs", skipped)
    if summary is None:
        from analysis.stats import summarize
        summary = summarize(c)
    conds, regs = conditions_in(c), regimes_in(c)
    width = 0.8 / len(regs)
    rng = np.random.default_rng(0)
    fig, ax = plt.subplots(figsize=(max(6.0, 2.6 * len(conds) + 1), 4.6))
    ticks = []
    for i, cond in enumerate(conds):
        lrs = []
        for j, regime in enumerate(regs):
            g = c[(c["condition"] == cond) & (c["regime"] == regime)]
            if not len(g):
                continue
            x = i - 0.4 + width * (j + 0.5)
            row = summary[(summary["condition"] == cond) & (summary["regime"] == regime)]
            if len(row):
                r = row.iloc[0]
                m, lo, hi = float(r["mean"]), float(r["low"]), float(r["high"])
            else:
                m, lo, hi = t_interval(g["test_acc"])
            lo, hi = (lo, hi) if np.isfinite(lo) and np.isfinite(hi) else (m, m)  # fewer than 2 seeds
            ax.errorbar([x], [m], yerr=[[m - lo], [hi - m]], fmt="o", color=color(regime), ms=8, capsize=6,
                        lw=2, label=label(regime))
            ax.scatter(x + rng.uniform(-0.25, 0.25, len(g)) * width, g["test_acc"], s=12, color=color(regime),
                       alpha=0.45, edgecolor="none")
            lrs.append(f"{label(regime)}: {_fmt_lr(g['lr'].median())}")
        ticks.append(cond + "\n" + "\n".join(f"LR {s}" for s in lrs))
    handles, labels_ = ax.get_legend_handles_labels()
    uniq = dict(zip(labels_, handles))
    ax.legend(uniq.values(), uniq.keys(), loc="best", fontsize=9)
    ax.set_xticks(range(len(conds)), ticks, fontsize=8)
    ax.set_xlim(-0.6, len(conds) - 0.4)
    ax.set_ylabel("test accuracy (final epoch)")
    ax.set_title("Confirmation: mean and 95% t interval over fresh seeds (dots: single seeds)")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, Path(out_dir), "confirmed")


# 3. learning curves of the confirmation runs ------------------------------------------------------
def learning_curves(trials: pd.DataFrame, epochs: pd.DataFrame, out_dir,
                    skipped: dict[str, str] | None = None) -> list[Path]:
    ids = set(confirm_rows(trials)["trial_id"])
    e = epochs[(epochs["stage"] == "final") & epochs["trial_id"].isin(ids)]
    if not len(e):
        return _skip("learning_curves", "no epochs of confirmation runs", skipped)
    e = e.replace([np.inf, -np.inf], np.nan)
    conds = conditions_in(e)
    fig, axes = plt.subplots(2, len(conds), figsize=(4.2 * len(conds) + 0.5, 6.4), squeeze=False, sharex="col")
    for k, cond in enumerate(conds):
        ec = e[e["condition"] == cond]
        for regime in regimes_in(ec):
            g = ec[ec["regime"] == regime]
            lrs = ", ".join(_fmt_lr(v) for v in sorted(g["lr"].dropna().unique()))
            for ax, col in zip(axes[:, k], ("test_acc", "train_loss")):
                agg = g.groupby("epoch")[col].agg(["mean", "min", "max", "count"]).sort_index()
                ax.plot(agg.index, agg["mean"], color=color(regime), lw=1.8,
                        label=f"{label(regime)} (LR {lrs}, {g['trial_id'].nunique()} seeds)")
                ax.fill_between(agg.index, agg["min"], agg["max"], color=color(regime), alpha=0.18, lw=0)
        axes[0, k].set_title(f"{cond}")
        axes[0, k].legend(fontsize=7, loc="lower right")
        axes[1, k].set_xlabel("epoch of the final training")
        for ax in axes[:, k]:
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("test accuracy")
    axes[1, 0].set_ylabel("training loss")
    fig.suptitle("Learning curves of the confirmation runs: mean over seeds, band = min to max")
    fig.tight_layout()
    return _save(fig, Path(out_dir), "learning_curves")


# 4. accuracy against sparsity ---------------------------------------------------------------------
def sparsity(trials: pd.DataFrame, out_dir, skipped: dict[str, str] | None = None,
             study_kind: str = design.LOTTERY) -> list[Path]:
    s = sweep_rows(trials)
    s = s[(s["status"] == "completed") & s["test_acc"].notna() & s["achieved_sparsity"].notna()]
    s = s[s["regime"].isin(sweep_regimes(s))]
    if not len(s) or s["prune_round"].nunique() < 2:
        return _skip("sparsity", "no sparsity sweep (confirm rows of condition tuned at fewer than 2 rounds)",
                     skipped)
    fig, ax = plt.subplots(figsize=(7, 4.6))
    regs = regimes_in(s)
    for j, regime in enumerate(regs):
        g = s[s["regime"] == regime]
        dodge = 1.015 ** (j - (len(regs) - 1) / 2)  # side by side, so the intervals do not hide each other
        pts = []
        for rnd, h in g.groupby("prune_round"):
            m, lo, hi = t_interval(h["test_acc"])
            pts.append((100 * (1 - h["achieved_sparsity"].mean()), m, lo, hi, len(h)))
        x, m, lo, hi, n = map(np.array, zip(*sorted(pts, reverse=True)))
        lrs = ", ".join(_fmt_lr(v) for v in sorted(g["lr"].dropna().unique()))
        seeds = f"{int(n.min())}" if n.min() == n.max() else f"{int(n.min())}-{int(n.max())}"
        ax.errorbar(x * dodge, m, yerr=[m - lo, hi - m], fmt="o-", color=color(regime), capsize=4, lw=1.6,
                    label=f"{label(regime)} (LR {lrs}, {seeds} seeds per point)")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ticks = sorted({round(v, 1) for v in 100 * (1 - s.groupby("prune_round")["achieved_sparsity"].mean())},
                   reverse=True)
    ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
    ax.minorticks_off()
    ax.set_xlabel("weights remaining (%), log scale")
    ax.set_ylabel("test accuracy (final epoch)")
    rounds = "IMP rounds" if study_kind == design.LOTTERY else "pruning rounds"
    ax.set_title(f"Test accuracy along the {rounds} (tuned LRs): mean and 95% t interval")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, Path(out_dir), "sparsity")


# all of them --------------------------------------------------------------------------------------
def build(trials: pd.DataFrame, epochs: pd.DataFrame, out_dir, summary: pd.DataFrame | None = None,
          study_kind: str = design.LOTTERY) -> tuple[list[Path], dict[str, str]]:
    """Draw every figure; return the written paths and ``{figure: why it was skipped}``."""
    skipped: dict[str, str] = {}
    paths = lr_curve(trials, out_dir, skipped)
    paths += confirmed(trials, out_dir, summary, skipped)
    paths += learning_curves(trials, epochs, out_dir, skipped)
    paths += sparsity(trials, out_dir, skipped, study_kind)
    return paths, skipped
