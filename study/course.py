"""The course of a study, shared by ``study.lottery``, ``study.rethinking`` and ``study.confirm``:
the search (one Optuna study per regime driving Ray Tune trials), the confirmation on fresh seeds,
and the finalisation (tables, report, summary, the MLflow parent run).

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
from typing import Any

from study.confirmation import best_lrs, confirm_dirname, confirm_seeds, confirm_specs
from study.options import StudyOptions, config_hash, optuna_study_name, search_config
from study.runtime import quiet_logs, quiet_ray_env


def trial_params(opts: StudyOptions) -> dict[str, object]:
    """Params every child run carries (the pipeline settings that vary between studies)."""
    d = opts.pipeline.as_dict()
    d.pop("data_dir")
    return {k: ("" if v is None else v) for k, v in d.items()}


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


def write_study_json(opts: StudyOptions, study_hash: str) -> None:
    import ray
    import torch
    kind = opts.args.study_kind
    info = {"name": opts.args.name, "study_hash": study_hash, "config": search_config(opts),
            "study_kind": kind, "contrasts": [list(c) for c in opts.contrasts],
            "command": [sys.executable, "-m", f"study.{kind}", *sys.argv[1:]],
            "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(opts.args).items()},
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__},
            "code": code_revision(),
            "created_at": time.time()}
    (opts.study_dir / "study.json").write_text(json.dumps(info, indent=1, default=str))


def max_concurrent(opts: StudyOptions, resources: dict[str, float]) -> int:
    a = opts.args
    if a.max_concurrent:
        return a.max_concurrent
    n = int(resources.get("CPU", 1) // a.cpus_per_trial)
    if a.gpus_per_trial > 0:
        n = min(n, int(resources.get("GPU", 0) // a.gpus_per_trial))
    return max(1, n)


def run_regime(opts: StudyOptions, regime: str, ctx, callback, concurrency: int, resume: bool = False) -> None:
    """One regime's LR search: an Optuna study (persisted in optuna.db) driving Ray Tune trials."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from search_spaces.lottery import define_by_run
    from study.tuning import experiment_path, run_experiment

    a = opts.args
    storage = optuna.storages.RDBStorage(f"sqlite:///{opts.study_dir / 'optuna.db'}")
    name = optuna_study_name(a.name, regime)
    from ray import tune
    if resume and not tune.Tuner.can_restore(experiment_path(opts, regime)):
        # the driver died before Tune saved this regime: start it again, Optuna study included
        if name in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
            optuna.delete_study(study_name=name, storage=storage)
    searcher = OptunaSearch(
        space=define_by_run(opts.space_for(regime), {"regime": regime, "seed": a.seed, "phase": "search"}),
        metric="val_acc", mode="max",
        sampler=optuna.samplers.TPESampler(seed=a.seed, n_startup_trials=a.startup_trials),
        study_name=name, storage=storage)
    run_experiment(opts, regime, ctx, callback, concurrency,
                   {"search_alg": searcher, "num_samples": a.num_samples}, resume=resume)


def close_orphans_of(opts: StudyOptions, regime: str) -> None:
    """Once a regime's search is complete, settle its Optuna trials still RUNNING: one whose trial
    has a row (it finished while the driver was down) gets its value; the rest are suggestions a
    killed driver made but never ran, marked FAIL.  So COMPLETE trials match the rows exactly."""
    import optuna

    from analysis.tables import load_records
    storage = f"sqlite:///{opts.study_dir / 'optuna.db'}"
    study = optuna.load_study(study_name=optuna_study_name(opts.args.name, regime), storage=storage)
    values = {r.get("optuna_trial"): r["val_acc"] for r in load_records(opts.study_dir)
              if r["regime"] == regime and r.get("phase", "search") == "search" and r.get("status") == "completed"}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.number in values:
            study.tell(t.number, values[t.number])
        else:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)


