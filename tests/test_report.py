"""The report (analysis.report) and its figures (analysis.figures) on a synthetic finished study."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.tables import EPOCHS_SCHEMA, TRIALS_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
FIGS = ("lr_curve", "confirmed", "learning_curves", "sparsity")
VERDICTS = ("advantage", "no meaningful difference", "inconclusive")
ROUNDS, EPOCHS = 5, 6
SEARCH_LRS = [10 ** (-2.5 + i * 2.5 / 7) for i in range(8)]   # 0.00316 .. 1.0
CONFIRM = {"tuned": {"winning_ticket": 0.178, "random_reinit": 0.237},
           "fixed_small": {"winning_ticket": 0.01, "random_reinit": 0.01},
           "fixed_large": {"winning_ticket": 0.3, "random_reinit": 0.3}}


def _acc(regime: str, lr: float, kept: float = 0.2) -> float:
    """A plausible accuracy: peaks near LR 0.2, falls as fewer weights remain; the winning ticket is
    ahead at small LRs only (and slightly at high sparsity)."""
    peak = 0.72 - 0.08 * (math.log10(lr) + 0.7) ** 2 - 0.03 * (1 - kept) ** 4
    gap = 0.2 * max(0.0, -math.log10(lr) - 1) if regime == "random_reinit" else 0.0
    return peak - gap - (0.01 * (1 - kept) ** 2 if regime == "random_reinit" and kept > 0.2 else 0.0)


def _trial(study: str, phase: str, condition, regime: str, lr: float, seed: int, prune_round: int,
           tid: str, val: float | None, test: float | None, status="completed", diverged=False) -> dict:
    sparsity = 1 - 0.2 ** (prune_round / ROUNDS)
    return {"study": study, "phase": phase, "condition": condition, "regime": regime, "trial_id": tid,
            "status": status, "lr": lr, "log10_lr": math.log10(lr), "seed": seed,
            "reinit_seed": seed + 1000 if regime == "random_reinit" else None, "dataset": "mnist1d", "model": "mlp",
            "widths": "", "epochs": EPOCHS, "batch_size": 64, "schedule": "cosine", "warmup_epochs": 0,
            "momentum": 0.9, "weight_decay": 1e-4, "lr_coupling": "all", "pretrain_lr": 0.1,
            "prune_scope": "global", "rounds": ROUNDS, "prune_round": prune_round, "target_sparsity": 0.8,
            "achieved_sparsity": sparsity, "layer_sparsity": [("net.1.weight", sparsity)],
            "val_acc": val, "test_acc": test, "train_loss": None if test is None else 1.5 - test,
            "diverged": diverged, "diverged_stage": "final" if diverged else None, "wall_seconds": 3.0,
            "error": "RuntimeError: boom" if status == "error" else None}


def write_study(folder: Path, confirm: bool = True) -> Path:
    rng = np.random.default_rng(0)
    trials, epochs = [], []
    study = folder.name
    for regime in ("winning_ticket", "random_reinit"):
        for i, lr in enumerate(SEARCH_LRS):
            tid = f"s-{regime}-{i}"
            if lr >= 1.0:   # the largest LR diverges
                trials.append(_trial(study, "search", None, regime, lr, 0, ROUNDS, tid, 0.1, 0.1, diverged=True))
            else:
                a = _acc(regime, lr)
                trials.append(_trial(study, "search", None, regime, lr, 0, ROUNDS, tid,
                                     a + rng.normal(0, 0.005), a + rng.normal(0, 0.005)))
        trials.append(_trial(study, "search", None, regime, 0.05, 0, ROUNDS, f"s-{regime}-err", None, None,
                             status="error"))
    if confirm:
        for cond, lrs in CONFIRM.items():
            rounds = range(1, ROUNDS + 1) if cond == "tuned" else [ROUNDS]
            for regime, lr in lrs.items():
                for rnd in rounds:
                    for seed in range(100, 105):
                        tid = f"c-{cond}-{regime}-{rnd}-{seed}"
                        noise = 0.02 if cond == "fixed_large" else 0.004
                        acc = _acc(regime, lr, 0.2 ** (rnd / ROUNDS)) + rng.normal(0, noise)
                        trials.append(_trial(study, "confirm", cond, regime, lr, seed, rnd, tid,
                                             acc + rng.normal(0, 0.004), acc))
                        base = {"study": study, "phase": "confirm", "condition": cond, "regime": regime,
                                "trial_id": tid, "lr": lr, "seed": seed, "prune_round": rnd, "diverged": False,
                                "seconds": 0.1, "sparsity": 1 - 0.2 ** (rnd / ROUNDS)}
                        epochs.append({**base, "stage": "pretrain", "epoch": 1, "epoch_lr": lr, "train_loss": 2.0,
                                       "val_acc": 0.2, "test_acc": 0.2, "artifact": "train-abc"})
                        for e in range(1, EPOCHS + 1):
                            frac = 1 - math.exp(-e / 2)
                            epochs.append({**base, "stage": "final", "epoch": e, "epoch_lr": lr,
                                           "train_loss": 2.3 - 1.6 * frac * acc + rng.normal(0, 0.02),
                                           "val_acc": acc * frac, "test_acc": acc * frac + rng.normal(0, 0.005),
                                           "artifact": None})
    res = folder / "results"
    res.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(trials, schema=TRIALS_SCHEMA), res / "trials.parquet")
    pq.write_table(pa.Table.from_pylist(epochs, schema=EPOCHS_SCHEMA), res / "epochs.parquet")
    return folder


def run_report(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "analysis.report", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_full_report(tmp_path):
    study = write_study(tmp_path / "synth")
    r = run_report(str(study), "--equivalence-margin", "1.5")
    assert r.returncode == 0, r.stderr
    out = study / "report"
    for name in FIGS:
        for ext in ("png", "svg"):
            assert (out / "figures" / f"{name}.{ext}").stat().st_size > 1000, (name, ext)
    md = (out / "report.md").read_text()
    assert md.startswith("# ") and "synth" in md.splitlines()[0]
    verdicts = md.index("## Verdicts")
    first_table = md.index("| ")
    assert verdicts < first_table
    head = md[verdicts:first_table]
    assert "1.5" in head  # the margin is stated
    lines = [ln for ln in head.splitlines() if ln.startswith("- ")]
    assert len(lines) == 3
    for cond, line in zip(CONFIRM, lines):
        assert line.startswith(f"- {cond}:") and "verdict:" in line and any(v in line for v in VERDICTS)
    # the winning ticket's head start at a small LR is detected
    assert "verdict: advantage" in lines[1] and "winning_ticket beats random_reinit" in lines[1]
    for section in ("Confirmed test accuracy", "Comparison", "LR search", "Figures", "Method"):
        assert f"## {section}" in md
    assert md.index("## Confirmed test accuracy") < md.index("## Comparison") < md.index("## LR search") \
        < md.index("## Figures") < md.index("## Method")
    for name in FIGS:
        assert f"](figures/{name}.png)" in md
    assert "results/trials.parquet" in md and "TOST" in md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(?!data:)[^"'\s>]""", page)  # nothing fetched
    assert "<style>" in page and "verdict: advantage" in page
    assert "verdict:" in r.stdout.splitlines()[0]
    assert not list(out.rglob(".*tmp*"))  # no temp files left behind


