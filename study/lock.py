"""One driver per study: the driver holds an exclusive lock on ``<study folder>/driver.lock`` for
its whole life.

The lock is ``fcntl.flock`` on the file: the kernel releases it when the holder's process ends,
however it ends (SIGKILL included), so a lock whose holder is gone is simply taken.  The file
holds the holder's host, process id and start time, so that a second driver is refused with one
line naming them; a file that still names a holder when the lock is free means that holder died
without releasing it, and the new driver says it takes the study over.

A folder on a network file system may not honour ``flock``; a lease for object storage is not
built yet (see the README's section on interruptions).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

LOCK_FILE = "driver.lock"


class StudyInUse(RuntimeError):
    """Another driver holds the study: the message names it."""


class DriverLock:
    """The lock a driver holds (``acquire``); ``release`` at a clean exit."""

    def __init__(self, fd: int, path: Path, took_over: dict | None):
        self.fd, self.path, self.took_over = fd, path, took_over

    @classmethod
    def acquire(cls, study_dir: Path) -> "DriverLock":
        """Take the study's lock, or raise ``StudyInUse`` naming its holder.  Writes nothing but the
        lock file's holder line, and that only once the lock is held."""
        path = Path(study_dir) / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise StudyInUse(f"the study {Path(study_dir).name} is in use by another driver: {describe(holder)} "
                             f"(lock {path}); wait for it to end, or stop it first") from None
        previous = _read(fd)
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(mine).encode(), 0)
        os.fsync(fd)
        return cls(fd, path, previous or None)

    def release(self) -> None:
        """Clear the holder line and let go (the kernel lets go anyway when the process ends)."""
        try:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)


def _read(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        holder = json.loads(raw) if raw.strip() else {}
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def describe(holder: dict) -> str:
    if not holder:
        return "a driver that has not written its name yet"
    since = holder.get("since")
    when = (datetime.fromtimestamp(since, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            if isinstance(since, (int, float)) else "an unknown time")
    return f"host {holder.get('host', '?')}, process {holder.get('pid', '?')}, since {when}"