def run_study(opts: StudyOptions, search: bool = True) -> int:
    """The search (unless ``search`` is False: a finished study's confirmation only), the
    confirmation (unless ``--no-confirm``), the tables, the report and the summary.  With
    ``--resume``, finished parts are skipped and interrupted experiments continue."""
    a = opts.args
    resume = bool(getattr(a, "resume", False))
    t0 = time.time()
    quiet_ray_env()
    quiet_logs()
    study_dir = opts.study_dir
    if resume:
        study_hash = json.loads((study_dir / "study.json").read_text())["study_hash"]
        print(f"Study {a.name}: resuming in {study_dir}", flush=True)
    elif search:
        study_hash = config_hash(opts)
        study_dir.mkdir(parents=True)
        write_study_json(opts, study_hash)
        print(f"Study {a.name}: regimes {', '.join(opts.regimes)}, {a.num_samples} trials each, "
              f"LR {a.lr_min:g}..{a.lr_max:g}"
              + "".join(f" ({r}: {s.lr_min:g}..{s.lr_max:g})" for r, s in (opts.lr_spaces or {}).items())
              + (f" on {a.lr_grid} points per decade" if a.lr_grid else " (continuous)")
              + f"\nfolder {study_dir}", flush=True)
    else:
        study_hash = json.loads((study_dir / "study.json").read_text())["study_hash"]
        print(f"Study {a.name}: confirmation of the finished search in {study_dir}", flush=True)

    from trainables.data import load_splits
    load_splits(a.dataset, a.data_dir, a.data_seed, a.val_fraction, a.data_seed)  # generate/cache once, here

    uri = a.mlflow_uri or f"sqlite:///{study_dir / 'mlflow.db'}"

    def open_tracking():
        from study.tracking import MlflowTracker
        tracker = MlflowTracker(uri, a.name, study_dir / "mlartifacts")
        tracker.start_parent(a.name, {**search_config(opts), "study_hash": study_hash})
        return tracker

    import ray

    from study.runtime import start_ray
    # MLflow's import and its database's schema set-up (about 3 s) run while Ray starts its processes
    with ThreadPoolExecutor(max_workers=1) as pool:
        tracking = pool.submit(open_tracking)
        resources = start_ray(a.address, a.num_cpus)
        try:
            tracker = tracking.result()
        except BaseException:
            ray.shutdown()
            raise
    print(f"MLflow: {uri} (experiment {a.name})", flush=True)

    from analysis.report import build_report
    from analysis.summary import best_per_regime, format_summary, read_tables
    from analysis.tables import write_tables
    from study.callbacks import DeterministicFailure, Progress, StudyCallback
    from trainables.trainable import TrialContext

    concurrency = max_concurrent(opts, resources)
    print(f"Ray: {'joined ' + a.address if a.address else 'local runtime'} with {resources.get('CPU', 0):g} CPUs, "
          f"{resources.get('GPU', 0):g} GPUs; up to {concurrency} trials at once", flush=True)
    ctx = TrialContext(a.name, str(study_dir), opts.pipeline, a.cpus_per_trial, a.gpus_per_trial,
                       a.checkpoint_every, opts.shared_root)
    shared = ctx.shared
    status, failure = "FAILED", None
    if resume:
        caught = StudyCallback(a.name, study_dir, study_hash, tracker, Progress({}), trial_params(opts),
                               shared).catch_up()
        if caught:
            print(f"{caught} finished trials recorded that the interrupted run had not", flush=True)
    try:
        if search:
            progress = Progress({r: a.num_samples for r in opts.regimes})
            for regime in opts.regimes:
                cb = StudyCallback(a.name, study_dir, study_hash, tracker, progress, trial_params(opts), shared)
                done = cb.finished_count(regime)
                if done >= a.num_samples:
                    print(f"--- {regime}: all {done} trials done before", flush=True)
                else:
                    print(f"--- {regime}: {a.num_samples} trials" + (f" ({done} done before)" if done else ""),
                          flush=True)
                    run_regime(opts, regime, ctx, cb, concurrency, resume)
                    cb.tables.flush()
                    if cb.failure:
                        raise DeterministicFailure(cb.failure)
                    if cb.finished_count(regime) < a.num_samples:  # Tune stops gracefully on Ctrl-C
                        raise KeyboardInterrupt
                # also when every trial was done before: the last may have finished while the driver
                # was down, its Optuna trial still RUNNING
                close_orphans_of(opts, regime)
        if not a.no_confirm:  # the callbacks keep the tables current: best LRs come from them
            if not run_confirmation(opts, ctx, tracker, study_hash, trial_params(opts), concurrency, resume=resume):
                raise KeyboardInterrupt
        status = "FINISHED"
    except DeterministicFailure as e:
        failure = str(e)
    except KeyboardInterrupt:
        status = "KILLED"
        print(f"interrupted: the tables hold the trials finished so far; continue with\n"
              f"  python -m study.lottery --resume --name {a.name} --root {Path(a.root)}", file=sys.stderr)
    finally:
        ray.shutdown()
        write_tables(study_dir)
        trials, epochs = read_tables(study_dir)
        report = build_report(study_dir, a.equivalence_margin)
        summary = format_summary(trials, epochs, time.time() - t0, report["verdict_lines"],
                                 report["contrasts"], report["study_kind"], report["efficiency"])
        (study_dir / "summary.txt").write_text(summary + "\n")
        best = best_per_regime(trials[trials["phase"] == "search"])
        metrics = {f"{r['regime']}/{k}": float(r[k]) for _, r in best.iterrows()
                   for k in ("best_lr", "best_val_acc", "test_acc") if not math.isnan(r[k])}
        files = [(study_dir / "summary.txt", None), (study_dir / "study.json", None),
                 (study_dir / "results" / "trials.parquet", "results"),
                 (study_dir / "results" / "epochs.parquet", "results"),
                 (report["markdown"], "report"), (report["html"], "report"),
                 *((f, "report/figures") for f in report["figures"])]
        tracker.finish_parent(metrics, files, status)
    print(summary)
    print(f"\nResults: {study_dir / 'results'}  |  report: {report['html']}"
          + (f"\nCompare the regimes in the MLflow UI: python -m study.ui {study_dir}"
             f"\nOptuna's view of the searches:       python -m study.ui {study_dir} --optuna"
             if not opts.args.mlflow_uri else f"\nMLflow: {uri} (experiment {opts.args.name})"))
    if failure:
        print(f"error: the study stopped: {failure}", file=sys.stderr)
        return 1
    return 0 if status == "FINISHED" else 130


