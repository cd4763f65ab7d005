"""Shared fixtures: a cached MNIST-1D folder, a private Ray temp dir, a tiny pipeline."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

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
           "HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    (tmp_path / "home").mkdir()
    yield env
    left = subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True).stdout.split()
    for pid in left:  # clean up, then fail: a test must not leave Ray behind
        subprocess.run(["kill", "-9", pid], capture_output=True)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not left, f"Ray processes left behind: {left}"


def run_cli(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.lottery", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
