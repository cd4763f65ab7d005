"""One driver per study: the driver holds an exclusive lock on ``<study folder>/driver.lock`` for
its whole life.

The lock is ``fcntl.flock`` on the file: the kernel releases it when the holder's process ends,
however it ends (SIGKILL included), so a lock whose holder is gone is simply taken.  The file
holds the holder's host, process id and start time, so that a second driver is refused with one
line naming them; a file that still names a holder when the lock is free means that holder died
without releasing it, and the new driver says it takes the study over.

Where the study's shared files live elsewhere (``--storage``: an object store, or a folder other
machines mount), drivers on other machines cannot see that lock: the driver also holds a lease there,
``<storage>/<name>/driver.lease`` (``StudyLease``), naming it and renewed by a heartbeat; a lease not
renewed for ``LEASE_TTL_S`` (by the store's own clock), or naming a process of this machine that has
ended, belongs to a driver that is gone and is taken over.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

LOCK_FILE = "driver.lock"
LEASE_FILE = "driver.lease"
LEASE_TTL_S = 60.0  # a lease not renewed for this long: its driver is gone (stopped, or cut off)
LEASE_RENEW_S = 10.0
# between writing a lease and reading it back: a second driver that read "no lease" just before this
# one wrote has written its own by then, and whichever wrote last holds the study (object stores
# have no compare-and-swap that pyarrow exposes; two drivers would have to start within this of
# each other and both take more than it between their read and write to both go on)
LEASE_SETTLE_S = 1.0


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
            raise _in_use(Path(study_dir).name, holder, f"lock {path}") from None
        previous = _read(fd)
        mine = _holder()
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


def _holder() -> dict:
    """This driver, as a lock or lease names it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}


def _in_use(name: str, holder: dict, where: str) -> StudyInUse:
    return StudyInUse(f"the study {name} is in use by another driver: {describe(holder)} ({where}); wait for it "
                      f"to end, or stop it first")


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


class StudyLease:
    """The lease a driver holds on the study's shared storage (``acquire``), renewed every
    ``renew_s`` by a daemon thread until ``release``."""

    def __init__(self, storage, location: str, mine: dict, took_over: dict | None, renew_s: float,
                 on_lost: Callable[[], None] | None = None):
        self.storage, self.location, self.mine, self.took_over = storage, location, mine, took_over
        self.lost: dict | None = None  # the driver that took the lease from this one, if one did
        self.on_lost = on_lost  # called then (the driver: stop, as at Ctrl-C)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, args=(renew_s,), name="study-lease", daemon=True)
        self._thread.start()

    @classmethod
    def acquire(cls, storage, name: str, ttl_s: float = LEASE_TTL_S, renew_s: float = LEASE_RENEW_S,
                settle_s: float = LEASE_SETTLE_S, on_lost: Callable[[], None] | None = None) -> "StudyLease":
        """Take the lease on ``storage`` (a ``trainables.storage.Storage`` at the study's shared
        root), or raise ``StudyInUse`` naming the driver that renewed it within ``ttl_s``;
        ``on_lost`` is called if another driver takes it later."""
        location = storage.join(LEASE_FILE)
        held, age = _read_lease(storage, location)
        if held and age is not None and age < ttl_s and not _gone(held):
            raise _in_use(name, held, f"its lease {location} was renewed {age:.0f} s ago")
        mine = {**_holder(), "token": uuid.uuid4().hex}
        storage.write_text(location, json.dumps(mine))
        time.sleep(settle_s)
        back, _ = _read_lease(storage, location, dated=False)
        if back.get("token") != mine["token"]:
            raise _in_use(name, back, f"it took the lease {location} as this one did")
        return cls(storage, location, mine, held or None, renew_s, on_lost)

    def _renew(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                held, _ = _read_lease(self.storage, self.location, dated=False)
                if held.get("token") != self.mine["token"]:
                    self.lost = held
                    print(f"error: the study's lease {self.location} was taken by {describe(held)} (this driver "
                          f"did not renew it in time): stopping", file=sys.stderr, flush=True)
                    if self.on_lost is not None:
                        self.on_lost()
                    return
                self.storage.write_text(self.location, json.dumps(self.mine))  # its time is the renewal
            except OSError:
                continue  # a store that does not answer now: try again at the next beat

    def release(self) -> None:
        """Stop renewing, and remove the lease if it is still this driver's."""
        self._stop.set()
        self._thread.join()
        try:
            held, _ = _read_lease(self.storage, self.location, dated=False)
            if held.get("token") == self.mine["token"]:
                self.storage.delete(self.location)
        except OSError:
            pass  # left behind, it expires after LEASE_TTL_S


def _gone(holder: dict) -> bool:
    """A holder on this machine whose process has ended (its lease need not expire first)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def _read_lease(storage, location: str, dated: bool = True) -> tuple[dict, float | None]:
    """(the lease's holder, seconds since it was last written by the store's clock, or None without
    ``dated``: an object store's clock costs a write); ({}, None) when there is none, and ({}, age)
    when it is unreadable (a driver that died mid-write)."""
    if not storage.exists(location):
        return {}, None
    try:
        holder = json.loads(storage.read_text(location))
    except (OSError, ValueError):
        holder = {}
    return (holder if isinstance(holder, dict) else {}), storage.age(location) if dated else None
