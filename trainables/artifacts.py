"""A content-addressed artifact store: each pipeline stage is computed once and shared.

A stage is described by a JSON-able spec (its kind plus every field that changes its result,
including the hashes of the stages it starts from).  The canonical JSON of the spec hashes to the
stage's directory name; a stage whose directory holds ``meta.json`` is complete and is loaded, not
recomputed; every file's sha256 is in ``meta.json`` and checked when the stage is found and when
its tensors are loaded (a damaged stage is moved aside and computed again).  On a local folder
(or NFS mount) writes go to a temporary directory renamed into place
(atomic on one file system), and a file lock makes concurrent trials that need the same stage
compute it once: the second waits, then loads.  On an object store (``s3://``, ``gs://``: no rename,
no lock) the files are uploaded and ``meta.json`` last marks the stage complete; two nodes may then
compute the same stage at once, which wastes time but not correctness (stages are deterministic).
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from trainables.hashing import sha256, spec_hash
from trainables.storage import DAMAGED, DAMAGED_TIME, Storage


@dataclass(frozen=True)
class Artifact:
    kind: str
    hash: str
    location: str  # folder path, or URI on an object store
    meta: dict[str, Any]
    computed: bool  # True when this call computed it, False when it was found in the store
    storage: Storage
    # files the store read and checked when it found the artifact, kept for their first load so that
    # it neither reads nor hashes them again (only files up to KEEP_VERIFIED bytes: held until loaded)
    verified: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.hash}"

    @property
    def path(self) -> Path:
        """The folder (local stores only)."""
        return Path(self.location)

    def tensors(self, file: str = "tensors.pt") -> dict[str, torch.Tensor]:
        """The tensors of ``file``: the bytes the store checked when it found the artifact, or (a
        file loaded again, or a large one) read now and checked against the digest written with
        them: a file damaged since raises ``DamagedArtifact`` (the trial fails, and its retry finds
        the artifact damaged and rebuilds it) rather than train from it."""
        if file in self.verified:
            return torch.load(io.BytesIO(self.verified.pop(file)), map_location="cpu", weights_only=True)
        want = self.meta.get("digests", {}).get(file)
        try:
            data = self.storage.read_bytes(Storage(self.location).join(file))
        except OSError as e:
            if want is None:
                raise
            raise DamagedArtifact(f"artifact {self.name}: {file} cannot be read ({type(e).__name__})") from e
        if want is not None and sha256(data) != want:
            raise DamagedArtifact(f"artifact {self.name}: {file} does not match its digest")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


KEEP_VERIFIED = 16 * 2 ** 20  # bytes: a found artifact's checked file up to this size is kept for its load


class DamagedArtifact(RuntimeError):
    """An artifact's file is not what was written."""


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))


