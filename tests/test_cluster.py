"""The study on a Ray cluster it joins with --address (several local nodes, one machine):

- autoscaling: a head with no CPUs, worker nodes started by the (fake multi-node) autoscaler for the
  study's pending trials, and removed again once idle;
- node loss: the worker node running a trial killed mid-way; the trial goes on from its last
  checkpoint on another node, every epoch exactly once, one MLflow run per trial.

Each test starts and stops its own cluster in a private RAY_TMPDIR and leaves no Ray process behind.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from study.ui import free_port
from tests.conftest import ROOT

REGIMES = ("winning_ticket", "random_reinit")
N = 2  # trials per regime


def _args(root: Path, name: str, data_dir: str, address: str, epochs: int, *extra: str) -> list[str]:
    return ["--num-samples", str(N), "--regimes", ",".join(REGIMES), "--epochs", str(epochs), "--rounds", "1",
            "--lr-grid", "4", "--lr-min", "0.05", "--lr-max", "0.3", "--startup-trials", "1", "--no-confirm",
            "--data-dir", data_dir, "--checkpoint-every", "1", "--root", str(root), "--name", name,
            "--address", address, *extra]


def _start_cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "study.lottery", *args], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _stop(proc: subprocess.Popen | None) -> None:
    """A study still running when a test fails: end it (its own process group) before the cluster."""
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait(proc: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the study did not finish in time:\n" + log.read_text()[-4000:])
    return log.read_text()


def _use_env(monkeypatch, env: dict[str, str], keys) -> None:
    """This process starts the cluster's nodes: they must see the test's Ray environment too."""
    for k in keys:
        monkeypatch.setenv(k, env[k])


def _no_ray_left(ray_tmp: str, timeout: float = 30) -> list[str]:
    deadline = time.time() + timeout
    while True:
        left = subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True).stdout.split()
        if not left or time.time() > deadline:
            return left
        time.sleep(0.5)


def _check_complete(study: Path, epochs: int, out: str) -> tuple:
    """Every trial completed once, every final-training epoch recorded exactly once."""
    trials = pq.read_table(study / "results" / "trials.parquet").to_pandas()
    per_epoch = pq.read_table(study / "results" / "epochs.parquet").to_pandas()
    why = trials[["trial_id", "regime", "status", "error"]]
    assert trials["trial_id"].is_unique and set(trials["status"]) == {"completed"}, f"{why}\n{out[-3000:]}"
    assert Counter(trials["regime"]) == {r: N for r in REGIMES}, why
    final = per_epoch[per_epoch.stage == "final"]
    per_trial = final.groupby("trial_id")["epoch"].apply(list)
    assert set(per_trial.index) == set(trials["trial_id"])
    assert all(v == list(range(1, epochs + 1)) for v in per_trial), f"an epoch lost or duplicated: {dict(per_trial)}"
    return trials, per_epoch


BASE_ENV = ("RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE", "HOME", "PYTHONPATH")


def _autoscaling_config(path: Path, gcs_address: str) -> Path:
    config = {
        "cluster_name": "fake-test",
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.05,  # 3 s
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address,
                     "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "ray.worker.cpu": {"resources": {"CPU": 1, "object_store_memory": 100 * 1024 * 1024},
                               "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _alive_workers() -> list[dict]:
    import ray
    return [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]


def test_autoscaler_adds_workers_for_pending_trials_and_removes_them_when_idle(tmp_path, ray_env, data_dir,
                                                                              monkeypatch):
    import ray
    from ray._private.services import get_node_ip_address
    from ray.cluster_utils import Cluster

    env = {**ray_env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    _use_env(monkeypatch, env, (*BASE_ENV, "RAY_FAKE_CLUSTER", "AUTOSCALER_UPDATE_INTERVAL_S"))
    port = free_port("")
    address = f"{get_node_ip_address()}:{port}"
    config = _autoscaling_config(tmp_path / "autoscaler.yaml", address)
    cluster = Cluster(initialize_head=True, connect=True,
                      head_node_args=dict(num_cpus=0, include_dashboard=False, gcs_server_port=port,
                                          autoscaling_config=str(config)))
    proc = None
    try:
        assert cluster.address == address
        assert ray.cluster_resources().get("CPU", 0) == 0 and not _alive_workers()

        root, log = tmp_path / "s", tmp_path / "cli.log"
        proc = _start_cli(_args(root, "scaled", data_dir, address, 6, "--max-concurrent", "2",
                                "--cpus-per-trial", "1"), env, log)
        most_workers, most_cpus = 0, 0.0
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            most_workers = max(most_workers, len(_alive_workers()))
            most_cpus = max(most_cpus, ray.cluster_resources().get("CPU", 0))
            time.sleep(0.5)
        out = _wait(proc, log, timeout=max(1, deadline - time.time()))
        assert proc.returncode == 0, out[-4000:]
        assert "with 0 CPUs" in out, out[-4000:]  # it joined the empty cluster: the workers came for its trials
        _check_complete(root / "scaled", 6, out)
        assert 1 <= most_workers <= 2 and 1 <= most_cpus <= 2, (most_workers, most_cpus)

        deadline = time.time() + 90  # idle timeout 3 s, autoscaler update every 1 s
        while _alive_workers() and time.time() < deadline:
            time.sleep(1)
        assert not _alive_workers(), "idle worker nodes were not removed"
        assert ray.cluster_resources().get("CPU", 0) == 0
    finally:
        _stop(proc)
        ray.shutdown()
        cluster.shutdown()
    assert not _no_ray_left(ray_env["RAY_TMPDIR"])


def _mid_trial(study: Path, regime: str, epoch: int) -> Path | None:
    """The folder of a trial of ``regime`` that has checkpointed epoch ``epoch`` of its final training
    (with --checkpoint-every 1 and one checkpoint kept, checkpoint_<k> holds epoch k + 1)."""
    for d in (study / "ray" / regime).glob("*"):
        done = [int(c.name[11:]) for c in d.glob("checkpoint_*") if c.name[11:].isdigit()]
        if done and max(done) >= epoch - 1:
            return d
    return None


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = subprocess.run(["pgrep", "-P", str(todo.pop())], capture_output=True, text=True).stdout.split()
        out += map(int, kids)
        todo += map(int, kids)
    return out


def test_trial_survives_loss_of_its_node(tmp_path, ray_env, data_dir, monkeypatch):
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    _use_env(monkeypatch, ray_env, BASE_ENV)
    epochs = 30
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=dict(num_cpus=0, include_dashboard=False))
    frozen: list[int] = []
    proc = None
    try:
        first = cluster.add_node(num_cpus=1)  # the only node with a CPU: every trial starts here
        root, log = tmp_path / "s", tmp_path / "cli.log"
        study = root / "lost"
        proc = _start_cli(_args(root, "lost", data_dir, cluster.address, epochs, "--max-concurrent", "1",
                                "--max-failures", "3"), ray_env, log)
        deadline = time.time() + 300
        while time.time() < deadline and not _mid_trial(study, "winning_ticket", 3):
            assert proc.poll() is None, log.read_text()[-4000:]
            time.sleep(0.05)
        hit = _mid_trial(study, "winning_ticket", 3)
        assert hit, "no trial got mid-way in time:\n" + log.read_text()[-4000:]
        # The node hangs (its trial makes no progress while the replacement starts), then dies.
        raylet = first.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
        frozen = _descendants(raylet)
        subprocess.run(["kill", "-STOP", *map(str, frozen)], capture_output=True)
        cluster.add_node(num_cpus=1)
        cluster.remove_node(first, allow_graceful=False)
        subprocess.run(["kill", "-KILL", *map(str, frozen)], capture_output=True)
        out = _wait(proc, log)
        assert proc.returncode == 0, out[-4000:]
        trials, _ = _check_complete(study, epochs, out)
    finally:
        _stop(proc)
        if frozen:  # never leave a stopped process behind, whatever failed
            subprocess.run(["kill", "-KILL", *map(str, frozen)], capture_output=True)
        cluster.shutdown()
    assert not _no_ray_left(ray_env["RAY_TMPDIR"])

    assert "Trial task failed" in out, out[-4000:]
    hit_id = json.loads((hit / "result.json").read_text().splitlines()[0])["trial_id"]
    resumed = {}
    for t in trials["trial_id"]:
        rec = json.loads((study / "records" / f"{t}.json").read_text())
        if "resumed_from_epoch" in rec:
            resumed[t] = rec["resumed_from_epoch"]
    assert list(resumed) == [hit_id], (hit_id, resumed, out[-3000:])  # only the interrupted trial restarted
    assert 0 < resumed[hit_id] < epochs, resumed

    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lost")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId")]
    assert Counter(c.data.tags["trial_id"] for c in children) == Counter({t: 1 for t in trials["trial_id"]})
    for c in children:
        assert c.info.status == "FINISHED"
        hist = client.get_metric_history(c.info.run_id, "val_acc")
        assert sorted(m.step for m in hist) == list(range(1, epochs + 1))
