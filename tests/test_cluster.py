"""The study on a Ray cluster it joins with --address (several local nodes, one machine):

- capacity: what the cluster can grow to (its autoscaler's node types, or the nodes of a cluster
  without one) sets the default number of trials at once, and a trial that no node could hold is
  refused before the study folder exists;
- autoscaling: a head with no CPUs, worker nodes started by the (fake multi-node) autoscaler for the
  study's pending trials, as many as the default concurrency asks for, and removed again once idle;
- node loss: the worker node running a trial killed mid-way; the trial goes on from its last
  checkpoint on another node, every epoch exactly once, one MLflow run per trial.

Each test starts and stops its own cluster in a private RAY_TMPDIR and leaves no Ray process behind.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from study.preflight import BadFlag, check_cluster_resources
from study.runtime import (
    AUTOSCALER,
    FIXED,
    NODES_NOW,
    Capacity,
    NodeType,
    _autoscaling_config_path,
    _same_gcs,
    capacity_from_autoscaling_config,
    default_concurrency,
)
from study.ui import free_port
from tests.conftest import ROOT, assert_refused

REGIMES = ("winning_ticket", "random_reinit")
N = 2  # trials per regime


def _args(root: Path, name: str, data_dir: str, address: str, epochs: int, *extra: str) -> list[str]:
    return ["--num-samples", str(N), "--regimes", ",".join(REGIMES), "--epochs", str(epochs), "--rounds", "1",
            "--lr-grid", "4", "--lr-min", "0.05", "--lr-max", "0.3", "--startup-trials", "1", "--no-confirm",
            "--data-dir", data_dir, "--checkpoint-every", "1", "--root", str(root), "--name", name,
            "--address", address, *extra]


def _refusal_args(address: str, *extra: str) -> list[str]:
    """A study's flags for an in-process refusal (``assert_refused`` adds --root and --data-dir)."""
    return ["--num-samples", "1", "--regimes", ",".join(REGIMES), "--epochs", "1", "--rounds", "1", "--no-confirm",
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


HEAD0 = NodeType("head", 0, worker=False)


def test_default_concurrency_is_what_the_autoscaler_can_start():
    cpu, gpu = NodeType("cpu", 16, 0, 8), NodeType("gpu", 4, 1, 4)
    grown = Capacity(AUTOSCALER, (HEAD0, cpu, gpu), max_workers=12)
    assert default_concurrency(grown, 1, 0) == 8 * 16  # the GPU type is kept for GPU trials
    assert default_concurrency(grown, 1, 0.25) == 4 * 4
    assert default_concurrency(grown, 8, 1) == 1  # no node type holds one: at least 1
    assert default_concurrency(Capacity(AUTOSCALER, (HEAD0, NodeType("gpu", 4, 1, 4))), 1, 0) == 16  # GPU types only
    # the cluster's cap on workers: the fullest types first; the head outside the cap
    small, big = NodeType("small", 2, 0, 5), NodeType("big", 4, 0, 2)
    assert default_concurrency(Capacity(AUTOSCALER, (HEAD0, small, big), max_workers=3), 1, 0) == 2 * 4 + 1 * 2
    head2 = NodeType("head", 2, worker=False)
    assert default_concurrency(Capacity(AUTOSCALER, (head2, small), max_workers=0), 1, 0) == 2
    # Ray's resource units: 0.7 CPUs hold 7 trials of 0.1 CPU (7 // 1 in floats would say 6)
    assert default_concurrency(Capacity(FIXED, (NodeType("head", 0.7, worker=False),)), 0.1, 0) == 7
    # a cluster without autoscaler: every node counts, GPU nodes too
    assert default_concurrency(Capacity(FIXED, (HEAD0, NodeType("n", 4, 1, 2))), 1, 0) == 8
    assert default_concurrency(Capacity(NODES_NOW, (HEAD0,)), 1, 0) == 1


def test_capacity_from_the_launcher_configs():
    nodes = [(True, {"CPU": 0.0, "memory": 1e9})]
    for name in ("aws", "gcp"):
        config = yaml.safe_load((ROOT / "deploy" / f"{name}.yaml").read_text())
        capacity = capacity_from_autoscaling_config(config, nodes, name)
        assert capacity.kind == AUTOSCALER and capacity.max_workers == 12, capacity
        assert default_concurrency(capacity, 1, 0) == 8 * 16 and default_concurrency(capacity, 1, 0.25) == 4 * 4
        assert capacity.describe(1, 0.25).startswith("autoscaler: up to 4 workers of ")
        with pytest.raises(BadFlag, match="^--cpus-per-trial asks for 32 CPUs per trial, but no node type"):
            check_cluster_resources(capacity, 32, 0)
        with pytest.raises(BadFlag, match="^--gpus-per-trial asks for 2 GPUs per trial"):
            check_cluster_resources(capacity, 1, 2)
        with pytest.raises(BadFlag, match="^--cpus-per-trial asks for 8 CPUs per trial with 1 GPU, but"):
            check_cluster_resources(capacity, 8, 1)
        check_cluster_resources(capacity, 16, 0)
        check_cluster_resources(capacity, 4, 1)
    # as Ray's autoscaler reads a file: a node type without max_workers starts none; no cap in all
    config = {"head_node_type": "h", "available_node_types": {"h": {"resources": {"CPU": 0}},
                                                              "w": {"resources": {"CPU": 2}},
                                                              "v": {"resources": {"CPU": 1}, "max_workers": 3}}}
    capacity = capacity_from_autoscaling_config(config, nodes, "file")
    assert capacity.max_workers is None and default_concurrency(capacity, 1, 0) == 3
    assert capacity.describe(1, 0) == "autoscaler: up to 3 workers of v (1 CPU)"
    config["available_node_types"]["u"] = {"max_workers": 2}  # resources not declared: cannot tell
    assert capacity_from_autoscaling_config(config, nodes, "file") is None


def test_resource_check_refuses_only_what_is_known():
    fixed = Capacity(FIXED, (HEAD0, NodeType("n", 1, 0, 2)))
    with pytest.raises(BadFlag) as e:
        check_cluster_resources(fixed, 2, 0)
    assert str(e.value) == ("--cpus-per-trial asks for 2 CPUs per trial, but no node of the cluster (which has no "
                            "autoscaler) has that many: the head (0 CPUs), 2 nodes (1 CPU)")
    check_cluster_resources(fixed, 1, 0)
    check_cluster_resources(Capacity(NODES_NOW, (HEAD0,)), 2, 1)  # an autoscaler may add what fits
    check_cluster_resources(None, 2, 1)  # not read in time


def test_the_monitors_autoscaling_config_and_gcs_address(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monitor = ["/venv/bin/python", "-u", "/venv/ray/autoscaler/_private/monitor.py", "--gcs-address=10.0.0.5:6379"]
    assert _autoscaling_config_path([*monitor, "--monitor-ip=10.0.0.5"], Path("/")) is None  # no autoscaler
    assert _autoscaling_config_path([*monitor, "--autoscaling-config=~/ray_bootstrap_config.yaml"], Path("/x")) == \
        tmp_path / "ray_bootstrap_config.yaml"
    assert _autoscaling_config_path([*monitor, "--autoscaling-config", "as.yaml"], Path("/x")) == Path("/x/as.yaml")
    assert _same_gcs("10.0.0.5:6379", "10.0.0.5:6379") and _same_gcs("10.0.0.5:6379", "127.0.0.1:6379")
    assert not _same_gcs("10.0.0.5:6379", "10.0.0.5:6380") and not _same_gcs("10.0.0.5:6379", "10.0.0.6:6379")


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
                                                                              monkeypatch, capsys, s3_server):
    """No --max-concurrent: the default, 2 trials at once, comes from the autoscaler's node types (an
    empty cluster would have given 1), and both workers come for them; a trial no node type can
    hold is refused first.  The nodes share the study's artifacts, records and Tune state through a
    real S3 bucket (``--storage s3://...``, the endpoint in $AWS_ENDPOINT_URL, as a cloud bucket's
    nodes would have their credentials in their environment)."""
    import ray
    from ray._private.services import get_node_ip_address
    from ray.cluster_utils import Cluster

    from study.lottery import main
    from trainables.storage import Storage

    s3 = s3_server.env()
    env = {**ray_env, **s3, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    _use_env(monkeypatch, env, (*BASE_ENV, *s3, "RAY_FAKE_CLUSTER", "AUTOSCALER_UPDATE_INTERVAL_S"))
    storage = s3_server.uri(f"cluster-{os.getpid()}-{time.time_ns()}/studies")
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
        capsys.readouterr()  # the cluster's start-up lines
        for flags, flag in ((["--cpus-per-trial", "4"], "--cpus-per-trial"),
                            (["--gpus-per-trial", "1"], "--gpus-per-trial")):
            assert_refused(main, _refusal_args(address, *flags), flag, tmp_path, capsys)

        root, log = tmp_path / "s", tmp_path / "cli.log"
        proc = _start_cli(_args(root, "scaled", data_dir, address, 6, "--cpus-per-trial", "1", "--storage", storage),
                          env, log)
        most_workers, most_cpus = 0, 0.0
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            most_workers = max(most_workers, len(_alive_workers()))
            most_cpus = max(most_cpus, ray.cluster_resources().get("CPU", 0))
            time.sleep(0.5)
        out = _wait(proc, log, timeout=max(1, deadline - time.time()))
        assert proc.returncode == 0, out[-4000:]
        # it joined the empty cluster; the default concurrency is what the autoscaler can start
        assert "with 0 CPUs, 0 GPUs; up to 2 trials at once (autoscaler: up to 2 workers of ray.worker.cpu (1 CPU))" \
            in out, out[-4000:]
        trials, _ = _check_complete(root / "scaled", 6, out)
        assert most_workers == 2 and most_cpus == 2, (most_workers, most_cpus)  # one worker per pending trial
        shared = Storage(Storage(storage).join("scaled"))
        assert {"artifacts", "ray", "trial-records"} <= set(shared.list_names(shared.root))
        assert not (root / "scaled" / "artifacts").exists() and not (root / "scaled" / "ray").exists()
        trained = {n.removesuffix(".json") for n in shared.list_names(shared.join("trial-records"), ".json")}
        assert trained and trained <= set(trials["trial_id"])  # (a repeated suggestion is answered, not trained)

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


def test_a_trial_no_node_can_hold_is_refused_on_a_cluster_without_autoscaler(tmp_path, ray_env, monkeypatch,
                                                                            capsys):
    from ray.cluster_utils import Cluster

    from study.lottery import main
    from study.preflight import check_cluster
    from study.runtime import cluster_capacity

    _use_env(monkeypatch, ray_env, BASE_ENV)
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=dict(num_cpus=0, include_dashboard=False))
    try:
        cluster.add_node(num_cpus=1)
        capacity = cluster_capacity(cluster.address)
        assert capacity.kind == FIXED and default_concurrency(capacity, 0.5, 0) == 2, capacity
        check_cluster(cluster.address, 1, 0)  # one fits
        for flags, flag in ((["--cpus-per-trial", "2"], "--cpus-per-trial"),
                            (["--gpus-per-trial", "1"], "--gpus-per-trial")):
            assert_refused(main, _refusal_args(cluster.address, *flags), flag, tmp_path, capsys)
    finally:
        cluster.shutdown()
    assert not _no_ray_left(ray_env["RAY_TMPDIR"])


def _mid_trial(study: Path, regime: str, epoch: int) -> Path | None:
    """The folder of a trial of ``regime`` that has checkpointed epoch ``epoch`` of its final training
    (with --checkpoint-every 1, checkpoint_<k> holds epoch k + 1)."""
    for d in (study / "ray" / "search").glob(f"{regime}-*"):
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

    # one line on the screen names the lost node (Ray reports the node's loss as its worker's
    # unavailability, or as the node's death); Tune's traceback is in the study's log, not the screen
    lost = [ln for ln in out.splitlines() if "attempt 1 of 4 failed, retrying" in ln]
    assert len(lost) == 1 and re.search(r": (lost node|lost contact with the trial's worker on node) \d", lost[0]), out[-4000:]
    assert "Trial task failed" not in out and "Traceback" not in out, out[-4000:]
    assert "Trial task failed" in (study / "logs" / "driver.log").read_text()
    hit_id = json.loads((hit / "result.json").read_text().splitlines()[0])["trial_id"]
    resumed = {}
    for t in trials["trial_id"]:
        rec = json.loads((study / "records" / f"{t}.json").read_text())
        if rec["resumed_from_epoch"] is not None:
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