def test_build_report_api(tmp_path):
    from analysis.report import Report, build_report, verdict_lines
    study = write_study(tmp_path / "api")
    res = build_report(study)
    assert isinstance(res, Report) and res.study_kind == "lottery"
    assert Path(res.markdown).is_file() and Path(res.html).is_file()
    assert sorted(p.name for p in res.figures) == sorted(f"{n}.{e}" for n in FIGS for e in ("png", "svg"))
    assert list(res.verdicts["condition"]) == list(CONFIRM)
    lines = verdict_lines(res.verdicts)
    assert len(lines) == 3 and all(any(v in ln for v in VERDICTS) for ln in lines)
    assert res.skipped == {}
    # the sweep's rows (prune_round < rounds) do not leak into the confirmed numbers
    tuned = res.summary[res.summary["condition"] == "tuned"]
    assert set(tuned["n"]) == {5}


def test_search_only_study(tmp_path):
    study = write_study(tmp_path / "searchonly", confirm=False)
    r = run_report(str(study))
    assert r.returncode == 0, r.stderr
    figs = study / "report" / "figures"
    assert (figs / "lr_curve.png").stat().st_size > 0 and (figs / "lr_curve.svg").stat().st_size > 0
    for name in FIGS[1:]:
        assert not (figs / f"{name}.png").exists()
        assert f"{name} skipped" in r.stdout
    md = (study / "report" / "report.md").read_text()
    assert "no confirmation runs" in md
    for name in FIGS[1:]:
        assert f"{name}: skipped" in md
    assert "## LR search" in md and "winning_ticket" in md
    page = (study / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1


@pytest.mark.parametrize("case", ["no-folder", "no-tables", "no-epochs", "margin-zero", "margin-negative",
                                  "margin-text"])
def test_bad_input(tmp_path, case):
    study = tmp_path / "bad"
    args = [str(study)]
    if case != "no-folder":
        write_study(study, confirm=False)
    if case == "no-tables":
        for p in (study / "results").iterdir():
            p.unlink()
    if case == "no-epochs":
        (study / "results" / "epochs.parquet").unlink()
    args += {"margin-zero": ["--equivalence-margin", "0"], "margin-negative": ["--equivalence-margin", "-1"],
             "margin-text": ["--equivalence-margin", "abc"]}.get(case, [])
    r = run_report(*args)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1, r.stderr
    assert ("margin" in err[0]) if case.startswith("margin") else ("bad" in err[0])
    assert not (study / "report").exists()
