"""Where a study's shared files live: a local folder (or NFS mount) or a URI pyarrow.fs understands.

Trials on any node of a cluster find the pipeline artifacts and write their records through this,
so ``--storage s3://bucket/studies`` works as well as a local path.  Local paths keep the fast path:
atomic renames and file locks.  On object stores (no rename, no locks) a write goes straight to its
key, and completion is marked by writing a stage's ``meta.json`` last.
"""
from __future__ import annotations

import errno
import os
import posixpath
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; when the block ends without an error it replaces
    ``path`` in one rename (readers see the old file or the new one, never half of one), otherwise it
    is removed.  Its name ends with ``path``'s, so writers that go by the suffix (savefig, np.savez)
    write the same format.  The one atomic write of every local file the project writes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def is_uri(location: str) -> bool:
    return "://" in str(location)


def join_uri(uri: str, *parts: str) -> str:
    """``parts`` joined below ``uri``'s path with '/', before its query string:
    ``s3://bucket/studies?endpoint_override=host:9000&scheme=http`` + ``a`` is
    ``s3://bucket/studies/a?endpoint_override=host:9000&scheme=http`` (pyarrow.fs reads the options
    of the store from the query; a part after it would be read as the value of the last one)."""
    u = urllib.parse.urlsplit(uri)
    path = posixpath.join(u.path.rstrip("/") or "/", *parts) if parts else u.path
    return urllib.parse.urlunsplit(u._replace(path=path))


@dataclass(frozen=True)
class Storage:
    """A root location; ``path`` is joined below it with '/' (before a URI's query string).  A URI's
    query carries the store's options, e.g. ``s3://bucket/studies?endpoint_override=host:9000&scheme=http``
    for an S3-compatible server; each call reads them again (``pafs.FileSystem.from_uri``)."""

    root: str

    @property
    def local(self) -> bool:
        return not is_uri(self.root)

    def join(self, *parts: str) -> str:
        if self.local:
            return str(Path(self.root, *parts))
        return join_uri(self.root, *parts)

    def _fs(self, location: str) -> tuple[pafs.FileSystem, str]:
        return pafs.FileSystem.from_uri(location)

    def exists(self, location: str) -> bool:
        if self.local:
            return os.path.exists(location)
        fs, p = self._fs(location)
        return fs.get_file_info(p).type != pafs.FileType.NotFound

    def read_bytes(self, location: str) -> bytes:
        if self.local:
            return Path(location).read_bytes()
        fs, p = self._fs(location)
        with fs.open_input_stream(p) as f:
            return f.read()

    def read_text(self, location: str) -> str:
        return self.read_bytes(location).decode()

    def write_bytes(self, location: str, data: bytes) -> None:
        """Write ``location`` so that readers see all of it or nothing."""
        if self.local:
            with atomic_path(location) as tmp:
                tmp.write_bytes(data)
            return
        fs, p = self._fs(location)
        fs.create_dir(posixpath.dirname(p), recursive=True)
        with fs.open_output_stream(p) as f:  # object stores publish a key only when it is closed
            f.write(data)

    def write_text(self, location: str, text: str) -> None:
        self.write_bytes(location, text.encode())

    def delete(self, location: str) -> None:
        if self.local:
            Path(location).unlink()
            return
        fs, p = self._fs(location)
        fs.delete_file(p)

    def move(self, src: str, dst: str) -> None:
        """Move a folder or a file (a rename where local; on an object store, which has no folders to
        rename, each file is copied and then the source deleted)."""
        if self.local:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            os.rename(src, dst)
            return
        fs, p = self._fs(src)
        _, q = self._fs(dst)
        if fs.get_file_info(p).type == pafs.FileType.File:
            fs.create_dir(posixpath.dirname(q), recursive=True)
            fs.move(p, q)
            return
        # pyarrow's S3 and GCS filesystems move single objects only (a folder is a key prefix)
        infos = fs.get_file_info(pafs.FileSelector(p, recursive=True))
        made: set[str] = set()
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            target = posixpath.join(q, posixpath.relpath(info.path, p))
            parent = posixpath.dirname(target)
            if parent not in made:
                fs.create_dir(parent, recursive=True)
                made.add(parent)
            fs.copy_file(info.path, target)
        # the deepest folders first: a store with real folders (SeaweedFS) keeps, without an error, a
        # folder it is asked to delete while it still holds another, as one delete_dir(p) would ask
        folders = sorted((i.path for i in infos if i.type == pafs.FileType.Directory), key=lambda d: -d.count("/"))
        for folder in [*folders, p]:
            fs.delete_dir(folder)

    def set_aside(self, *parts: str) -> str:
        """Move the damaged file or folder ``parts`` (below the root) into a ``damaged/`` folder beside
        it, named by ``aside_name`` (kept for inspection); returns that name.  FileNotFoundError when
        it is gone (another reader moved it first)."""
        name = aside_name(parts[-1])
        self.move(self.join(*parts), self.join(*parts[:-1], DAMAGED, name))
        return name

    def age(self, location: str) -> float | None:
        """Seconds since ``location`` was last written, by the clock of the store that holds it (so
        that machines whose clocks differ agree): a local file's against this machine's clock, an
        object's against the time of an object written now; None if it is not there."""
        if self.local:
            try:
                return time.time() - os.stat(location).st_mtime
            except FileNotFoundError:
                return None
        fs, p = self._fs(location)
        info = fs.get_file_info(p)
        if info.type == pafs.FileType.NotFound:
            return None
        clock = f"{p}.clock-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(clock) as f:
            f.write(b"")
        try:
            now = fs.get_file_info(clock).mtime
        finally:
            fs.delete_file(clock)
        return (now - info.mtime).total_seconds()

    def list_names(self, location: str, suffix: str = "") -> list[str]:
        """The names (not paths) of the files and folders right below ``location``; none if it is not there."""
        if self.local:
            d = Path(location)
            return sorted(p.name for p in d.iterdir() if p.name.endswith(suffix)) if d.exists() else []
        fs, p = self._fs(location)
        infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
        names = (posixpath.basename(i.path.rstrip("/")) for i in infos)  # paths without the URI's query
        return sorted(n for n in names if n and n.endswith(suffix))

    def upload_dir(self, local_dir: Path, location: str) -> None:
        """Copy the files of ``local_dir`` to ``location`` (remote stores only)."""
        fs, p = self._fs(location)
        fs.create_dir(p, recursive=True)
        for f in sorted(Path(local_dir).iterdir()):
            with fs.open_output_stream(posixpath.join(p, f.name)) as out:
                out.write(f.read_bytes())

    def make_local_tmp(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="artifact-"))


