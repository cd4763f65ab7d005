"""Driver loss: the study process killed with SIGKILL mid-run (on a real object store, its artifacts
damaged meanwhile; or in the confirmation's second look), then --resume: complete results, every
trial exactly once in Parquet, MLflow and Optuna; and one driver per study."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter

import pyarrow.parquet as pq

from tests.conftest import ROOT, assert_each_trial_once, kill_driver, run_cli

N = 4
EPOCHS = 6
REGIMES = ("winning_ticket", "random_reinit")


def test_sigkilled_study_resumes_to_complete_results(tmp_path, ray_env, data_dir, s3_server, monkeypatch, capsys):
    """A study sharing its files through a real S3 bucket (``--storage s3://...?endpoint_override=...``,
    the keys in the environment).  While it runs, a second driver on its folder is refused by the
    folder's lock, and one elsewhere (its own folder, the same storage) by the lease, each in one line
    naming the holder, writing nothing.  Killed with SIGKILL mid-search, every artifact in the bucket
    cut to half its size, then --resume: it takes the lock and the lease over at once (their holder's
    process is gone), sets the damaged artifacts it loads aside, computes them again, and completes:
    every trial once in Parquet, MLflow and Optuna, every epoch once."""
    from study.lottery import main
    from tests.test_storage_s3 import use_s3_env
    from trainables.storage import Storage
    use_s3_env(s3_server, "query", monkeypatch)
    env = {**ray_env, **{k: v for k, v in os.environ.items() if k.startswith("AWS_")}}
    storage = s3_server.uri(f"killed-{os.getpid()}-{time.time_ns()}/studies", query=True)
    root = tmp_path / "s"
    args = ["--num-samples", str(N), "--regimes", ",".join(REGIMES), "--epochs", str(EPOCHS), "--rounds", "2",
            "--lr-grid", "4", "--lr-min", "0.01", "--lr-max", "0.3", "--startup-trials", "2",
            "--checkpoint-every", "1", "--confirm-seeds", "2", "--max-confirm-seeds", "2", "--candidates", "1",
            "--no-sweep", "--no-fixed", "--storage", storage, "--data-dir", data_dir, "--num-cpus", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "study.lottery", *args, "--root", str(root), "--name", "killed"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    shared = Storage(Storage(storage).join("killed"))
    records = shared.join("trial-records")
    deadline = time.time() + 300
    while time.time() < deadline and len(shared.list_names(records, ".json")) < 2:  # mid-way through the search
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    lease = json.loads(shared.read_text(shared.join("driver.lease")))
    assert lease["pid"] == proc.pid
    # second drivers (in this process: quick, so that the first is still mid-search after them)
    for where, flags in (("lock", ["--resume", "--root", str(root), "--name", "killed", "--num-cpus", "2"]),
                         ("lease", [*args, "--root", str(tmp_path / "elsewhere"), "--name", "killed"])):
        capsys.readouterr()
        assert main(flags) == 2, where
        said = capsys.readouterr()
        assert said.out == "" and len(said.err.strip().splitlines()) == 1, (where, said)
        assert f"in use by another driver: host {socket.gethostname()}, process {proc.pid}, since " in said.err
    assert not (tmp_path / "elsewhere" / "killed").exists()
    assert json.loads(shared.read_text(shared.join("driver.lease")))["token"] == lease["token"]
    kill_driver(proc, ray_env["RAY_TMPDIR"])
    before = len(shared.list_names(records, ".json"))
    assert 2 <= before < N * len(REGIMES), "the search ended before the kill"
    cut = []
    for name in shared.list_names(shared.join("artifacts")):
        tensors = shared.join("artifacts", name, "tensors.pt")
        if shared.exists(tensors):
            data = shared.read_bytes(tensors)
            shared.write_bytes(tensors, data[:len(data) // 2])
            cut.append(name)
    assert cut

    r = run_cli(["--resume", "--root", str(root), "--name", "killed", "--num-cpus", "2"], env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    took = r.stdout.splitlines()[:2]
    assert all(ln.startswith(f"taking the study over from host {socket.gethostname()}, process {proc.pid}, ")
               for ln in took), took
    assert took[0].endswith("ended without releasing it") and "stopped renewing its lease" in took[1]
    rebuilt = [ln for ln in r.stdout.splitlines() if ln.startswith("artifact ") and "found damaged" in ln]
    assert rebuilt and all(ln.split()[1] in cut for ln in rebuilt), r.stdout[-3000:]
    assert set(shared.list_names(shared.join("artifacts", "damaged"))) >= {
        ln.split("artifacts/damaged/")[1].rstrip(")") for ln in rebuilt}
    study = root / "killed"
    assert (study / "driver.lock").read_text() == "" and not shared.exists(shared.join("driver.lease"))  # released
    trials = assert_each_trial_once(study, {r: N for r in REGIMES}, len(REGIMES) * 1 * 2)  # tuned only, two seeds
    epochs = pq.read_table(study / "results" / "epochs.parquet").to_pandas()
    final = epochs[epochs.stage == "final"]
    per_trial = final.groupby("trial_id")["epoch"].apply(list)
    assert all(v == list(range(1, EPOCHS + 1)) for v in per_trial), "an epoch lost or duplicated"
    assert set(per_trial.index) == set(trials["trial_id"])

    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("killed").experiment_id], max_results=1000)
    assert len([x for x in runs if x.data.tags.get("phase") == "study"]) == 1
    for c in runs:
        if c.data.tags.get("mlflow.parentRunId"):
            hist = client.get_metric_history(c.info.run_id, "val_acc")
            assert sorted(m.step for m in hist) == list(range(1, EPOCHS + 1))

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
        from trainables.records import parse_records
        return any(r.spec.phase == "confirm" and r.spec.seed in (3, 4)
                   for p in records.glob("[!.]*.json") for r in parse_records(p.read_bytes()))
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
