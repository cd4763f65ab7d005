"""Faults around a running study: a full disk stops it in one line, and --resume completes it once
space is free; a trial's worker killed is one line on the screen, and the trial is retried.  (A
second driver: tests/test_resume.py; damaged artifacts, checkpoints and records: test_trainable.py,
test_damaged.py.)"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, assert_each_trial_once, run_cli


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
        assert_each_trial_once(small / "full", {"winning_ticket": 8, "random_reinit": 8}, 2 * 2)
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_a_killed_trial_worker_is_one_line_and_the_trial_is_retried(tmp_path, ray_env, data_dir):
    """SIGKILL of a running trial's worker process (``ray::ImplicitFunc.train``): one line on the
    screen names it (attempt 1 of 3, retrying), Ray's and Tune's error blocks go to logs/driver.log,
    and the study completes with every trial once."""
    root = tmp_path / "s"
    args = ["--num-samples", "2", "--regimes", "winning_ticket,random_reinit", "--epochs", "20", "--rounds", "1",
            "--lr-grid", "2", "--lr-min", "0.03", "--lr-max", "0.3", "--startup-trials", "2", "--checkpoint-every", "1",
            "--no-confirm", "--root", str(root), "--name", "worker", "--data-dir", data_dir, "--num-cpus", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "study.lottery", *args], cwd=ROOT, env=ray_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    checkpoints = root / "worker" / "ray" / "search"
    deadline = time.time() + 300
    while time.time() < deadline and not list(checkpoints.glob("*/checkpoint_*")):  # a trial mid-way
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    workers = subprocess.run(["pgrep", "-f", "ImplicitFunc.train"], capture_output=True, text=True).stdout.split()
    mine = [p for p in workers if ray_env["RAY_TMPDIR"] in Path(f"/proc/{p}/environ").read_text(errors="replace")]
    assert mine, "no trial worker found"
    subprocess.run(["kill", "-9", mine[0]], check=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert err == "", err[-3000:]
    failed = [ln for ln in out.splitlines() if "failed" in ln]
    assert len(failed) == 1, out[-3000:]
    assert re.search(rf"attempt 1 of 3 failed, retrying: the trial's worker process {mine[0]} on \S+ died", failed[0])
    assert failed[0].endswith("(trace: logs/driver.log)")
    assert "Traceback" not in out and "(raylet)" not in out
    log = (root / "worker" / "logs" / "driver.log").read_text()
    assert "Trial task failed" in log and "A worker died or was killed" in log
    assert_each_trial_once(root / "worker", {"winning_ticket": 2, "random_reinit": 2}, 0)
