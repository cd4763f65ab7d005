"""The driver's cost of putting one finished trial into the Parquet tables, as the study grows.

One real trial record (the default pipeline's shape: 20 epochs of pretraining, 5 IMP rounds and the
final training, so 120 epoch rows) is produced by ``run_trial`` on MNIST-1D, then added N times
under new trial ids, as the driver's callback finalises trials:

- baseline: the tables rewritten from every record after each trial (what the driver did before
  ``TableWriter``), timed up to ``--baseline-trials`` (its cost grows with the study);
- ``TableWriter.add``: each record converted once, the files rewritten at most every 10 s (the
  time of one such write at the end is printed too: it is what the throttle spreads out).

It prints the mean cost per trial over the first 100 trials and over the last 100, for both, and
their ratios (same process, same record).

    python benchmarks/bench_finalise.py [--trials 5000] [--baseline-trials 400]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_record(tmp: Path):
    from trainables.config import PipelineConfig
    from trainables.data import load_splits
    from trainables.records import TrialSpec
    from trainables.trainable import TrialContext, run_trial
    data = tmp / "data"
    load_splits("mnist1d", str(data), 42, 0.2, 42)
    cfg = PipelineConfig().updated(data_dir=str(data))
    ctx = TrialContext("bench", str(tmp / "study"), cfg)
    return run_trial(TrialSpec("winning_ticket", 0.1, (0,), prune_round=cfg.pruning.rounds).as_config(), ctx, "t0")[0]


def per_trial_costs(add, record, n: int) -> list[float]:
    costs = []
    for i in range(n):
        r = record.replace(trial_id=f"t{i:06d}")
        start = time.perf_counter()
        add(r)
        costs.append(time.perf_counter() - start)
    return costs


def main() -> None:
    from analysis.tables import TableWriter, write_tables
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=5000)
    p.add_argument("--baseline-trials", type=int, default=400)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        record = one_record(tmp)
        print(f"record: {len(record.history)} final epochs, "
              f"{sum(len(st.history) for st in record.stages)} pretraining/IMP epochs")

        records: list = []

        def rewrite_all(r) -> None:
            records.append(r)
            write_tables(tmp / "baseline", records)
        base = per_trial_costs(rewrite_all, record, a.baseline_trials)

        writer = TableWriter(tmp / "writer")
        start = time.perf_counter()
        new = per_trial_costs(writer.add, record, a.trials)
        flushed = time.perf_counter()
        writer.flush()
        flush_s = time.perf_counter() - flushed
        total = time.perf_counter() - start

    def ms(xs: list[float]) -> float:
        return 1000 * statistics.mean(xs)
    print(f"baseline (rewrite every trial): first 100 {ms(base[:100]):.2f} ms/trial, "
          f"trials {a.baseline_trials - 99}-{a.baseline_trials} {ms(base[-100:]):.2f} ms/trial "
          f"(x{ms(base[-100:]) / ms(base[:100]):.1f})")
    print(f"TableWriter.add: first 100 {ms(new[:100]):.2f} ms/trial, trials {a.trials - 99}-{a.trials} "
          f"{ms(new[-100:]):.2f} ms/trial (x{ms(new[-100:]) / ms(new[:100]):.2f}); "
          f"{a.trials} trials in {total:.1f} s; writing both files at {a.trials} trials takes {flush_s:.2f} s, "
          f"at most once every {writer.every_s:g} s")
    print(f"at trial {a.baseline_trials}: TableWriter costs {ms(new[a.baseline_trials - 100:a.baseline_trials]) / ms(base[-100:]):.3f} "
          f"of the baseline per trial")


if __name__ == "__main__":
    main()
