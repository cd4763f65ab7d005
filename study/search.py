"""The study's LR searches as one Ray Tune searcher: the regimes side by side, each its own Optuna
study (ask and tell, persisted in optuna.db) asked in fixed batches, and a suggestion that repeats
a configuration already trained answered from its result without a trial.

Why not Ray's ``OptunaSearch`` behind a ``ConcurrencyLimiter(batch=True)``: every suggestion would
be a Tune trial, so a repeated LR (most of a long search on a grid) still costs a trial's
scheduling and holds a slot while its batch waits; and one regime at a time leaves slots idle at
every batch's end.  Here each regime asks ``batch`` suggestions that need training (answering
repeats at once), tells their values only once all of them finished, then asks the next batch: what
TPE suggests depends on earlier values only, never on which trial finished first, so the same
command gives the same LRs twice.  The regimes share the slots (``batch`` = slots / regimes,
rounded up), so a regime waiting for its batch's last trial leaves its slot to another.
"""
from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from typing import Any

from ray.tune.search import Searcher

from study.config import StudyConfig, optuna_study_name
from trainables.records import DamagedRecord, RunKey, TrialRecord, TrialSpec


@dataclass
class _Batch:
    """One regime's suggestions in flight: the trials (Tune id -> Optuna number, key, config) and
    their results once finished; the twins (Optuna number, config) that asked for a configuration
    one of them trains, answered when the batch ends."""

    trials: dict[str, tuple[int, str, dict]] = field(default_factory=dict)
    results: dict[str, float | None] = field(default_factory=dict)  # None: the trial failed
    twins: list[tuple[int, dict]] = field(default_factory=list)
    closed: bool = False  # full, or the regime's budget asked: no more until it ends

    def keys(self) -> dict[str, str]:
        return {key: tid for tid, (_, key, _) in self.trials.items()}


@dataclass
class _Regime:
    asked: int = 0  # suggestions so far (trained, answered or in flight): the budget counts them
    batch: _Batch = field(default_factory=_Batch)
    known: dict[str, tuple[float | None, str]] = field(default_factory=dict)  # key -> (value, Tune trial)