class ArtifactStore:
    """Artifacts under ``root/<kind>-<hash>/`` with ``spec.json``, ``meta.json`` and tensor files;
    ``root`` is a local folder or a URI (see ``trainables.storage``)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.storage = Storage(str(root) if "://" in str(root) else str(Path(root).resolve()))
        if self.storage.local:
            self.root = Path(self.storage.root)
            self.root.mkdir(parents=True, exist_ok=True)

    def find(self, kind: str, spec: dict[str, Any]) -> Artifact | None:
        """The complete artifact of ``spec``, its files checked against the digests in its
        ``meta.json``; None when there is none, or when it was damaged (a truncated, changed or
        unreadable file: it is moved aside to ``damaged/`` and named in one line, so that the stage
        is computed again)."""
        h = spec_hash({"kind": kind, **spec})
        name = f"{kind}-{h}"
        location = self.storage.join(name)
        meta_file = self.storage.join(name, "meta.json")
        if not self.storage.exists(meta_file):
            return None
        verified = {}
        try:
            meta = json.loads(self.storage.read_text(meta_file))
            for file, want in meta.get("digests", {}).items():
                data = self.storage.read_bytes(self.storage.join(name, file))
                if sha256(data) != want:
                    raise DamagedArtifact(f"{file} does not match its digest")
                if file.endswith(".pt") and len(data) <= KEEP_VERIFIED:
                    verified[file] = data
        except (OSError, ValueError, DamagedArtifact) as e:
            self._move_aside(name, f"{type(e).__name__}: {e}".splitlines()[0])
            return None
        return Artifact(kind, h, location, meta, False, self.storage, verified)

    def damaged_since(self, t0: float) -> list[str]:
        """The artifacts moved aside as damaged since ``t0`` (epoch seconds): their folders' names,
        ``<kind>-<hash>-<UTC time>-<id>``."""
        since = time.strftime(DAMAGED_TIME, time.gmtime(t0))
        return [n for n in self.storage.list_names(self.storage.join(DAMAGED)) if n.rsplit("-", 2)[-2] >= since]

    def _move_aside(self, name: str, why: str) -> None:
        try:
            aside = self.storage.set_aside(name)
        except OSError:
            return  # another trial moved it first
        print(f"artifact {name} was damaged ({why}): moved to {self.storage.join(DAMAGED, aside)}; computing it again",
              flush=True)

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        lock_dir = self.root / ".locks"
        lock_dir.mkdir(exist_ok=True)
        with open(lock_dir / f"{name}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def get_or_create(self, kind: str, spec: dict[str, Any],
                      compute: Callable[[Path], dict[str, Any]]) -> Artifact:
        """Load the artifact for ``spec``; compute it first if no one has.

        ``compute(tmpdir)`` writes its files into ``tmpdir`` and returns the metadata to keep.
        """
        return self.get_or_create_many(kind, [spec], lambda _, tmps: [compute(tmps[0])])[0]

    def get_or_create_many(self, kind: str, specs: list[dict[str, Any]],
                           compute: Callable[[list[int], list[Path]], list[dict[str, Any]]]) -> list[Artifact]:
        """``get_or_create`` for several specs at once: the missing ones are computed by one call,
        ``compute(indices, tmpdirs)`` -> their metadata, in order (the seeds of one configuration
        trained as one stacked network).  On a local store every missing artifact's lock is held
        meanwhile, taken in name order so that two callers never wait on each other: a concurrent
        trial waits, then loads them.  On an object store the files are uploaded and ``meta.json``
        last marks each complete."""
        found: list[Artifact | None] = [self.find(kind, spec) for spec in specs]
        if all(f is not None for f in found):
            return found  # type: ignore[return-value]
        fulls = [{"kind": kind, **spec} for spec in specs]
        hashes = [spec_hash(full) for full in fulls]
        with contextlib.ExitStack() as held:
            if self.storage.local:
                for h in sorted({h for h, f in zip(hashes, found) if f is None}):
                    held.enter_context(self._lock(f"{kind}-{h}"))
            first: dict[str, int] = {}  # a spec given twice is computed once
            for i, f in enumerate(found):
                if f is None and self.find(kind, specs[i]) is None:  # others may have finished it meanwhile
                    first.setdefault(hashes[i], i)
            todo = sorted(first.values())
            tmps = {i: (self.root / f".tmp-{kind}-{hashes[i]}-{uuid.uuid4().hex[:8]}" if self.storage.local
                        else self.storage.make_local_tmp()) for i in todo}
            try:
                for tmp in tmps.values():
                    tmp.mkdir(exist_ok=True)
                start = time.perf_counter()
                metas = compute(todo, [tmps[i] for i in todo]) if todo else []
                seconds = (time.perf_counter() - start) / max(1, len(todo))  # each one's share
                for i, meta in zip(todo, metas):
                    _write_json(tmps[i] / "spec.json", fulls[i])
                    digests = {p.name: sha256(p.read_bytes()) for p in sorted(tmps[i].iterdir()) if p.is_file()}
                    name, meta = f"{kind}-{hashes[i]}", {**meta, "compute_seconds": seconds, "digests": digests}
                    if self.storage.local:
                        _write_json(tmps[i] / "meta.json", meta)
                        os.rename(tmps[i], self.root / name)
                        location = str(self.root / name)
                    else:
                        location = self.storage.join(name)
                        self.storage.upload_dir(tmps[i], location)
                        self.storage.write_text(self.storage.join(name, "meta.json"),
                                                json.dumps(meta, indent=1, sort_keys=True, default=str))
                    found[i] = Artifact(kind, hashes[i], location, meta, True, self.storage)
            finally:
                for tmp in tmps.values():
                    if tmp.exists():
                        shutil.rmtree(tmp, ignore_errors=True)
        return [f if f is not None else (found[first[hashes[i]]] if hashes[i] in first else self.find(kind, specs[i]))
                for i, f in enumerate(found)]


def save_tensors(directory: Path, tensors: dict[str, torch.Tensor], file: str = "tensors.pt") -> None:
    # serialised in memory, then written by Python: a full disk raises OSError(ENOSPC) naming the
    # file (torch.save into a file says only "unexpected pos ..." from its zip writer)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in tensors.items()}, buf)
    (directory / file).write_bytes(buf.getvalue())
