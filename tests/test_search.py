"""The study's searcher (``study.search.StudySearch``) under any order of trial completions: the same
suggestions and values, each configuration trained once, every suggestion recorded and told.

Ray Tune's part is played here by a loop that asks for suggestions and finishes the trials in a
seeded random order, early or late, each leaving the record file a trial writes; Optuna's storage,
the driver's callback (MLflow, records, tables) are the real ones.
"""
from __future__ import annotations

import io
import random

import optuna
from ray.tune.search import Searcher

from study.callbacks import Progress, StudyCallback
from study.config import optuna_study_name, preset
from study.search import StudySearch
from study.tracking import MlflowTracker
from trainables.records import TrialRecord, TrialSpec
from trainables.storage import Storage

REGIMES = ["winning_ticket", "random_reinit"]
N = 10  # suggestions per regime, on a grid of 3 LRs: most of them repeats


def _value(spec: TrialSpec) -> float:
    return round(0.5 + 0.1 * spec.lr + (0.01 if spec.regime == "winning_ticket" else 0.0), 6)


def _search(tmp_path, name: str, order_seed: int) -> tuple[dict, StudyCallback, list[TrialSpec]]:
    cfg = preset("lottery").updated(root=str(tmp_path), name=name, num_samples=N, lr_grid=1, lr_min=0.01,
                                    lr_max=1.0, startup_trials=2)
    cfg.study_dir.mkdir(parents=True)
    tracker = MlflowTracker(f"sqlite:///{cfg.study_dir / 'mlflow.db'}", name, cfg.study_dir / "mlartifacts")
    tracker.start_parent(name, {})
    callback = StudyCallback(name, cfg.study_dir, "hash", tracker, Progress({r: N for r in REGIMES}, io.StringIO()),
                             {}, Storage(str(cfg.study_dir)))
    search = StudySearch(cfg, REGIMES, batch=2, slots=3, callback=callback)
    rng, running, trained, n = random.Random(order_seed), {}, [], 0

    def finish(tid: str) -> None:
        spec = TrialSpec.from_config(running.pop(tid))
        record = TrialRecord(name, tid, spec, {}, val_acc=_value(spec), test_acc=_value(spec))
        callback.store.write_trial(tid, [record])
        search.on_trial_complete(tid, {"val_acc": record.val_acc})
        callback.finalise(record)  # Tune calls the searcher, then the callback

    finished = False
    while not finished or running:
        if running and (finished or rng.random() < 0.5):  # a trial finishes, early or late
            finish(rng.choice(sorted(running)))
            continue
        n += 1
        config = search.suggest(f"t{n:03d}")
        if config == Searcher.FINISHED:
            finished = True
        elif config is None:
            assert running, "the searcher waits for nothing"
        else:
            running[f"t{n:03d}"] = config
            trained.append(TrialSpec.from_config(config))
            assert len(running) <= 3  # the slots
    storage = f"sqlite:///{cfg.study_dir / 'optuna.db'}"
    told = {r: [(t.number, t.params["log10_lr"], t.value, t.state.name) for t in optuna.load_study(
        study_name=optuna_study_name(name, r), storage=storage).trials] for r in REGIMES}
    return told, callback, trained


def test_any_completion_order_gives_the_same_search_and_trains_each_configuration_once(tmp_path):
    first, callback, trained = _search(tmp_path, "first", order_seed=1)
    second, _, _ = _search(tmp_path, "second", order_seed=2)
    assert first == second  # the same suggestions and values, whichever trial finished first
    for regime in REGIMES:
        assert len(first[regime]) == N and {s for *_, s in first[regime]} == {"COMPLETE"}
        mine = [s for s in trained if s.regime == regime]
        assert len({s.lr for s in mine}) == len(mine) <= 3  # each LR trained once
    records = list(callback.records.values())
    assert len(records) == N * len(REGIMES)  # every suggestion is a row, trained or answered
    for r in records:
        assert r.val_acc == _value(r.spec)
        if r.reused_from:
            assert r.trial_id.startswith(r.spec.regime) and r.reused_from in callback.records
    by_number = {(r.spec.regime, r.spec.optuna_trial): r.val_acc for r in records}
    assert all(by_number[(regime, n)] == v for regime in REGIMES for n, _, v, _ in first[regime])
