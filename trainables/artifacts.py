"""A content-addressed artifact store: each pipeline stage is computed once and shared.

A stage is described by a JSON-able spec (its kind plus every field that changes its result,
including the hashes of the stages it starts from).  The canonical JSON of the spec hashes to the
stage's directory name; a stage whose directory holds ``meta.json`` is complete and is loaded, not
recomputed.  On a local folder (or NFS mount) writes go to a temporary directory renamed into place
(atomic on one file system), and a file lock makes concurrent trials that need the same stage
compute it once: the second waits, then loads.  On an object store (``s3://``, ``gs://``: no rename,
no lock) the files are uploaded and ``meta.json`` last marks the stage complete; two nodes may then
compute the same stage at once, which wastes time but not correctness (stages are deterministic).
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from trainables.storage import Storage


def canonical(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)


def spec_hash(spec: dict[str, Any]) -> str:
    """Stable 16-hex-digit name of a spec (sha256 of its canonical JSON)."""
    return hashlib.sha256(canonical(spec).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Artifact:
    kind: str
    hash: str
    location: str  # folder path, or URI on an object store
    meta: dict[str, Any]
    computed: bool  # True when this call computed it, False when it was found in the store
    storage: Storage

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.hash}"

    @property
    def path(self) -> Path:
        """The folder (local stores only)."""
        return Path(self.location)

    def tensors(self, file: str = "tensors.pt") -> dict[str, torch.Tensor]:
        data = self.storage.read_bytes(Storage(self.location).join(file))
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


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
        h = spec_hash({"kind": kind, **spec})
        location = self.storage.join(f"{kind}-{h}")
        meta = self.storage.join(f"{kind}-{h}", "meta.json")
        if not self.storage.exists(meta):
            return None
        return Artifact(kind, h, location, json.loads(self.storage.read_text(meta)), False, self.storage)

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
        found = self.find(kind, spec)
        if found is not None:
            return found
        full = {"kind": kind, **spec}
        h = spec_hash(full)
        name = f"{kind}-{h}"
        if not self.storage.local:
            return self._create_remote(kind, h, full, compute)
        with self._lock(name):
            found = self.find(kind, spec)  # another trial may have finished it while we waited
            if found is not None:
                return found
            tmp = self.root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                start = time.perf_counter()
                meta = dict(compute(tmp))
                meta["compute_seconds"] = time.perf_counter() - start
                _write_json(tmp / "spec.json", full)
                _write_json(tmp / "meta.json", meta)
                os.rename(tmp, self.root / name)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return Artifact(kind, h, str(self.root / name), meta, True, self.storage)

    def _create_remote(self, kind: str, h: str, full: dict[str, Any],
                       compute: Callable[[Path], dict[str, Any]]) -> Artifact:
        """Compute locally, upload the files, then ``meta.json``: its presence marks completion."""
        tmp = self.storage.make_local_tmp()
        try:
            start = time.perf_counter()
            meta = dict(compute(tmp))
            meta["compute_seconds"] = time.perf_counter() - start
            _write_json(tmp / "spec.json", full)
            location = self.storage.join(f"{kind}-{h}")
            self.storage.upload_dir(tmp, location)
            self.storage.write_text(self.storage.join(f"{kind}-{h}", "meta.json"),
                                    json.dumps(meta, indent=1, sort_keys=True, default=str))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return Artifact(kind, h, location, meta, True, self.storage)


def save_tensors(directory: Path, tensors: dict[str, torch.Tensor], file: str = "tensors.pt") -> None:
    torch.save({k: v.detach().cpu() for k, v in tensors.items()}, directory / file)
