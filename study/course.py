"""The course of a study, shared by ``study.lottery``, ``study.rethinking`` and ``study.confirm``:
the search (the regimes side by side, one Optuna study each driving Ray Tune trials:
``study.search``), the confirmation on fresh seeds, and the finalisation (tables, report, summary,
the MLflow parent run).

Every trial is an MLflow child run of the study's parent run and a row of
``results/trials.parquet``; the summary leads with the verdicts.
"""
from __future__ import annotations

import json
import math
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from study.config import StudyConfig, optuna_study_name
from study.confirmation import (candidate_lrs, confirm_dirname, confirm_seeds, confirm_specs, look_specs, plan,
                                sweep_specs)
from study.runtime import quiet_logs, quiet_ray_env
from trainables.regimes import get_regime
from trainables.storage import atomic_path, storage_failure


def code_revision() -> dict[str, object] | None:
    """The git commit of the code that runs the study, and whether the work tree differs from it;
    None outside a git checkout (an installed wheel, the Docker image)."""
    import subprocess
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def write_study_json(cfg: StudyConfig, study_hash: str) -> None:
    """The study's config (once: ``study.cli.load_study_config`` rebuilds it exactly), its hash, kind
    and contrasts, the command, the versions and the code's git revision."""
    import ray
    import torch
    info = {"name": cfg.execution.name, "study_hash": study_hash, "study_kind": cfg.kind,
            "contrasts": [list(c) for c in cfg.contrasts], "config": cfg.to_dict(),
            "command": [sys.executable, "-m", f"study.{cfg.kind}", *sys.argv[1:]],
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__},
            "code": code_revision(),
            "created_at": time.time()}
    (cfg.study_dir / "study.json").write_text(json.dumps(info, indent=1))


def max_concurrent(cfg: StudyConfig) -> tuple[int, str]:
    """Trials at once (the regimes' searches share them), and where that number comes from:
    --max-concurrent, or where it is 0 as many as fit at once in what the joined cluster can grow to
    (its autoscaler's node types and their max_workers; the nodes of a cluster without autoscaler;
    see study.runtime.cluster_capacity)."""
    from study.runtime import cluster_capacity, default_concurrency
    x = cfg.execution
    if x.max_concurrent:
        return x.max_concurrent, "--max-concurrent"
    capacity = cluster_capacity()
    return (default_concurrency(capacity, x.cpus_per_trial, x.gpus_per_trial),
            capacity.describe(x.cpus_per_trial, x.gpus_per_trial))


