"""Wall time of the default lottery study, and the compute that artifact sharing saves.

Runs ``python -m study.lottery --num-samples 64`` (plus any extra flags) in a temporary folder,
then reads the study's own Parquet tables:

- wall time of the whole command (target: at most 10 minutes on a 2-core machine without GPU);
- a profile: the share of the trial slots spent training and evaluating, the driver's start and
  its finalisation;
- training epochs used by the trials (pretraining + IMP rounds each trial started from, plus its
  own training) against the epochs actually trained (distinct shared artifacts + own training):
  their ratio is the compute sharing saves, measured on the same run.

With ``--compare-continuous`` it also runs the same study with ``--lr-grid 0`` (continuous LRs:
cross-regime sharing only by chance) in the same command, for the wall-time ratio.

    python benchmarks/bench_study.py [--num-samples 64] [--compare-continuous] [-- extra flags]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_study(root: Path, name: str, num_samples: int, extra: list[str]) -> dict:
    from analysis.summary import read_tables, sharing
    ray_tmp = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "study.lottery", "--num-samples", str(num_samples), "--root", str(root),
           "--name", name, *extra]
    t0, t0_epoch = time.perf_counter(), time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    shutil.rmtree(ray_tmp, ignore_errors=True)
    if proc.returncode != 0:
        sys.exit(f"study failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    trials, epochs = read_tables(root / name)
    sh = sharing(epochs)
    return {"flags": cmd[3:], "wall_seconds": wall, "trials": len(trials),
            "epochs_used": sh.used_epochs + sh.final_epochs, "epochs_trained": sh.trained_epochs + sh.final_epochs,
            "saved_fraction": sh.saved_fraction, "median_trial_seconds": float(trials["wall_seconds"].median()),
            "profile": profile(root / name, proc.stdout, wall, t0_epoch)}


def profile(study: Path, stdout: str, wall: float, t0: float) -> dict:
    """Where the wall time went: the trial slots (wall x trials at once) against the seconds spent
    training and evaluating (every epoch trained in this study: the pretraining and IMP artifacts'
    and the regimes' own, from their ``seconds``), the driver's start (until the first trial
    started) and its finalisation (after the last trial finished: tables, report, MLflow)."""
    import re

    import pandas as pd
    slots = int(re.search(r"up to (\d+) trials at once", stdout).group(1))
    trained = 0.0
    for meta_file in (study / "artifacts").glob("*/meta.json"):
        meta = json.loads(meta_file.read_text())
        trained += sum(e.get("seconds") or 0.0 for e in meta.get("history", []))
    t = pd.read_parquet(study / "results" / "trials.parquet")
    first = t["started_at"].min().timestamp() - t0
    last = t["finished_at"].max().timestamp() - t0
    phases = {p: (g["finished_at"].max() - g["started_at"].min()).total_seconds() for p, g in t.groupby("phase")}
    # the Ray trials' own time (a trial of several seeds is one trial; an answered repeat is none)
    ran = t[t["reused_from"].isna()].assign(tune=t["trial_id"].str.replace(r"-s\d+$", "", regex=True))
    spans = ran.groupby("tune").agg(start=("started_at", "min"), end=("finished_at", "max"))
    in_trials = float((spans["end"] - spans["start"]).dt.total_seconds().sum())
    return {"slots": slots, "slot_seconds": wall * slots, "training_seconds": trained,
            "training_share": trained / (wall * slots), "trial_seconds": in_trials, "ray_trials": len(spans),
            "start_seconds": first, "finalise_seconds": wall - last, "phase_seconds": phases}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-samples", type=int, default=64)
    ap.add_argument("--compare-continuous", action="store_true")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    ap.add_argument("--keep", default=None, help="run the study in this folder and keep it (its summary, report)")
    ap.add_argument("extra", nargs="*", help="extra flags for study.lottery (after --)")
    a = ap.parse_args()
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench-study-"))
    try:
        out = {"grid": run_study(root, "grid", a.num_samples, a.extra)}
        g = out["grid"]
        print(f"default study: {g['wall_seconds']:.0f} s wall (target <= 600 s: "
              f"{'met' if g['wall_seconds'] <= 600 else 'MISSED'}), {g['trials']} trials, "
              f"median trial {g['median_trial_seconds']:.1f} s")
        print(f"artifact sharing: {g['epochs_trained']} of {g['epochs_used']} training epochs trained "
              f"({100 * g['saved_fraction']:.0f}% saved)")
        p = g["profile"]
        print(f"profile: {p['slots']} trial slots x {g['wall_seconds']:.0f} s = {p['slot_seconds']:.0f} slot-seconds; "
              f"training and evaluation {p['training_seconds']:.0f} s ({100 * p['training_share']:.0f}%); "
              f"the driver's start until the first trial {p['start_seconds']:.0f} s, its finalisation after the "
              f"last {p['finalise_seconds']:.0f} s; the rest is Ray scheduling, artifact I/O, MLflow and the "
              f"driver's tables between trials, and slots idle while a batch of suggestions waits for its last trial")
        print(f"inside the {p['ray_trials']} Ray trials {p['trial_seconds']:.0f} s ({100 * p['trial_seconds'] / p['slot_seconds']:.0f}% "
              f"of the slots; their time beyond training and evaluation: artifact I/O, pruning, building models, "
              f"records); outside them {p['slot_seconds'] - p['trial_seconds']:.0f} s (Ray scheduling, the driver's "
              f"start, finalisation and stage changes, idle slots)")
        print("phases (first start to last finish): " + ", ".join(f"{k} {v:.0f} s" for k, v in p["phase_seconds"].items()))
        if a.compare_continuous:
            out["continuous"] = c = run_study(root, "continuous", a.num_samples, [*a.extra, "--lr-grid", "0"])
            print(f"continuous LRs: {c['wall_seconds']:.0f} s wall, {100 * c['saved_fraction']:.0f}% of epochs "
                  f"saved; grid/continuous wall-time ratio {g['wall_seconds'] / c['wall_seconds']:.2f}")
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1))
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