DAMAGED = "damaged"  # the folder beside them where damaged files are kept
DAMAGED_TIME = "%Y%m%dT%H%M%S"  # when a damaged file was set aside (UTC), in its new name


def aside_name(name: str) -> str:
    """A damaged ``<stem>[.<suffix>]``'s name in ``damaged/``: ``<stem>-<UTC time>-<id>[.<suffix>]``
    (never overwriting an earlier one)."""
    stem, dot, suffix = name.rpartition(".")
    stem, suffix = (stem, f".{suffix}") if dot else (name, "")
    return f"{stem}-{time.strftime(DAMAGED_TIME, time.gmtime())}-{uuid.uuid4().hex[:6]}{suffix}"


# A write that cannot succeed by retrying: a full disk or quota, a read-only folder, a failing device
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)
STORAGE_TEXTS = ("No space left on device", "Disk quota exceeded", "Read-only file system", "Input/output error",
                 "database or disk is full")


class WriteFailure(Exception):
    """A write that cannot succeed, met by a trial: raised in the driver to stop the study at once
    (its message is ``storage_failure``'s line)."""


def storage_failure(exc: BaseException | str | None) -> str | None:
    """``cannot write <path>: <why>`` when ``exc`` (an exception, its causes, or an error's text,
    e.g. a failed trial's last line) is such a write failure; None otherwise."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, WriteFailure):
            return str(exc)
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return f"cannot write{f' {exc.filename}' if exc.filename else ''}: {exc.strerror or os.strerror(exc.errno)}"
        text = exc if isinstance(exc, str) else str(exc)
        for line in text.splitlines():
            if any(t in line for t in STORAGE_TEXTS):
                return f"cannot write: {line.strip()}"
        if isinstance(exc, str):
            return None
        exc = exc.__cause__ or exc.__context__
    return None