def search_batch(concurrency: int, regimes: int) -> int:
    """Suggestions needing training at a time per regime: the slots shared by the regimes searched
    side by side (rounded up, so no slot waits for want of a suggestion)."""
    return max(1, -(-concurrency // regimes))


def run_search(cfg: StudyConfig, regimes: list[str], ctx, callback, concurrency: int, resume: bool = False) -> None:
    """The regimes' LR searches side by side in one Ray Tune experiment (``study.search``): one
    Optuna study per regime (persisted in optuna.db), repeats answered without a trial."""
    import optuna
    from ray import tune

    from study.search import StudySearch, search_dirname
    from study.tuning import experiment_path, run_experiment

    storage = f"sqlite:///{cfg.study_dir / 'optuna.db'}"
    if resume and not tune.Tuner.can_restore(experiment_path(cfg, "search")):
        # the driver died before Tune saved the search: start it again, Optuna studies included
        names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
        for name in {optuna_study_name(cfg.execution.name, r) for r in regimes} & names:
            optuna.delete_study(study_name=name, storage=storage)
    searcher = StudySearch(cfg, regimes, search_batch(concurrency, len(regimes)), concurrency, callback)
    run_experiment(cfg, "search", ctx, callback, concurrency,
                   {"search_alg": searcher, "num_samples": cfg.search.num_samples * len(regimes),
                    "trial_dirname_creator": search_dirname}, resume=resume)


def close_orphans_of(cfg: StudyConfig, regime: str) -> None:
    """Once a regime's search is complete, settle its Optuna trials still RUNNING: one whose trial
    has a row (it finished while the driver was down) gets its value; the rest are suggestions a
    killed driver made but never ran, marked FAIL.  So COMPLETE trials match the rows exactly."""
    import optuna

    from trainables.record_store import load_records
    from study.search import search_values
    storage = f"sqlite:///{cfg.study_dir / 'optuna.db'}"
    study = optuna.load_study(study_name=optuna_study_name(cfg.execution.name, regime), storage=storage)
    values = search_values(load_records(cfg.study_dir), regime)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.number in values:
            study.tell(t.number, values[t.number])
        else:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)


def run_study(cfg: StudyConfig, search: bool = True) -> int:
    """The search (unless ``search`` is False: a finished study's confirmation only), the
    confirmation (unless ``--no-confirm``), the tables, the report and the summary.  With
    ``--resume``, finished parts are skipped and interrupted experiments continue.

    A write that cannot succeed (a full disk, a read-only folder, a failing device: the driver's
    own, or a trial's, which stops the study at once instead of being retried) ends the study with
    one line naming it and exit status 1; every file is written whole or not at all, and
    ``--resume`` continues once the cause is fixed."""
    try:
        return _run_study(cfg, search)
    except BaseException as e:  # noqa: BLE001 - only write failures are caught, the rest re-raised
        why = storage_failure(e)
        if why is None:
            raise
        return _stopped_by(cfg, why)


def resume_command(cfg: StudyConfig) -> str:
    x = cfg.execution
    return f"python -m study.{cfg.kind} --resume --name {x.name} --root {Path(x.root)}"


def _stopped_by(cfg: StudyConfig, wall: str) -> int:
    """A write that cannot succeed: one line naming it and how to continue; exit status 1."""
    print(f"error: the study stopped: {wall}; once that is fixed, continue with {resume_command(cfg)}", file=sys.stderr)
    return 1


class _Held:
    """What a driver holds on its study: the lock on its folder, and the lease on its shared storage
    where that is elsewhere (``study.lock``)."""

    def __init__(self, lock, lease):
        self.lock, self.lease = lock, lease

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()
        self.lock.release()


def _hold_study(cfg: StudyConfig, new: bool) -> _Held | None:
    """Hold the study for the driver's whole life, or refuse in one line (None: exit status 2) with
    nothing written: a new study's folder is made for its lock and removed again if refused."""
    import _thread
    import shutil

    from study.lock import DriverLock, StudyInUse, StudyLease, describe
    from trainables.storage import Storage
    study_dir, lock, lease = cfg.study_dir, None, None
    try:
        if new:
            study_dir.mkdir(parents=True)
        lock = DriverLock.acquire(study_dir)
        if cfg.shared_root != str(study_dir):  # other machines' drivers cannot see the folder's lock
            # should another driver take the lease (this one stalled past its TTL), stop as at Ctrl-C
            lease = StudyLease.acquire(Storage(cfg.shared_root), cfg.execution.name, on_lost=_thread.interrupt_main)
    except StudyInUse as e:
        if lock is not None:
            lock.release()
        if new:
            shutil.rmtree(study_dir, ignore_errors=True)
        print(f"error: {e}", file=sys.stderr)
        return None
    for held, how in ((lock.took_over, "ended without releasing it"),
                      (lease and lease.took_over, f"stopped renewing its lease {lease and lease.location}")):
        if held:
            print(f"taking the study over from {describe(held)}: that driver {how}", flush=True)
    return _Held(lock, lease)


def _run_study(cfg: StudyConfig, search: bool) -> int:
    t0 = time.time()
    quiet_ray_env()
    quiet_logs()
    held = _hold_study(cfg, new=not cfg.execution.resume and search)
    if held is None:
        return 2
    try:
        return _run_held(cfg, search, t0)
    finally:
        held.release()


def _run_held(cfg: StudyConfig, search: bool, t0: float) -> int:
    """The study, once this driver holds it: announced, its runtime opened (MLflow, Ray), its phases
    run (search, confirmation), then finalised and summed up."""
    from study.callbacks import DeterministicFailure
    driver = _Driver.open(cfg, _announce(cfg, search), t0)
    status, failure, wall = "FAILED", None, None
    try:
        status = _run_phases(cfg, driver, search)
    except DeterministicFailure as e:
        failure = str(e)
    except KeyboardInterrupt:
        status = "KILLED"
        print(f"interrupted: the tables hold the trials finished so far; continue with\n  {resume_command(cfg)}",
              file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - the driver's own write failures; the rest re-raised
        if storage_failure(e) is None:
            raise
        wall = storage_failure(e)
    finally:
        driver.close()
        if wall is None:  # with a full disk the finalisation would only run into it again
            try:
                # a driver's record copy found damaged on the way (set aside, its trial not done) is
                # recorded again from the trial's own copy
                driver.callback().catch_up()
                summary, report = _finalise(cfg, driver.tracker, status, t0)
            except Exception as e:  # noqa: BLE001
                if storage_failure(e) is None:
                    raise
                wall = storage_failure(e)
    if wall is not None:
        return _stopped_by(cfg, wall)
    _sum_up(cfg, driver, summary, report, t0)
    if failure:
        print(f"error: the study stopped: {failure}", file=sys.stderr)
        return 1
    return 0 if status == "FINISHED" else 130


def _announce(cfg: StudyConfig, search: bool) -> str:
    """The study's first line (and its study.json, when new); returns its hash."""
    x, s, study_dir = cfg.execution, cfg.search, cfg.study_dir
    if x.resume or not search:
        print(f"Study {x.name}: " + ("resuming in " if x.resume else "confirmation of the finished search in ")
              + str(study_dir), flush=True)
        return json.loads((study_dir / "study.json").read_text())["study_hash"]
    study_hash = cfg.study_hash()
    write_study_json(cfg, study_hash)
    own = {r: s.space(r) for r in cfg.regimes if get_regime(r).lr_range}  # regimes with a range of their own
    print(f"Study {x.name}: regimes {', '.join(cfg.regimes)}, {s.num_samples} trials each, "
          f"LR {s.lr_min:g}..{s.lr_max:g}"
          + "".join(f" ({r}: {sp.lr_min:g}..{sp.lr_max:g})" for r, sp in own.items())
          + (f" on {s.lr_grid} points per decade" if s.lr_grid else " (continuous)")
          + f"\nfolder {study_dir}", flush=True)
    return study_hash


class _Driver:
    """What the study's phases run on: the MLflow tracker, Ray (up to ``concurrency`` trials at
    once), the trials' context, and a ``StudyCallback`` for each phase (``callback``)."""

    def __init__(self, cfg: StudyConfig, study_hash: str, tracker, ctx, concurrency: int, restore_logs):
        self.cfg, self.study_hash, self.tracker, self.ctx = cfg, study_hash, tracker, ctx
        self.concurrency, self._restore_logs = concurrency, restore_logs

    @classmethod
    def open(cls, cfg: StudyConfig, study_hash: str, t0: float) -> "_Driver":
        """The data cached, then MLflow and Ray started side by side; their lines printed."""
        import ray

        from study.runtime import DRIVER_LOG, ray_output_to, start_ray
        from study.tracking import MlflowTracker
        from trainables.data import load_splits
        from trainables.trainable import TrialContext
        x, d, study_dir = cfg.execution, cfg.data, cfg.study_dir
        load_splits(d.dataset, d.data_dir, d.data_seed, d.val_fraction, d.data_seed)  # generate/cache once, here
        uri = x.mlflow_uri or f"sqlite:///{study_dir / 'mlflow.db'}"

        def open_tracking():
            tracker = MlflowTracker(uri, x.name, study_dir / "mlartifacts")
            tracker.start_parent(x.name, {**cfg.results_settings(), "study_hash": study_hash})
            return tracker
        # MLflow's import and its database's schema set-up (about 3 s) run while Ray starts its processes
        with ThreadPoolExecutor(max_workers=1) as pool:
            tracking = pool.submit(open_tracking)
            resources = start_ray(x.address, x.num_cpus)
            restore_logs = ray_output_to(study_dir / DRIVER_LOG)  # the screen gets one line per failed trial
            try:
                tracker = tracking.result()
            except BaseException:
                ray.shutdown()
                restore_logs()
                raise
        print(f"MLflow: {uri} (experiment {x.name})", flush=True)
        concurrency, source = max_concurrent(cfg)
        print(f"Ray: {'joined ' + x.address if x.address else 'local runtime'} with {resources.get('CPU', 0):g} CPUs, "
              f"{resources.get('GPU', 0):g} GPUs; up to {concurrency} trials at once ({source})", flush=True)
        ctx = TrialContext(x.name, str(study_dir), cfg.pipeline, x.cpus_per_trial, x.gpus_per_trial,
                           x.checkpoint_every, cfg.shared_root, x.plugins)
        return cls(cfg, study_hash, tracker, ctx, concurrency, restore_logs)

    def callback(self, progress=None):
        from study.callbacks import Progress, StudyCallback
        return StudyCallback(self.cfg.execution.name, self.cfg.study_dir, self.study_hash, self.tracker,
                             progress or Progress({}), self.cfg.pipeline.flat(), self.ctx.shared)

    def close(self) -> None:
        import ray
        ray.shutdown()
        self._restore_logs()


def _run_phases(cfg: StudyConfig, driver: _Driver, search: bool) -> str:
    """Records left by an interrupted run, the search (unless ``search`` is False), the confirmation
    (unless --no-confirm); "FINISHED", or raises (KeyboardInterrupt when stopped, as Tune is on
    Ctrl-C; DeterministicFailure)."""
    resume = cfg.execution.resume
    if resume:
        caught = driver.callback().catch_up()
        if caught:
            print(f"{caught} finished trials recorded that the interrupted run had not", flush=True)
    if search:
        _search_phase(cfg, driver, resume)
    if cfg.confirmation.confirm:  # the callbacks keep the tables current: best LRs come from them
        if not run_confirmation(cfg, driver.ctx, driver.callback, driver.concurrency, resume=resume):
            raise KeyboardInterrupt
    return "FINISHED"


def _search_phase(cfg: StudyConfig, driver: _Driver, resume: bool) -> None:
    """The regimes' searches, those not done before, side by side; then their Optuna trials settled."""
    from study.callbacks import DeterministicFailure, Progress
    s = cfg.search
    runs = s.num_samples * s.search_seeds  # records: one per trial and seed
    cb = driver.callback(Progress({r: runs for r in cfg.regimes}))
    done = cb.search_runs()
    todo = [r for r in cfg.regimes if done[r] < runs]
    if not todo:
        print(f"--- search: all {s.num_samples} trials of every regime done before", flush=True)
    else:
        print(f"--- search: {', '.join(todo)} side by side, {s.num_samples} trials each"
              + (f" of {s.search_seeds} seeds" if s.search_seeds > 1 else "")
              + f", {search_batch(driver.concurrency, len(todo))} at a time each"
              + "".join(f"; {r}: {done[r]} runs done before" for r in todo if done[r]), flush=True)
        run_search(cfg, todo, driver.ctx, cb, driver.concurrency, resume)
        cb.tables.flush()
        if cb.failure:
            raise DeterministicFailure(cb.failure)
        after = cb.search_runs()
        if any(after[r] < runs for r in todo):  # Tune stops gracefully on Ctrl-C
            raise KeyboardInterrupt
    for regime in cfg.regimes:
        # also when every trial was done before: the last may have finished while the driver was
        # down, its Optuna trial still RUNNING
        close_orphans_of(cfg, regime)


def _sum_up(cfg: StudyConfig, driver: _Driver, summary: str, report, t0: float) -> None:
    """The summary, the artifacts rebuilt on the way, and where everything is."""
    from study.runtime import DRIVER_LOG
    from trainables.artifacts import ArtifactStore
    x, study_dir = cfg.execution, cfg.study_dir
    print(summary)
    for name in ArtifactStore(driver.ctx.artifact_root).damaged_since(t0):  # the trials' lines reach only Ray's logs
        print(f"artifact {name.rsplit('-', 2)[0]} was found damaged and computed again (kept in "
              f"artifacts/damaged/{name})")
    log = study_dir / DRIVER_LOG
    print(f"\nResults: {study_dir / 'results'}  |  report: {report.html}"
          + (f"  |  Ray's log: {log}" if log.exists() and log.stat().st_size else "")
          + (f"\nCompare the regimes in the MLflow UI: python -m study.ui {study_dir}"
             f"\nOptuna's view of the searches:       python -m study.ui {study_dir} --optuna"
             if not x.mlflow_uri else f"\nMLflow: {x.mlflow_uri} (experiment {x.name})"))


def _finalise(cfg: StudyConfig, tracker, status: str, t0: float):
    """The tables, the report, the summary and the MLflow parent run; (summary, report)."""
    from analysis.report import build_report
    from analysis.summary import best_per_regime, format_summary, read_tables
    from analysis.tables import write_tables
    study_dir = cfg.study_dir
    write_tables(study_dir)
    trials, epochs = read_tables(study_dir)
    report = build_report(study_dir, cfg.confirmation.equivalence_margin)
    summary = format_summary(trials, epochs, time.time() - t0, report.verdict_lines,
                             report.contrasts, report.study_kind, report.efficiency)
    with atomic_path(study_dir / "summary.txt") as tmp:
        tmp.write_text(summary + "\n")
    if status == "FINISHED":  # every trial is recorded: a run without a record will never finish
        tracker.drop_unrecorded(set(trials["trial_id"]))
    best = best_per_regime(trials[trials["phase"] == "search"])
    metrics = {f"{r['regime']}/{k}": float(r[k]) for _, r in best.iterrows()
               for k in ("best_lr", "best_val_acc", "test_acc") if not math.isnan(r[k])}
    files = [(study_dir / "summary.txt", None), (study_dir / "study.json", None),
             (study_dir / "results" / "trials.parquet", "results"),
             (study_dir / "results" / "epochs.parquet", "results"),
             (report.markdown, "report"), (report.html, "report"),
             *((f, "report/figures") for f in report.figures)]
    tracker.finish_parent(metrics, files, status)
    return summary, report


def run_confirmation(cfg: StudyConfig, ctx, callback, concurrency: int, out=sys.stdout,
                     resume: bool = False) -> bool:
    """Run every confirmation trial (with ``resume``: those not done yet): the first look (candidate
    and fixed LRs on ``--confirm-seeds`` fresh seeds), each later look for the comparisons still
    open (``analysis.sequential``), then the sparsity sweep at each regime's picked LR; True when
    all finished.  Each look is a Tune experiment of its own (``ray/confirm``, ``ray/confirm-2``,
    ...); what it trains follows from the records of the looks before, so a resumed study finds
    the same looks again."""
    from analysis.report import replay
    from analysis.summary import read_tables
    from analysis.tables import write_tables

    c = cfg.confirmation
    looks = plan(cfg)
    write_tables(cfg.study_dir)  # from every record on disk: the candidates come from all search trials
    trials, _ = read_tables(cfg.study_dir)
    lrs = candidate_lrs(trials, c.candidates)
    first = confirm_specs(cfg, lrs)
    sequential = (f"; then {c.confirm_seeds} more at each look for the comparisons not decided, up to "
                  f"{c.cap} ({len(looks.looks)} looks, {c.alpha_spending} spending)"
                  if len(looks.looks) > 1 else "")
    print(f"--- confirmation, look 1: {sum(len(s.seeds) for s in first)} runs ({len(first)} trials of "
          f"{c.confirm_seeds} seeds {confirm_seeds(cfg)}, each trained together){sequential}; candidate LRs "
          + "; ".join(f"{r} " + ", ".join(f"{lr:.3g}" for lr in v) for r, v in lrs.items())
          + (f"; fixed LRs {c.fixed_small_lr:g} and {c.fixed_large_lr:g}" if c.fixed else ""), file=out, flush=True)

    def stage(name: str, specs: list) -> bool:
        return _confirm_stage(cfg, ctx, callback, concurrency, name, specs, out, resume)

    if not stage("confirm", first):
        return False
    shown: set[tuple] = set()
    while True:
        write_tables(cfg.study_dir)
        trials = read_tables(cfg.study_dir)[0]
        state = replay(trials, c.equivalence_margin, cfg.contrasts, cfg.kind, looks)
        _print_look(state.comparisons, shown, out)
        nxt = state.next_look()
        if nxt is None:
            break
        k, configs = nxt
        specs = look_specs(cfg, looks.new_seeds(k), configs)
        print(f"--- confirmation, look {k + 1} of {len(looks.looks)}: {len(looks.new_seeds(k))} more seeds "
              f"({looks.new_seeds(k)[0]}..{looks.new_seeds(k)[-1]}) for "
              + ", ".join(f"{r} {cond} {lr:.3g}" for r, cond, lr in configs), file=out, flush=True)
        if not stage(f"confirm-{k + 1}", specs):
            return False
    sweep = sweep_specs(cfg, _print_picks(trials, out))
    if sweep:
        print(f"--- sparsity sweep: {sum(len(s.seeds) for s in sweep)} runs at the tuned LRs", file=out, flush=True)
    return stage("confirm-sweep", sweep) if sweep else True


def _confirm_stage(cfg: StudyConfig, ctx, callback, concurrency: int, name: str, specs: list, out,
                   resume: bool) -> bool:
    """One confirmation experiment (a look, or the sweep) of ``specs``, unless all were recorded
    before; True when every run it asks for is recorded."""
    from ray import tune

    from study.callbacks import DeterministicFailure, Progress
    from study.tuning import run_experiment
    from trainables.record_store import load_records
    totals: dict[str, int] = {}
    for spec in specs:
        totals[spec.group] = totals.get(spec.group, 0) + len(spec.seeds)
    cb = callback(Progress(totals, out))
    asked = {one for spec in specs for one in spec.per_seed()}  # a record's spec: one seed
    if asked - {r.spec for r in cb.records.values() if r.completed}:
        run_experiment(cfg, name, ctx, cb, concurrency, {"trial_dirname_creator": confirm_dirname},
                       {"spec": tune.grid_search([sp.as_config()["spec"] for sp in specs])}, resume)
    cb.tables.flush()
    if cb.failure:
        raise DeterministicFailure(cb.failure)
    # from disk: after Tune.restore the events go to Tune's own copy of the callback
    return not asked - {r.spec for r in load_records(cfg.study_dir)}


def _print_look(comparisons: list[dict], shown: set[tuple], out) -> None:
    """Each comparison's state after a look, open (its interval so far) or decided, unless it was
    ``shown`` so before (a comparison decided at an earlier look is not repeated)."""
    for row in comparisons:
        seen = (row["condition"], row["a"], row["b"], row["look"], row["state"])
        if seen in shown:
            continue
        shown.add(seen)
        print(f"    look {row['look']}: {row['condition']} {row['a']} vs {row['b']}: "
              + (f"open ({100 * row['diff']:+.1f} points, CI {100 * row['low']:.1f} to {100 * row['high']:.1f})"
                 if row["state"] == "open" else f"{row['verdict']} ({100 * row['diff']:+.1f} points)"),
              file=out, flush=True)


def _print_picks(trials, out) -> dict[str, float]:
    """Each regime's tuned LR among its candidates (``analysis.stats.candidates``), printed; returned."""
    from analysis.stats import candidates
    table = candidates(trials, shares=False)
    picked = {r["regime"]: r["lr"] for _, r in table[table["picked"]].iterrows()}
    for regime in table["regime"].unique():
        g = table[table["regime"] == regime]
        print(f"    {regime}: tuned LR {picked.get(regime, float('nan')):.3g} of "
              + ", ".join(f"{r['lr']:.3g} (val {r['val_mean']:.4f}, {r['n']} seeds)" for _, r in g.iterrows()),
              file=out, flush=True)
    return picked
