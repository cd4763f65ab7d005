"""Driver loss: the study process killed with SIGKILL mid-run, then --resume: complete results,
every trial exactly once in Parquet, MLflow and Optuna."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter

import pyarrow.parquet as pq

from tests.conftest import ROOT, assert_each_trial_once, kill_driver, run_cli

N = 4
REGIMES = ("winning_ticket", "random_reinit")


def test_sigkilled_study_resumes_to_complete_results(tmp_path, ray_env, data_dir):
    root = tmp_path / "s"
    args = ["--num-samples", str(N), "--regimes", ",".join(REGIMES), "--epochs", "8", "--rounds", "2",
            "--lr-grid", "4", "--lr-min", "0.01", "--lr-max", "0.3", "--startup-trials", "2",
            "--checkpoint-every", "1", "--confirm-seeds", "2", "--max-confirm-seeds", "2", "--candidates", "1", "--no-sweep", "--no-fixed",
            "--root", str(root), "--name", "killed", "--data-dir", data_dir, "--num-cpus", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "study.lottery", *args], cwd=ROOT, env=ray_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    records = root / "killed" / "trial-records"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(records.glob("*.json"))) < 3:  # mid-way through the first regime
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    # a second driver on the running study is refused before it writes anything, naming the holder
    t0 = time.time()
    second = run_cli(["--resume", "--root", str(root), "--name", "killed", "--num-cpus", "2"], ray_env, timeout=60)
    assert second.returncode == 2 and second.stdout == "", second.stdout[-2000:] + second.stderr[-2000:]
    assert len(second.stderr.strip().splitlines()) == 1 and time.time() - t0 < 30
    assert "in use by another driver" in second.stderr and f"process {proc.pid}, since " in second.stderr
    kill_driver(proc, ray_env["RAY_TMPDIR"])
    before = len(list(records.glob("*.json")))
    assert 3 <= before < N * len(REGIMES)

    r = run_cli(["--resume", "--root", str(root), "--name", "killed", "--num-cpus", "2"], ray_env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.startswith("taking the study over from host ") and f"process {proc.pid}," in r.stdout.splitlines()[0]
    study = root / "killed"
    assert (study / "driver.lock").read_text() == ""  # released at the end
    trials = assert_each_trial_once(study, {r: N for r in REGIMES}, len(REGIMES) * 1 * 2)  # tuned only, two seeds
    epochs = pq.read_table(study / "results" / "epochs.parquet").to_pandas()
    final = epochs[epochs.stage == "final"]
    per_trial = final.groupby("trial_id")["epoch"].apply(list)
    assert all(v == list(range(1, 9)) for v in per_trial), "an epoch lost or duplicated"
    assert set(per_trial.index) == set(trials["trial_id"])

    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("killed").experiment_id], max_results=1000)
    assert len([x for x in runs if x.data.tags.get("phase") == "study"]) == 1
    for c in runs:
        if c.data.tags.get("mlflow.parentRunId"):
            hist = client.get_metric_history(c.info.run_id, "val_acc")
            assert sorted(m.step for m in hist) == list(range(1, 9))

def test_a_run_that_no_trial_will_finish_is_dropped_at_the_end(tmp_path):
    """A killed driver may have started a trial (and its MLflow run) after Tune's last snapshot: the
    resumed study never runs it again, so once every trial is recorded its run is deleted; a run
    whose trial is recorded, or that is finished, stays."""
    from study.tracking import MlflowTracker
    from trainables.records import TrialRecord, TrialSpec
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "orphans", tmp_path / "mlartifacts")
    tracker.start_parent("orphans", {})
    spec = TrialSpec("winning_ticket", 0.1, (0,))
    runs = {t: tracker.start_child("orphans", t, spec, {}) for t in ("done", "recorded", "orphan")}
    tracker.finish_child(runs["done"], TrialRecord("orphans", "done", spec, {}, val_acc=0.5, test_acc=0.5))
    assert tracker.drop_unrecorded({"done", "recorded"}) == 1
    left = tracker.client.search_runs([tracker.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{tracker.parent_id}'")
    assert sorted(r.data.tags["trial_id"] for r in left) == ["done", "recorded"]


def test_a_study_killed_in_the_confirmations_second_look_resumes_there(tmp_path, ray_env, data_dir):
    """SIGKILL once the second look's first record is written (looks of 2 fresh seeds up to 6: with
    two seeds a look decides nothing), then --resume: the study continues at that look, and every
    run is once in the tables and MLflow; the looks trained are those the replay asks for."""
    root = tmp_path / "s"
    args = ["--num-samples", "2", "--regimes", ",".join(REGIMES), "--epochs", "3", "--rounds", "1",
            "--lr-grid", "2", "--lr-min", "0.03", "--lr-max", "0.3", "--startup-trials", "2",
            "--confirm-seeds", "2", "--max-confirm-seeds", "6", "--candidates", "1", "--no-sweep", "--no-fixed",
            "--root", str(root), "--name", "looks", "--data-dir", data_dir, "--num-cpus", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "study.lottery", *args], cwd=ROOT, env=ray_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    records = root / "looks" / "trial-records"
    deadline = time.time() + 300
    def in_second_look() -> bool:  # a record of look 2's seeds 3, 4
        from trainables.trainable import read_records
        return any(r.spec.phase == "confirm" and r.spec.seed in (3, 4)
                   for p in records.glob("[!.]*.json") for r in read_records(p.read_bytes()))
    while time.time() < deadline and not in_second_look():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.1)
    kill_driver(proc, ray_env["RAY_TMPDIR"])
    assert not (root / "looks" / "summary.txt").exists()  # it stopped mid-way

    r = run_cli(["--resume", "--root", str(root), "--name", "looks", "--num-cpus", "2"], ray_env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = root / "looks"
    trials = pq.read_table(study / "results" / "trials.parquet").to_pandas()
    confirm = trials[trials.phase == "confirm"]
    assert trials["trial_id"].is_unique and set(trials["status"]) == {"completed"}
    assert not confirm.duplicated(["regime", "condition", "lr", "seed", "prune_round"]).any()  # each run once

    from analysis.design import study_plan
    from analysis.report import replay
    state = replay(trials, 1.0, [REGIMES], "lottery", study_plan(study))
    (tuned,) = state.comparisons
    assert tuned["state"] in ("decided", "cap") and tuned["look"] >= 2 and state.next_look() is None
    for regime in REGIMES:  # the seeds of every look up to the deciding one, nothing more
        assert sorted(confirm[confirm.regime == regime].seed) == list(range(1, 2 * tuned["look"] + 1))
    assert f"look {tuned['look']} of 3" in r.stdout

    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("looks").experiment_id], max_results=1000)
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId")]
    assert Counter(c.data.tags["trial_id"] for c in children) == Counter({t: 1 for t in trials["trial_id"]})


def test_one_driver_per_study_lock(tmp_path):
    """The driver lock: a second holder is refused naming the first; a released lock is free; a lock
    file naming a holder that is gone (it never released) is taken over, and says whom from."""
    import pytest

    from study.lock import DriverLock, StudyInUse
    first = DriverLock.acquire(tmp_path)
    assert first.took_over is None
    with pytest.raises(StudyInUse, match=f"process {os.getpid()}, since "):
        DriverLock.acquire(tmp_path)
    first.release()
    again = DriverLock.acquire(tmp_path)
    assert again.took_over is None
    os.close(again.fd)  # the process "dies" holding it: the kernel frees the lock, the holder line stays
    dead = DriverLock.acquire(tmp_path)
    assert dead.took_over["pid"] == os.getpid() and dead.took_over["host"]
    dead.release()
