"""The analysis of studies other than the lottery one: contrasts from study.json, verdicts named by
label, the efficiency columns of the trials table and their place in the report and the summary."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import analysis
from analysis import design, figures
from analysis.report import build_report, comparisons, verdict_lines
from analysis.stats import compare_contrasts, confirm_rows, summarize
from analysis.summary import efficiency, format_summary, read_tables
from analysis.tables import EPOCHS_SCHEMA, TRIALS_SCHEMA, trial_row, write_tables
from trainables.records import Efficiency, StageRun, TrialRecord, TrialSpec
from trainables.regimes import REGIMES

ROOT = Path(__file__).resolve().parents[1]
RETHINKING_CONTRASTS = [["scratch_e", "fine_tune"], ["scratch_b", "fine_tune"]]
SEEDS = range(100, 105)
EPOCHS = 4
TRAIN_EPOCHS = {"fine_tune": 20, "scratch_e": 60, "scratch_b": 150}
SEARCH_LRS = (0.01, 0.03, 0.1, 0.3)
EFF = {"params": 300_000, "dense_params": 1_200_000, "flops": 40_000_000, "dense_flops": 160_000_000,
       "latency_ms": 1.5, "dense_latency_ms": 4.5}
LOTTERY_WORDS = ("winning", "random re-init", "random_reinit", "Lottery", "lottery", "IMP", "late rewind")


def record(regime: str, trial_id: str, lr: float, seed: int, test_acc: float, *, phase: str = "confirm",
           condition: str | None = "tuned", prune_round: int = 1, rounds: int = 1, efficiency: bool = True,
           study: str = "rethink") -> TrialRecord:
    """A trial record as the driver writes it (records/<trial>.json), rethinking-style."""
    history = tuple({"epoch": e, "lr": lr, "train_loss": 2.0 - e * 0.2 * test_acc, "val_acc": test_acc * e / EPOCHS,
                     "test_acc": test_acc * e / EPOCHS, "diverged": False, "seconds": 0.1}
                    for e in range(1, EPOCHS + 1))
    settings = {"dataset": "cifar10", "model": "vgg", "epochs": EPOCHS, "batch_size": 64, "schedule": "cosine",
                "rounds": rounds, "sparsity": 0.75, "prune_scope": "layerwise"}
    stages = ()
    if regime == "fine_tune":   # fine-tuning starts from the dense network, trained once and shared
        stages = (StageRun("pretrain", "train-dense", tuple({**h, "lr": 0.1} for h in history), 0.0),)
    r = TrialRecord(study, trial_id, TrialSpec(regime, lr, (seed,), phase, condition if phase == "confirm" else None,
                                               prune_round), settings,
                    achieved_sparsity=1 - 0.25 ** (prune_round / rounds), val_acc=test_acc + 0.002, test_acc=test_acc,
                    train_loss=1.0 - test_acc, wall_seconds=2.0, history=history, stages=stages)
    if efficiency:
        r = r.replace(settings={**settings, "method": "l1-filter"}, train_epochs=TRAIN_EPOCHS.get(regime, 10),
                      efficiency=Efficiency(**EFF))
    return r


def rethinking_records(sweep: bool = False) -> list[TrialRecord]:
    """Search (one seed per LR) and confirmation (condition tuned, 5 seeds) of fine_tune, scratch_e,
    scratch_b: Scratch-E equals fine-tuning within noise, Scratch-B is 2 points ahead."""
    rng = np.random.default_rng(0)
    recs = []
    for regime in TRAIN_EPOCHS:
        for i, lr in enumerate(SEARCH_LRS):
            acc = 0.9 - 0.05 * (math.log10(lr) + 1) ** 2 + rng.normal(0, 0.003)
            recs.append(record(regime, f"s-{regime}-{i}", lr, 0, acc, phase="search"))
    base = {s: 0.90 + rng.normal(0, 0.004) for s in SEEDS}
    shift = {"fine_tune": 0.0, "scratch_e": 0.0, "scratch_b": 0.02}
    for regime in TRAIN_EPOCHS:
        for s in SEEDS:
            acc = base[s] + shift[regime] + rng.normal(0, 0.0008)
            recs.append(record(regime, f"c-{regime}-{s}", 0.1, s, acc, rounds=3 if sweep else 1,
                               prune_round=3 if sweep else 1))
            if sweep and regime != "scratch_b":
                for rnd in (1, 2):
                    recs.append(record(regime, f"c-{regime}-{s}-r{rnd}", 0.1, s, acc + 0.01 * (3 - rnd),
                                       rounds=3, prune_round=rnd))
    return recs


def write_study(folder: Path, records: list[TrialRecord], info: dict | None) -> Path:
    """A study folder as the driver leaves it: study.json, records/, results/*.parquet."""
    (folder / "records").mkdir(parents=True)
    for r in records:
        (folder / "records" / f"{r.trial_id}.json").write_text(json.dumps(r.to_json()))
    if info is not None:
        (folder / "study.json").write_text(json.dumps({"name": folder.name, "study_hash": "abc", **info}))
    write_tables(folder)
    return folder


def rethinking_study(folder: Path, contrasts=RETHINKING_CONTRASTS, **kw) -> Path:
    return write_study(folder, rethinking_records(**kw), {"study_kind": "rethinking", "contrasts": contrasts})


# ---- contrasts ------------------------------------------------------------------------------------

def test_contrasts_from_study_json(tmp_path):
    study = tmp_path / "s"
    study.mkdir()
    assert analysis.contrasts(study) == [("winning_ticket", "random_reinit")]   # no study.json
    assert analysis.study_kind(study) == "lottery"
    (study / "study.json").write_text(json.dumps({"name": "s", "study_hash": "x"}))   # written before contrasts
    assert analysis.contrasts(study) == [("winning_ticket", "random_reinit")]
    (study / "study.json").write_text(json.dumps({"study_kind": "rethinking", "contrasts": RETHINKING_CONTRASTS}))
    assert analysis.contrasts(study) == [("scratch_e", "fine_tune"), ("scratch_b", "fine_tune")]
    assert analysis.study_kind(study) == "rethinking"
    (study / "study.json").write_text(json.dumps({"study_kind": "rethinking"}))   # the kind's default
    assert analysis.contrasts(study) == [("scratch_e", "fine_tune"), ("scratch_b", "fine_tune")]
    (study / "study.json").write_text(json.dumps({"contrasts": [["a", "b"], ["a", "b"], ["c", "b"]]}))
    assert analysis.contrasts(study) == [("a", "b"), ("c", "b")]
    for bad in ([["a"]], [["a", "a"]], "a,b", [["a", 3]]):
        (study / "study.json").write_text(json.dumps({"contrasts": bad}))
        with pytest.raises(ValueError, match="contrast"):
            analysis.contrasts(study)
    (study / "study.json").write_text("{not json")
    with pytest.raises(ValueError, match="study.json"):
        analysis.contrasts(study)


def test_labels_and_colours():
    assert [design.label(r) for r in ("fine_tune", "scratch_e", "scratch_b", "lr_rewind", "random_prune")] == \
        ["fine-tune", "Scratch-E", "Scratch-B", "LR rewinding", "random pruning"]
    assert design.label("something_new") == "something_new" and figures.label("scratch_b") == "Scratch-B"
    known = [figures.color(r) for r in REGIMES]
    assert len(set(known)) == len(known)
    unknown = [figures.color(f"regime_{i}") for i in range(3)]
    assert len(set(unknown)) == 3 and not set(unknown) & set(known)
    assert figures.color("regime_0") == unknown[0]   # an unknown regime keeps its colour


def test_verdict_lines_name_the_pair_by_label():
    recs = rethinking_records()
    trials = pd.DataFrame([trial_row(r) for r in recs])
    confirm = confirm_rows(trials)
    assert len(confirm) == 15
    comp = comparisons(confirm, 1.0, [tuple(p) for p in RETHINKING_CONTRASTS], "rethinking")
    assert list(zip(comp["a"], comp["b"], comp["condition"])) == [("scratch_e", "fine_tune", "tuned"),
                                                                   ("scratch_b", "fine_tune", "tuned")]
    assert comp["paired"].all() and (comp["n_a"] == 5).all()
    e, b = verdict_lines(comp)
    assert e.startswith("tuned: Scratch-E at LR 0.1 vs fine-tune at LR 0.1 -> verdict: no meaningful difference. "
                        "No meaningful difference between Scratch-E and fine-tune: Scratch-E - fine-tune = ")
    assert b.startswith("tuned: Scratch-B at LR 0.1 vs fine-tune at LR 0.1 -> verdict: advantage. "
                        "Scratch-B beats fine-tune by ")
    assert not any(w in e + b for w in LOTTERY_WORDS)
    # the stats API alone: ids in the sentences unless told otherwise, one row per contrast and condition
    raw = compare_contrasts(confirm, [("scratch_b", "fine_tune"), ("lr_rewind", "fine_tune")])
    assert list(raw["a"]) == ["scratch_b"] and raw["sentence"].iloc[0].startswith("scratch_b beats fine_tune")
    assert compare_contrasts(confirm, [("lr_rewind", "fine_tune")]).empty


def test_only_tuned_condition():
    trials = pd.DataFrame([trial_row(r) for r in rethinking_records()])
    s = summarize(trials)
    assert set(s["condition"]) == {"tuned"} and list(s["regime"]) == ["fine_tune", "scratch_e", "scratch_b"]
    # a trial that names no pruning round is not part of a sweep: it counts as final
    trials.loc[trials["phase"] == "confirm", ["prune_round", "rounds"]] = np.nan
    assert len(confirm_rows(trials)) == 15


# ---- the report -----------------------------------------------------------------------------------

def test_rethinking_report(tmp_path):
    study = rethinking_study(tmp_path / "rethink")
    res = build_report(study)
    assert res.study_kind == "rethinking" and res.missing_contrasts == []
    assert res.contrasts == [("scratch_e", "fine_tune"), ("scratch_b", "fine_tune")]
    assert len(res.verdict_lines) == 2
    assert set(res.skipped) == {"sparsity"}   # no regime ran a sweep
    md = Path(res.markdown).read_text()
    assert md.splitlines()[0] == "# Rethinking-pruning study report: rethink"
    head = md[md.index("## Verdicts"):md.index("| ")]
    lines = [ln for ln in head.splitlines() if ln.startswith("- ")]
    assert len(lines) == 2 and "Scratch-E at LR" in lines[0] and "Scratch-B beats fine-tune" in lines[1]
    assert "Scratch-E vs fine-tune; Scratch-B vs fine-tune" in head and "Not compared" not in md
    for w in LOTTERY_WORDS:
        assert w not in md, w
    # the efficiency table: one row per regime, from the confirmation runs of condition tuned
    assert md.index("## Comparison") < md.index("## Efficiency") < md.index("## LR search")
    eff_md = md[md.index("## Efficiency"):md.index("## LR search")]
    assert "confirmation runs of condition tuned" in eff_md and "Scratch-B trains longer" in eff_md
    assert "| regime | method | trials | epochs trained | params | dense params | x fewer params | FLOPs |" in eff_md
    rows = [ln for ln in eff_md.splitlines() if ln.startswith("| ") and "l1-filter" in ln]
    assert [r.split(" | ")[0] for r in rows] == ["| fine_tune", "| scratch_e", "| scratch_b"]
    assert ("| scratch_b | l1-filter | 5 | 150 | 300k | 1.2M | 4.00x | 40M | 160M | 4.00x | 1.5 | 4.5 | 3.00x |"
            in eff_md)
    eff = res.efficiency
    assert list(eff["train_epochs"]) == [20, 60, 150] and (eff["source"] == "confirm").all()
    assert eff["flops_ratio"].tolist() == pytest.approx([4.0] * 3)
    assert eff["speedup"].tolist() == pytest.approx([3.0] * 3)
    page = Path(res.html).read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "Efficiency (pruned network against the dense one)" in page and "x faster" in page
    assert "<title>Rethinking-pruning study report: rethink</title>" in page
    assert "Scratch-B beats fine-tune" in page and not any(w in page for w in ("winning", "Lottery"))


def test_missing_contrast_is_reported(tmp_path):
    study = rethinking_study(tmp_path / "partial", contrasts=[*RETHINKING_CONTRASTS, ["lr_rewind", "fine_tune"]])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-m", "analysis.report", str(study)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0].startswith("tuned: Scratch-E") and out[1].startswith("tuned: Scratch-B")
    assert "contrast LR rewinding vs fine-tune not compared: a regime has no confirmation runs" in out
    md = (study / "report" / "report.md").read_text()
    assert "Not compared, a regime of the contrast has no confirmation runs: LR rewinding vs fine-tune." in md
    assert sum(ln.startswith("- tuned:") for ln in md.splitlines()) == 2


def test_no_contrast_present(tmp_path):
    study = rethinking_study(tmp_path / "none", contrasts=[["lr_rewind", "fine_tune"]])
    res = build_report(study)
    md = Path(res.markdown).read_text()
    assert res.verdict_lines == [] and "No verdict: the confirmation runs lack LR rewinding or fine-tune" in md
    assert "## Confirmed test accuracy" in md and "## Efficiency" in md


def test_search_only_efficiency_falls_back_to_the_search(tmp_path):
    recs = [r for r in rethinking_records() if r.spec.phase == "search"]
    res = build_report(write_study(tmp_path / "searchonly", recs, {"study_kind": "rethinking"}))
    assert (res.efficiency["source"] == "search").all() and list(res.efficiency["n"]) == [4, 4, 4]
    md = Path(res.markdown).read_text()
    assert "No verdict yet" in md and "from the search trials" in md


def test_summary_text(tmp_path):
    study = rethinking_study(tmp_path / "summ")
    trials, epochs = read_tables(study)
    res = build_report(study)
    text = format_summary(trials, epochs, 5.0, res.verdict_lines, analysis.contrasts(study),
                          analysis.study_kind(study))
    assert text.index("Verdicts") < text.index("Search:") < text.index("Scratch-E's test-accuracy advantage over "
                                                                          "fine-tune:")
    assert "Scratch-B's test-accuracy advantage over fine-tune:" in text
    eff = [ln for ln in text.splitlines() if ln.startswith("scratch_b ") and "FLOPs" in ln]
    assert eff == ["scratch_b        300k params (4.00x fewer), 40M FLOPs (4.00x fewer), 1.5 ms vs 4.5 ms dense "
                   "(3.00x faster), 150 epochs [l1-filter]"]
    assert ("Artifact sharing: the trials started from 36 epochs of pretraining and pruning, of which 4 were "
            "trained;") in text
    assert not any(w in text for w in LOTTERY_WORDS)
    no_shared = format_summary(trials, epochs[epochs["stage"] == "final"], study_kind="rethinking")
    assert "Artifact sharing: none; the trials trained 108 epochs of their own." in no_shared


# ---- figures --------------------------------------------------------------------------------------

def test_figures_for_unknown_regimes_and_sweeps(tmp_path):
    import dataclasses
    rename = {"fine_tune": "alpha", "scratch_e": "beta"}  # regimes nobody registered a colour or label for
    recs = [r.replace(spec=dataclasses.replace(r.spec, regime=rename.get(r.spec.regime, r.spec.regime)))
            for r in rethinking_records(sweep=True)]
    study = write_study(tmp_path / "odd", recs, {"study_kind": "other", "contrasts": [["beta", "alpha"]]})
    trials, epochs = read_tables(study)
    assert figures.sweep_regimes(figures.sweep_rows(trials)) == ["alpha", "beta"]   # scratch_b ran no sweep
    paths, skipped = figures.build(trials, epochs, tmp_path / "figs", study_kind="other")
    assert skipped == {} and len(paths) == 8 and all(p.stat().st_size > 1000 for p in paths)
    res = build_report(study)
    assert res.skipped == {} and len(res.verdict_lines) == 1
    md = Path(res.markdown).read_text()
    assert md.startswith("# Pruning study report: rethink") and "tuned: beta at LR 0.1 vs alpha at LR 0.1" in md
    assert "along the pruning rounds" in md and "IMP" not in md
    assert set(res.summary["n"]) == {5}   # the sweep's earlier rounds stay out of the confirmed numbers


# ---- tables ---------------------------------------------------------------------------------------

def test_tables_round_trip_the_efficiency_columns(tmp_path):
    new = record("scratch_b", "t-new", 0.1, 1, 0.9)
    old = record("winning_ticket", "t-old", 0.1, 1, 0.8, efficiency=False, study="rethink")
    partial = record("fine_tune", "t-part", 0.1, 1, 0.85, efficiency=False)
    partial = partial.replace(settings={**partial.settings, "method": "slimming"},
                              efficiency=Efficiency(flops=1_500_000, latency_ms=2.0))
    none_eff = record("scratch_e", "t-none", 0.1, 1, 0.85, efficiency=False)
    trials, epochs = write_tables(tmp_path, [new, old, partial, none_eff])
    assert trials.schema.equals(TRIALS_SCHEMA) and epochs.schema.equals(EPOCHS_SCHEMA)
    back = pq.read_table(tmp_path / "results" / "trials.parquet")
    assert back.schema.equals(TRIALS_SCHEMA)
    rows = {r["trial_id"]: r for r in back.to_pylist()}
    cols = ("method", "train_epochs", "params", "dense_params", "flops", "dense_flops", "latency_ms",
            "dense_latency_ms")
    assert [rows["t-new"][c] for c in cols] == ["l1-filter", 150, 300_000, 1_200_000, 40_000_000, 160_000_000,
                                                1.5, 4.5]
    assert all(rows["t-old"][c] is None for c in cols) and all(rows["t-none"][c] is None for c in cols)
    assert [rows["t-part"][c] for c in cols] == ["slimming", None, None, None, 1_500_000, None, 2.0, None]
    assert isinstance(rows["t-part"]["flops"], int)
    # an old study (no efficiency data anywhere) has no efficiency table
    df = pd.read_parquet(tmp_path / "results" / "trials.parquet")
    assert efficiency(df[df["trial_id"] == "t-old"]).empty


def test_table_writer_converts_each_record_once_and_writes_what_write_tables_writes(tmp_path):
    from analysis.tables import TableWriter
    first = [record("winning_ticket", f"t{i}", 0.1, i, 0.8) for i in range(3)]
    lazy = TableWriter(tmp_path / "lazy", first[:1], every_s=3600)
    for r in first[1:]:
        lazy.add(r)
    assert not (tmp_path / "lazy" / "results").exists()  # not yet: at most every every_s seconds
    redone = first[1].replace(val_acc=0.5)  # a trial finalised again replaces its rows
    lazy.add(redone)
    lazy.flush()
    eager = TableWriter(tmp_path / "eager", every_s=0)
    for r in first:
        eager.add(r)  # every_s=0: written at every add
        assert len(pq.read_table(tmp_path / "eager" / "results" / "trials.parquet")) == first.index(r) + 1
    want_trials, want_epochs = write_tables(tmp_path / "whole", [first[0], redone, first[2]])
    got_trials = pq.read_table(tmp_path / "lazy" / "results" / "trials.parquet")
    got_epochs = pq.read_table(tmp_path / "lazy" / "results" / "epochs.parquet")
    assert got_trials.equals(want_trials) and got_epochs.equals(want_epochs)