def run_confirmation(opts: StudyOptions, ctx, tracker, study_hash: str, trial_params: dict[str, Any],
                     concurrency: int, out=sys.stdout, resume: bool = False) -> bool:
    """Run every confirmation trial (with ``resume``: those not done yet); True when all finished."""
    from ray import tune

    from analysis.summary import read_tables
    from analysis.tables import write_tables
    from study.callbacks import DeterministicFailure, Progress, StudyCallback, label
    from study.tuning import run_experiment

    a = opts.args
    write_tables(opts.study_dir)  # from every record on disk: the best LRs come from all search trials
    trials, _ = read_tables(opts.study_dir)
    best = best_lrs(trials)
    specs = confirm_specs(opts, best)
    totals: dict[str, int] = {}
    for s in specs:
        totals[label(s)] = totals.get(label(s), 0) + 1
    print(f"--- confirmation: {len(specs)} trials on seeds {confirm_seeds(opts)}; best LRs "
          + ", ".join(f"{r} {lr:.3g}" for r, lr in best.items())
          + ("" if a.no_fixed else f"; fixed LRs {a.fixed_small_lr:g} and {a.fixed_large_lr:g}"), file=out, flush=True)
    cb = StudyCallback(a.name, opts.study_dir, study_hash, tracker, Progress(totals, out), trial_params,
                       shared=ctx.shared)
    if cb.finished_count(phase="confirm") < len(specs):
        run_experiment(opts, "confirm", ctx, cb, concurrency,
                       {"trial_dirname_creator": confirm_dirname}, {"spec": tune.grid_search(specs)}, resume)
    cb.tables.flush()
    if cb.failure:
        raise DeterministicFailure(cb.failure)
    return cb.finished_count(phase="confirm") >= len(specs)
