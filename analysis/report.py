"""The study report, rebuilt from the Parquet tables alone.

``python -m analysis.report <study-folder> [--equivalence-margin POINTS]`` writes
``<study>/report/report.md``, ``<study>/report/report.html`` (self-contained: inline CSS, figures as
base64 PNG) and the figures in ``<study>/report/figures/``.  The verdicts come first: one per
condition and contrast of the study (``study.json``'s ``contrasts``, see ``analysis.design``; a study
without them is a lottery study comparing the winning ticket with random re-initialisation).
"""
from __future__ import annotations

import argparse
import base64
import html
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis import design, figures
from analysis.sequential import BOOTSTRAP, Plan
from analysis.stats import DEFAULT_MARGIN_POINTS, Replay, candidates, confirm_rows, summarize
from analysis.formats import integer, interval, lr_text, number, p_cell, points_cell, si, times
from analysis.summary import best_per_regime, efficiency
from trainables.storage import atomic_path

A, B = design.DEFAULT_CONTRASTS[design.LOTTERY][0]  # the lottery pair, the default contrast
TITLES = {design.LOTTERY: "Lottery-ticket study report", design.RETHINKING: "Rethinking-pruning study report"}
CAPTIONS = {
    "lr_curve": "LR search: validation and test accuracy of every search trial against its LR "
                "(x: diverged; star and dashed line: each regime's best LR on validation).",
    "confirmed": "Confirmation: test accuracy per condition and regime, mean and 95% t interval over fresh "
                 "seeds; dots are single seeds.",
    "learning_curves": "Learning curves of the confirmation runs (final training): mean over seeds, band from "
                       "min to max.",
    "sparsity": "Test accuracy against weights remaining along the IMP rounds, condition tuned: mean and 95% "
                "t interval over seeds.",
}
# captions that differ from CAPTIONS in studies of another kind than lottery
OTHER_CAPTIONS = {
    "sparsity": "Test accuracy against weights remaining along the pruning rounds, condition tuned: mean and "
                "95% t interval over seeds.",
}
CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;"
       "line-height:1.45}table{border-collapse:collapse;margin:.6em 0 1.4em}th,td{border:1px solid #ccc;"
       "padding:.25em .6em;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
       "img{max-width:100%;border:1px solid #eee}figure{margin:1em 0 2em}figcaption{color:#555;font-size:.9em}"
       "ul.verdicts li{margin:.4em 0}code{background:#f5f5f5;padding:0 .2em}")


SEQUENTIAL = ("The seeds come in looks: a comparison not decided at one look takes more seeds at the next, up to "
              "a cap, and each look holds its tests to thresholds that spend the 5% error rate over the looks "
              "(group-sequential, Lan-DeMets alpha spending), so its intervals are repeated 95% confidence "
              "intervals; the tuned comparison's standard error is bootstrapped over the seeds with the choice of "
              "each regime's LR redone in every resample (docs/statistics.md).")


class ReportError(ValueError):
    """Bad input: the message names the problem."""


def _runners_up(cand: pd.DataFrame | None, regime: str) -> str:
    """The candidate LRs a regime's tuned LR was picked from, with their mean validation accuracy."""
    if cand is None or not len(cand):
        return ""
    g = cand[(cand["regime"] == regime) & ~cand["picked"]]
    return ", ".join(f"{lr_text(r['lr'])} (val {number(r['val_mean'])}"
                     + (f", dropped after {int(r['dropped_after'])} seeds)" if pd.notna(r["dropped_after"]) else ")")
                     for _, r in g.iterrows())


def _share(r) -> str:
    if r["dropped_after"] is not None and not pd.isna(r["dropped_after"]):
        return f"dropped after {int(r['dropped_after'])} seeds"
    return "-" if pd.isna(r["share"]) else f"{100 * r['share']:.0f}%"