class StudySearch(Searcher):
    """``num_samples`` suggestions per regime, ``batch`` needing training at a time per regime, and
    at most ``slots`` trials at once in all (Tune's own limit would wrap this searcher in a
    ``ConcurrencyLimiter``, which forgets its trials in flight when an experiment is restored)."""

    def __init__(self, cfg: StudyConfig, regimes: list[str], batch: int, slots: int, callback):
        super().__init__(metric="val_acc", mode="max")
        from search_spaces.lottery import define_by_run
        s = cfg.search
        self.study, self.storage_url = cfg.execution.name, f"sqlite:///{cfg.study_dir / 'optuna.db'}"
        self.num_samples, self.batch_size, self.slots, self.callback = s.num_samples, batch, slots, callback
        self.spaces = {r: define_by_run(s.space(r), {"regime": r, "seeds": s.seeds, "phase": "search",
                                                      "prune_round": cfg.pruning.rounds}) for r in regimes}
        self.seed, self.startup_trials = s.seed, s.startup_trials
        self.state = {r: _Regime() for r in regimes}
        self.samplers: dict[str, Any] = {}
        self._studies: dict[str, Any] = {}
        self._told: dict[str, set[int]] = {}  # Optuna trials already finished when restored
        self._turn = 0

    def _key(self, config: dict[str, Any]) -> str:
        """What a suggestion asks to train: its ``RunKey``'s hash (the callback's settings are the
        study's pipeline settings)."""
        return RunKey.of(TrialSpec.from_config(config), self.callback.settings).hash

    # -- Optuna --------------------------------------------------------------------------------
    def _study(self, regime: str):
        if regime not in self._studies:
            import optuna
            if regime not in self.samplers:
                self.samplers[regime] = optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=self.startup_trials)
            self._studies[regime] = optuna.create_study(
                study_name=optuna_study_name(self.study, regime), storage=self.storage_url,
                sampler=self.samplers[regime], direction="maximize", load_if_exists=True)
        return self._studies[regime]

    def _tell(self, regime: str, number: int, value: float | None) -> None:
        import optuna
        if number in self._told.get(regime, ()):
            return  # told by the interrupted driver after its last snapshot
        if value is None:
            self._study(regime).tell(number, state=optuna.trial.TrialState.FAIL)
        else:
            self._study(regime).tell(number, value)

    # -- Tune's searcher interface -------------------------------------------------------------
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is the searcher's own; Tune's param_space is empty

    def suggest(self, trial_id: str) -> dict | str | None:
        """The next suggestion that needs training, from the regimes in turn (answering repeats on
        the way); None while every regime waits for its batch; FINISHED once all are asked."""
        regimes = list(self.state)
        running = sum(len(st.batch.trials) - len(st.batch.results) for st in self.state.values())
        for i in range(len(regimes) if running < self.slots else 0):  # at most `slots` trials at once
            regime = regimes[(self._turn + i) % len(regimes)]
            config = self._next(regime, trial_id)
            if config is not None:
                self._turn = (self._turn + i + 1) % len(regimes)
                return config
        if all(st.asked >= self.num_samples for st in self.state.values()):
            return Searcher.FINISHED  # Tune still waits for the trials in flight
        return None

    def _next(self, regime: str, trial_id: str) -> dict | None:
        st = self.state[regime]
        batch = st.batch
        while not batch.closed and st.asked < self.num_samples:
            trial = self._study(regime).ask()
            config = self.spaces[regime](trial)
            st.asked += 1
            key = self._key(config)
            if key in st.known:  # trained by an earlier batch: its value now, no trial
                value, source = st.known[key]
                self._tell(regime, trial.number, value)
                self._answer(config, source)
            elif key in batch.keys():  # trained by this batch: answered when it ends
                batch.twins.append((trial.number, config))
            else:
                batch.trials[trial_id] = (trial.number, key, config)
                batch.closed = len(batch.trials) >= self.batch_size
                return config
        batch.closed = True  # the budget is asked: the batch ends with its trials, or now if they finished
        self._end_batch_if_done(regime)
        return None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Hold the trial's value (from its records, as the tables have it: Tune's last result may be
        missing after a restore); once the regime's batch is closed and all its trials finished,
        tell Optuna every value (trials, then twins) and remember them for repeats."""
        for regime, st in self.state.items():
            if trial_id in st.batch.trials:
                st.batch.results[trial_id] = search_values(self._records_of(trial_id), regime).get(
                    st.batch.trials[trial_id][0])
                self._end_batch_if_done(regime)
                return

    def _records_of(self, trial_id: str) -> list[TrialRecord]:
        try:
            return self.callback.store.read_trial(trial_id, set_aside=False) or []
        except DamagedRecord:  # no value (Optuna is told FAIL); the callback sets the file aside and says so
            return []

    def _end_batch_if_done(self, regime: str) -> None:
        st = self.state[regime]
        batch = st.batch
        if not batch.closed or len(batch.results) < len(batch.trials):
            return
        for tid, (number, key, _) in batch.trials.items():
            self._tell(regime, number, batch.results[tid])
            if batch.results[tid] is not None:
                st.known[key] = (batch.results[tid], tid)
        for number, config in batch.twins:
            tid = batch.keys()[self._key(config)]
            self._tell(regime, number, batch.results[tid])
            self._answer(config, tid, failed=batch.results[tid] is None)
        st.batch = _Batch()

    # -- answers -------------------------------------------------------------------------------
    def _answer(self, config: dict, source: str, failed: bool = False) -> None:
        """Records for a suggestion answered from the trial ``source`` that trained it: its records
        under this suggestion's id and Optuna trial, ``reused_from`` naming who trained it."""
        spec = TrialSpec.from_config(config)
        answer_id = f"{spec.regime}-optuna{spec.optuna_trial:04d}"
        if all(rid in self.callback.records for rid in spec.record_ids(answer_id)):
            return  # answered before the driver was interrupted
        trained = [] if failed else self._records_of(source)
        if not trained:
            return self.callback.record_error(spec, answer_id, f"the trial {source} that trained this configuration failed")
        now = time.time()
        # a copy of the source's records in the store, under this suggestion's id; then finalised as
        # any trial's
        copies = [src.replace(trial_id=rid, spec=one, reused_from=src.reused_from or src.trial_id,
                              resumed_from_epoch=None, started_at=now, finished_at=now, wall_seconds=0.0,
                              mlflow_run_id=None, optuna_study=None, study_hash=None, trial_hash=None)
                  for rid, one, src in zip(spec.record_ids(answer_id), spec.per_seed(), trained)]
        self.callback.store.write_trial(answer_id, copies)
        self.callback.finish(answer_id, spec, copies)

    # -- Tune's experiment snapshots -----------------------------------------------------------
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"state": self.state, "samplers": self.samplers, "turn": self._turn}, f)

    def restore(self, checkpoint_path: str) -> None:
        """The state of the last snapshot; suggestions asked after it (Optuna trials still RUNNING
        that no batch holds) are settled: told their value where their records were written, else
        failed and asked again."""
        with open(checkpoint_path, "rb") as f:
            saved = pickle.load(f)
        self.state, self.samplers, self._turn = saved["state"], saved["samplers"], saved["turn"]
        self._studies = {}
        import optuna
        for regime, st in self.state.items():
            held = {n for n, _, _ in st.batch.trials.values()} | {n for n, _ in st.batch.twins}
            mine = [r for r in self.callback.records.values() if r.spec.regime == regime and r.spec.phase == "search"]
            values = search_values(mine, regime)
            trials = self._study(regime).get_trials(deepcopy=False)
            self._told[regime] = {t.number for t in trials if t.state != optuna.trial.TrialState.RUNNING}
            for t in trials:
                if t.state == optuna.trial.TrialState.RUNNING and t.number not in held:
                    self._tell(regime, t.number, values.get(t.number))
            st.asked = len({r.spec.optuna_trial for r in mine} | held)  # what has records or is in flight

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with the experiment (the callback with it); Optuna's study handles reopen."""
        state = self.__dict__.copy()
        state["_studies"] = {}
        return state


def search_dirname(trial) -> str:
    """A search trial's folder: its regime and Optuna trial."""
    return f"{trial.config['spec']['regime']}-{trial.config['optuna_trial']:04d}_{trial.trial_id}"


def search_values(records, regime: str) -> dict[int, float]:
    """Each search trial's value, as Optuna is told it: the mean validation accuracy over its seeds."""
    per_trial: dict[int, list[float]] = {}
    for r in records:
        if r.spec.regime == regime and r.spec.phase == "search" and r.completed:
            per_trial.setdefault(r.spec.optuna_trial, []).append(r.val_acc)
    return {t: sum(v) / len(v) for t, v in per_trial.items()}
