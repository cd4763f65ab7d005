"""Faults around a running study: a full disk stops it in one line, and --resume completes it once
space is free.  (A second driver and a damaged artifact: tests/test_resume.py, test_trainable.py.)"""
from __future__ import annotations

import subprocess
import time
from collections import Counter

import pyarrow.parquet as pq

from tests.conftest import run_cli


def test_a_full_disk_stops_the_study_in_one_line_and_resume_completes(tmp_path, ray_env, data_dir):
    """The study folder on a 6 MB tmpfs (the tests run as root, as CI does): the driver stops with
    one line naming the write that failed and exit status 1, the trial that hit it not retried; with
    the file system grown, --resume completes with every trial once."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(small)], capture_output=True,
                             text=True)
    assert mounted.returncode == 0, f"this test mounts a small tmpfs (as root): {mounted.stderr}"
    try:
        args = ["--num-samples", "8", "--regimes", "winning_ticket,random_reinit", "--epochs", "2", "--rounds", "2",
                "--lr-grid", "4", "--lr-min", "0.01", "--lr-max", "1", "--startup-trials", "8",
                "--confirm-seeds", "2", "--max-confirm-seeds", "2", "--candidates", "1", "--no-sweep", "--no-fixed",
                "--root", str(small), "--name", "full", "--data-dir", data_dir, "--num-cpus", "2"]
        t0 = time.time()
        r = run_cli(args, ray_env, timeout=300)
        said = (r.stdout + r.stderr)
        assert r.returncode == 1, said[-3000:]
        # the study's own word, one line and nothing else on stderr (Ray's and Tune's tracebacks go
        # to logs/driver.log); the trial that hit the wall is not retried into it
        errors = r.stderr.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("error: the study stopped: "), said[-3000:]
        assert "Traceback" not in said and "attempt" not in r.stdout, said[-3000:]
        assert "cannot write" in errors[0] and ("No space left on device" in errors[0] or "disk is full" in errors[0])
        assert "--resume --name full" in errors[0]
        assert time.time() - t0 < 200

        grown = subprocess.run(["mount", "-o", "remount,size=400m", str(small)], capture_output=True, text=True)
        assert grown.returncode == 0, grown.stderr
        r = run_cli(["--resume", "--root", str(small), "--name", "full", "--num-cpus", "2"], ray_env, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        trials = pq.read_table(small / "full" / "results" / "trials.parquet").to_pandas()
        assert trials["trial_id"].is_unique and set(trials["status"]) == {"completed"}
        search = trials[trials.phase == "search"]
        assert Counter(search["regime"]) == {"winning_ticket": 8, "random_reinit": 8}
        assert (trials.phase == "confirm").sum() == 2 * 2
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)
