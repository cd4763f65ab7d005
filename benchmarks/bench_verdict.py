"""Does the verdict depend on the draw?  The default lottery study under several ``--seed`` values.

Runs ``python -m study.lottery --num-samples 64 --seed S`` for each seed (default 0..4; any extra
flags after ``--``), one after another in temporary folders, and tabulates per seed: each regime's
tuned LR, and per comparison (tuned, fixed_small, fixed_large) the seeds it took, the estimate,
the 95% (repeated) interval and the verdict, with the study's wall time.  It ends by saying whether
the seeds agree on each comparison's verdict.  The numbers are read from each study's own tables
and rebuilt by the same replay the study's report uses (``analysis.report.replay``).

    python benchmarks/bench_verdict.py [--seeds 0,1,2,3,4] [--markdown FILE] [--json FILE] [-- extra flags]
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


def run(root: Path, seed: int, extra: list[str]) -> dict:
    """One study: its tuned LRs and comparisons, and its wall time."""
    from analysis.design import contrasts, study_kind, study_plan
    from analysis.report import replay
    from analysis.stats import picked_lrs
    from analysis.summary import read_tables
    name = f"seed{seed}"
    ray_tmp = tempfile.mkdtemp(prefix="rv", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "study.lottery", "--num-samples", "64", "--seed", str(seed),
           "--root", str(root), "--name", name, *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    shutil.rmtree(ray_tmp, ignore_errors=True)
    if proc.returncode != 0:
        sys.exit(f"study --seed {seed} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    study = root / name
    trials, _ = read_tables(study)
    plan = study_plan(study)
    state = replay(trials, plan.margin_points, contrasts(study), study_kind(study), plan)
    comps = [{k: (v.item() if hasattr(v, "item") else v) for k, v in c.items()
              if k in ("condition", "a", "b", "lr_a", "lr_b", "n_a", "diff", "low", "high", "verdict", "look",
                       "looks", "state")} for c in state.comparisons]
    return {"seed": seed, "wall_seconds": wall, "picked": picked_lrs(trials), "comparisons": comps,
            "confirm_runs": int((trials["phase"] == "confirm").sum())}


def table(results: list[dict]) -> str:
    """A Markdown table: one row per seed and comparison."""
    lines = ["| --seed | comparison | LRs (winning ticket / random re-init) | seeds | advantage (points) | "
             "95% CI | verdict | wall |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for i, c in enumerate(r["comparisons"]):
            lines.append(f"| {r['seed'] if i == 0 else ''} | {c['condition']} | {c['lr_a']:.3g} / {c['lr_b']:.3g} | "
                         f"{c['n_a']} (look {c['look']} of {c['looks']}) | {100 * c['diff']:+.1f} | "
                         f"{100 * c['low']:.1f} to {100 * c['high']:.1f} | {c['verdict']} | "
                         + (f"{r['wall_seconds']:.0f} s |" if i == 0 else "|"))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--markdown", default=None, help="also write the table here")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    ap.add_argument("--keep", default=None, help="run the studies in this folder and keep them")
    ap.add_argument("extra", nargs="*", help="extra flags for study.lottery (after --)")
    a = ap.parse_args()
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench-verdict-"))
    results = []
    try:
        for seed in (int(s) for s in a.seeds.split(",")):
            results.append(r := run(root, seed, a.extra))
            print(f"--seed {seed}: {r['wall_seconds']:.0f} s; "
                  + "; ".join(f"{c['condition']} {c['verdict']} ({100 * c['diff']:+.1f}, {c['n_a']} seeds)"
                              for c in r["comparisons"]), flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    md = table(results)
    print(md)
    verdicts: dict[str, set[str]] = {}
    for r in results:
        for c in r["comparisons"]:
            verdicts.setdefault(c["condition"], set()).add(c["verdict"])
    for cond, v in verdicts.items():
        print(f"{cond}: {'one verdict across the seeds: ' + next(iter(v)) if len(v) == 1 else 'verdicts differ: ' + ', '.join(sorted(v))}")
    walls = [r["wall_seconds"] for r in results]
    print(f"wall time: {min(walls):.0f} to {max(walls):.0f} s (target <= 300 s: {'met' if max(walls) <= 300 else 'MISSED'})")
    if a.markdown:
        Path(a.markdown).write_text(md + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