def verdict_lines(comparisons: pd.DataFrame, cand: pd.DataFrame | None = None) -> list[str]:
    """One plain-language line per condition and contrast: the condition, the pair (by label) and
    their LRs (tuned: with the runner-up candidate LRs, ``analysis.stats.candidates``), the verdict
    and its sentence, and what the comparison could have detected.  Rows without ``a``/``b``
    columns are the lottery pair."""
    lines = []
    if comparisons is None or not len(comparisons):
        return lines
    for _, r in comparisons.iterrows():
        a, b = r.get("a", A), r.get("b", B)
        reach = f" {r['reach']}" if isinstance(r.get("reach"), str) and r.get("reach") else ""
        runners = ""
        if r["condition"] == "tuned":
            others = [f"{figures.label(x)} {o}" for x in (a, b) if (o := _runners_up(cand, x))]
            runners = f" (runners-up: {'; '.join(others)})" if others else ""
        lines.append(f"{r['condition']}: {figures.label(a)} at LR {lr_text(r['lr_a'])} vs {figures.label(b)} at LR "
                     f"{lr_text(r['lr_b'])}{runners} -> verdict: {r['verdict']}. {r['sentence']}{reach}")
    return lines


# blocks: ("h1"|"h2"|"p", text) | ("ul", [items]) | ("table", headers, rows) | ("fig", name) --------
def _caption(name: str, kind: str) -> str:
    return CAPTIONS[name] if kind == design.LOTTERY else OTHER_CAPTIONS.get(name, CAPTIONS[name])


def _md(blocks, kind: str = design.LOTTERY) -> str:
    out = []
    for b in blocks:
        if b[0] == "h1":
            out.append(f"# {b[1]}")
        elif b[0] == "h2":
            out.append(f"## {b[1]}")
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "ul":
            out.append("\n".join(f"- {i}" for i in b[1]))
        elif b[0] == "table":
            rows = [b[1], ["---"] * len(b[1]), *b[2]]
            out.append("\n".join("| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows))
        elif b[0] == "fig":
            out.append(f"![{b[1]}](figures/{b[1]}.png)\n\n*{_caption(b[1], kind)}* (also `figures/{b[1]}.svg`)")
    return "\n\n".join(out) + "\n"


def _html(blocks, title: str, fig_dir: Path, kind: str = design.LOTTERY) -> str:
    out = []
    for b in blocks:
        if b[0] in ("h1", "h2", "p"):
            out.append(f"<{b[0]}>{html.escape(b[1])}</{b[0]}>")
        elif b[0] == "ul":
            cls = ' class="verdicts"' if b[1] and "verdict:" in b[1][0] else ""
            out.append(f"<ul{cls}>" + "".join(f"<li>{html.escape(i)}</li>" for i in b[1]) + "</ul>")
        elif b[0] == "table":
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in b[1])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b[0] == "fig":
            data = base64.b64encode((fig_dir / f"{b[1]}.png").read_bytes()).decode("ascii")
            out.append(f'<figure><img alt="{b[1]}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{html.escape(_caption(b[1], kind))}</figcaption></figure>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def _write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# the report ---------------------------------------------------------------------------------------
def read_inputs(study_dir) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    study = Path(study_dir)
    if not study.is_dir():
        raise ReportError(f"study folder not found: {study}")
    frames = []
    for name in ("trials", "epochs"):
        path = study / "results" / f"{name}.parquet"
        if not path.is_file():
            raise ReportError(f"table missing: {path}")
        try:
            frames.append(pd.read_parquet(path))
        except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
            raise ReportError(f"cannot read {path}: {type(e).__name__}: {e}".splitlines()[0]) from None
    need = {"trials": {"phase", "condition", "regime", "lr", "status", "val_acc", "test_acc", "diverged",
                       "rounds", "prune_round", "trial_id"},
            "epochs": {"trial_id", "condition", "regime", "stage", "epoch", "test_acc", "train_loss"}}
    for (name, cols), df in zip(need.items(), frames):
        if missing := sorted(cols - set(df.columns)):
            raise ReportError(f"{study / 'results' / (name + '.parquet')} lacks columns: {', '.join(missing)}")
    return study, frames[0], frames[1]


def replay(trials: pd.DataFrame, margin_points: float, contrasts: list[tuple[str, str]] | None = None,
           study_kind: str = design.LOTTERY, plan=None) -> Replay:
    """The sequential confirmation replayed (``analysis.stats.Replay``) for every contrast (default:
    winning ticket vs random re-init) whose two regimes ran, per condition, then the supplementary
    contrasts the regime registry adds where they ran (late rewind vs random re-init).  The driver
    asks it which comparisons are still open; the report, for the verdicts."""
    confirm = confirm_rows(trials)
    ran = list(confirm["regime"].dropna().unique()) if len(confirm) else []
    pairs = list(design.DEFAULT_CONTRASTS[design.LOTTERY] if contrasts is None else contrasts)
    pairs += [p for p in design.supplementary_contrasts(ran) if p not in pairs]
    present, _ = design.split_present(pairs, ran)
    if plan is None:
        plan = Plan.fixed(trials["seed"].dropna() if "seed" in trials else (), margin_points=margin_points)
    return Replay(trials, present, plan, names=lambda a, b: design.sentence_names(a, b, study_kind))


def comparisons(trials: pd.DataFrame, margin_points: float, contrasts: list[tuple[str, str]] | None = None,
                study_kind: str = design.LOTTERY, plan=None) -> pd.DataFrame:
    """``replay``'s comparisons: columns of ``stats.COMPARE_COLUMNS``."""
    return replay(trials, margin_points, contrasts, study_kind, plan).frame()


def _pairs(pairs) -> str:
    return "; ".join(design.pair_label(a, b) for a, b in pairs)


def _verdict_intro(kind: str, pairs: list[tuple[str, str]], margin_points: float) -> str:
    if kind == design.LOTTERY:
        return (f"Winning ticket against random re-initialisation of the same sparse network, each at "
                f"its own learning rate per condition; test accuracy of the final epoch; equivalence "
                f"margin ±{margin_points:g} accuracy points.")
    claim = ""
    if kind == design.RETHINKING:
        claim = ("The claim (Liu et al. 2019, Rethinking the Value of Network Pruning): training the pruned "
                 "architecture from scratch matches fine-tuning the pruned network. Scratch-E trains it from a "
                 "fresh initialisation for as many epochs as the dense network was trained, Scratch-B for the "
                 "same compute budget (more epochs, since the pruned network needs fewer FLOPs). ")
    return (f"{claim}Contrasts (first regime minus second): {_pairs(pairs)}; each regime at its own learning "
            f"rate per condition; test accuracy of the final epoch; equivalence margin ±{margin_points:g} "
            f"accuracy points.")


def _conditions_text(confirm: pd.DataFrame) -> str:
    what = {"tuned": "at its chosen LR (condition tuned)", "fixed_small": "at a fixed small LR (fixed_small)",
            "fixed_large": "at a fixed large LR (fixed_large)"}
    conds = figures.conditions_in(confirm) if len(confirm) else ["tuned"]
    parts = [what.get(c, f"in condition {c}") for c in conds]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _method(kind: str, confirm: pd.DataFrame, margin_points: float) -> str:
    if kind == design.LOTTERY:
        return ("Each regime's learning rate is tuned by its own search and chosen on validation accuracy (a split "
                "held out of the training set); test accuracy is never used to choose. The confirmation retrains "
                "each regime at its chosen LR (condition tuned) and at fixed small and large LRs with fresh seeds "
                "not used in the search, and reports the test accuracy of the final epoch, never the best epoch. "
                "Intervals are 95% t intervals over seeds. The difference is tested with a t test (paired where "
                "seeds match); a 'no meaningful difference' verdict needs the two one-sided tests (TOST) to place "
                f"the difference within ±{margin_points:g} accuracy points, not merely a large p-value. " + SEQUENTIAL)
    return ("Each regime's learning rate is tuned by its own search and chosen on validation accuracy (a split "
            "held out of the training set); test accuracy is never used to choose. The confirmation retrains "
            f"each regime {_conditions_text(confirm)} with fresh seeds not used in the search, and reports the "
            "test accuracy of the final epoch, never the best epoch. Intervals are 95% t intervals over seeds. "
            "The difference is tested with a t test (paired where seeds match); a 'no meaningful difference' "
            "verdict needs the two one-sided tests (TOST) to place the difference within "
            f"±{margin_points:g} accuracy points, not merely a large p-value. " + SEQUENTIAL)


def _efficiency_blocks(eff: pd.DataFrame) -> list:
    if not len(eff):
        return []
    src = ("the confirmation runs of condition tuned" if eff["source"].iloc[0] == "confirm"
           else "the search trials (no confirmation run carries these measurements)")
    longer = (" (Scratch-B trains longer: the dense network's compute budget)"
              if "scratch_b" in set(eff["regime"]) else "")
    text = (f"Per regime, from {src}: parameters, forward FLOPs per example (2 per multiply-add) and median "
            f"inference latency per batch of 256 of the pruned network against the dense one (means over the "
            f"trials, latencies: medians; 'x fewer' and 'x faster' are dense / pruned), and the mean epochs of "
            f"the regime's own training{longer}.")
    rows = [[r["regime"], r["method"] or "-", int(r["n"]), number(r["train_epochs"], ".4g"), si(r["params"]),
             si(r["dense_params"]), times(r["params_ratio"]), si(r["flops"]), si(r["dense_flops"]),
             times(r["flops_ratio"]), number(r["latency_ms"], ".3g"), number(r["dense_latency_ms"], ".3g"),
             times(r["speedup"])] for _, r in eff.iterrows()]
    return [("h2", "Efficiency (pruned network against the dense one)"), ("p", text),
            ("table", ["regime", "method", "trials", "epochs trained", "params", "dense params", "x fewer params",
                       "FLOPs", "dense FLOPs", "x fewer FLOPs", "latency (ms)", "dense latency (ms)", "x faster"],
             rows)]


@dataclass(frozen=True)
class Report:
    """What ``build_report`` wrote and found: the report's files, its figures (and those skipped,
    with why), the comparisons (``verdicts``) and their verdict lines, the candidates, the confirmed
    summary, the search's best per regime, the efficiency table, the study's kind and contrasts (and
    those with a regime missing)."""

    markdown: Path
    html: Path
    figures: list[Path]
    skipped: dict[str, str]
    verdicts: pd.DataFrame
    verdict_lines: list[str]
    candidates: pd.DataFrame
    summary: pd.DataFrame
    search: pd.DataFrame
    efficiency: pd.DataFrame
    study_kind: str
    contrasts: list[tuple[str, str]]
    missing_contrasts: list[tuple[str, str]]


def _margin(margin_points) -> float:
    try:
        margin = float(margin_points)
    except (TypeError, ValueError):
        raise ReportError(f"--equivalence-margin must be a number of accuracy points > 0, got {margin_points!r}")
    if not math.isfinite(margin) or margin <= 0:
        raise ReportError(f"--equivalence-margin must be a number of accuracy points > 0, got {margin}")
    return margin


def build_report(study_dir, margin_points: float = DEFAULT_MARGIN_POINTS,
                 contrasts: list[tuple[str, str]] | None = None, study_kind: str | None = None) -> Report:
    """Rebuild ``<study>/report/`` (report.md, report.html, figures/); return what it holds.
    ``contrasts`` and ``study_kind`` default to the study's ``study.json`` (``analysis.design``).
    Raises ReportError on bad input, before writing anything."""
    margin_points = _margin(margin_points)
    study, trials, epochs = read_inputs(study_dir)
    try:
        kind = design.study_kind(study) if study_kind is None else study_kind
        pairs = design.contrasts(study) if contrasts is None else design.parse_contrasts(contrasts)
        plan = design.study_plan(study, margin_points)
    except ValueError as e:
        raise ReportError(str(e)) from None
    name = next(iter(trials["study"].dropna()), None) if "study" in trials else None
    title = f"{TITLES.get(kind, 'Pruning study report')}: {name or study.name}"

    confirm = confirm_rows(trials)
    summary = summarize(confirm) if len(confirm) else pd.DataFrame()
    comp = comparisons(trials, margin_points, pairs, kind, plan) if len(confirm) else pd.DataFrame()
    missing = design.split_present(pairs, confirm["regime"].dropna())[1] if len(confirm) else []
    cand = candidates(trials)
    lines = verdict_lines(comp, cand)
    search = best_per_regime(figures.search_rows(trials))
    eff = efficiency(trials)

    out = study / "report"
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths, skipped = figures.build(trials, epochs, fig_dir, summary if len(summary) else None, kind)
    for stale in figures.FIGURES:
        if stale in skipped:
            for ext in ("png", "svg"):
                (fig_dir / f"{stale}.{ext}").unlink(missing_ok=True)

    blocks: list = [("h1", title), ("h2", "Verdicts"),
                    *_verdict_blocks(lines, len(confirm), pairs, missing, kind, margin_points),
                    *_summary_blocks(summary), *_candidate_blocks(cand), *_comparison_blocks(comp, margin_points),
                    *_efficiency_blocks(eff), *_search_blocks(search), ("h2", "Figures"),
                    *(("fig", f) for f in figures.FIGURES if f not in skipped)]
    if skipped:
        blocks.append(("ul", [f"{f}: skipped ({why})" for f, why in skipped.items()]))
    blocks += [
        ("h2", "Method"),
        ("p", _method(kind, confirm, margin_points)),
        ("p", f"The numbers come from {study / 'results' / 'trials.parquet'} ({len(trials)} trials) and "
              f"{study / 'results' / 'epochs.parquet'} ({len(epochs)} epoch rows), rebuilt by "
              f"`python -m analysis.report {study} --equivalence-margin {margin_points:g}`."),
    ]
    md_path, html_path = out / "report.md", out / "report.html"
    _write(md_path, _md(blocks, kind))
    _write(html_path, _html(blocks, title, fig_dir, kind))
    return Report(md_path, html_path, paths, skipped, comp, lines, cand, summary, search, eff, kind, pairs, missing)


def _verdict_blocks(lines: list[str], confirmed: int, pairs, missing, kind: str, margin_points: float) -> list:
    """The verdicts, or why there are none."""
    if lines:
        return [("p", _verdict_intro(kind, pairs, margin_points)), ("ul", lines),
                *([("p", f"Not compared, a regime of the contrast has no confirmation runs: {_pairs(missing)}.")]
                  if missing else [])]
    if not confirmed:
        return [("p", f"No verdict yet: this study has no confirmation runs, only the LR search "
                      f"(margin would be ±{margin_points:g} points).")]
    if not pairs:
        why = "this study declares no contrasts"
    elif len(pairs) == 1 and missing:
        why = f"the confirmation runs lack {figures.label(pairs[0][0])} or {figures.label(pairs[0][1])}"
    elif len(missing) == len(pairs):
        why = f"the confirmation runs lack a regime of every contrast ({_pairs(pairs)})"
    else:
        why = f"no condition of the confirmation runs has both regimes of a contrast ({_pairs(pairs)})"
    return [("p", f"No verdict: {why} (margin ±{margin_points:g} points).")]


def _summary_blocks(summary: pd.DataFrame) -> list:
    if not len(summary):
        return []
    return [("h2", "Confirmed test accuracy"),
            ("table", ["condition", "regime", "LR", "n", "mean", "sd", "95% CI"],
             [[r["condition"], r["regime"], lr_text(r["lr"]), int(r["n"]), number(r["mean"]), number(r["sd"]),
               interval(r["low"], r["high"])] for _, r in summary.iterrows()])]


def _candidate_blocks(cand: pd.DataFrame) -> list:
    if not len(cand):
        return []
    return [("h2", "Tuned LR: the candidates on the fresh seeds"),
            ("p", "Each regime's best search LRs, each trained on the fresh seeds; the tuned LR (picked) "
                  "is the one of highest mean validation accuracy, and its test accuracy is what the "
                  "verdicts compare. 'Picked in resamples' is how often each candidate would have been "
                  f"picked on {BOOTSTRAP} bootstrap resamples of the seeds: the chance in the choice, which "
                  "the tuned comparison's interval carries (the verdict line's shares come from that "
                  "comparison's own resamples of both regimes' seeds, and may differ by a point). A candidate whose validation accuracy fell "
                  "clearly below its regime's best at a look took no more seeds (dropped). Overlapping "
                  "intervals mean a flat top: the choice among them matters little."),
            ("table", ["regime", "LR", "seeds", "val acc (mean)", "95% CI", "test acc (mean)", "95% CI",
                       "picked in resamples", "picked"],
             [[r["regime"], lr_text(r["lr"]), int(r["n"]), number(r["val_mean"]), interval(r["val_low"], r["val_high"]),
               number(r["test_mean"]), interval(r["test_low"], r["test_high"]), _share(r),
               "yes" if r["picked"] else ""] for _, r in cand.iterrows()])]


def _comparison_blocks(comp: pd.DataFrame, margin_points: float) -> list:
    if not len(comp):
        return []
    return [("h2", "Comparison (first regime minus second, test accuracy points)"),
            ("p", "Sequential: after each look a comparison is decided when its tests pass the look's "
                  "thresholds (alpha spent over the looks, so the error rates hold whatever look it stops "
                  "at); its interval is a 95% repeated confidence interval, the tuned one with the choice "
                  "of LR in it. An undecided comparison at the last look is inconclusive."
             if int(comp["looks"].max()) > 1 else
             "One look (the fixed design): thresholds p<0.05 for a difference and for TOST."),
            ("table", ["condition", "regimes", "LRs", "n", "paired", "diff (points)", "95% CI (points)",
                       "p (difference)", "p (equivalence)", "look", "thresholds (diff / TOST)",
                       "margin (points)", "verdict"],
             [[r["condition"], f"{r['a']} - {r['b']}", f"{lr_text(r['lr_a'])} / {lr_text(r['lr_b'])}",
               f"{integer(r['n_a'])} / {integer(r['n_b'])}", "yes" if r["paired"] else "no", points_cell(r["diff"]),
               interval(r["low"], r["high"], points_cell), p_cell(r["p_difference"]), p_cell(r["p_equivalence"]),
               f"{int(r['look'])} of {int(r['looks'])}" + (" (open)" if r["state"] == "open" else ""),
               f"{number(r['level_difference'], '.3g')} / {number(r['level_equivalence'], '.3g')}",
               f"±{margin_points:g}", r["verdict"]] for _, r in comp.iterrows()])]


def _search_blocks(search: pd.DataFrame) -> list:
    head = ("h2", "LR search (one seed per LR; best LR chosen on validation accuracy)")
    if not len(search):
        return [head, ("p", "No search trials in this study.")]
    return [head, ("table", ["regime", "trials", "completed", "distinct LRs", "diverged", "best LR", "val acc",
                             "test acc"],
                   [[r["regime"], int(r["trials"]), int(r["completed"]), int(r["lrs"]), int(r["diverged"]),
                     lr_text(r["best_lr"]), number(r["best_val_acc"]), number(r["test_acc"])] for _, r in search.iterrows()])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    ap.add_argument("study", help="study folder (holds results/trials.parquet and results/epochs.parquet)")
    ap.add_argument("--equivalence-margin", type=str, default=str(DEFAULT_MARGIN_POINTS), metavar="POINTS",
                    help=f"equivalence margin in accuracy points (default {DEFAULT_MARGIN_POINTS})")
    args = ap.parse_args(argv)
    try:
        res = build_report(args.study, args.equivalence_margin)
    except ReportError as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    for line in res.verdict_lines or ["no verdict: no confirmation runs"]:
        print(line)
    for a, b in res.missing_contrasts:
        print(f"contrast {design.pair_label(a, b)} not compared: a regime has no confirmation runs")
    for f, why in res.skipped.items():
        print(f"figure {f} skipped: {why}")
    print(f"report: {res.markdown}\nreport: {res.html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
