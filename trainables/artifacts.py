"""A content-addressed artifact store: each pipeline stage is computed once and shared.

A stage is described by a JSON-able spec (its kind plus every field that changes its result,
including the hashes of the stages it starts from).  The canonical JSON of the spec hashes to the
stage's directory name; a stage whose directory exists is complete and is loaded, not recomputed.
Writes go to a temporary directory renamed into place (atomic on one file system), and a file lock
makes concurrent trials that need the same stage compute it once: the second waits, then loads.
"""
from __future__ import annotations

import fcntl
import hashlib
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


def canonical(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)


def spec_hash(spec: dict[str, Any]) -> str:
    """Stable 16-hex-digit name of a spec (sha256 of its canonical JSON)."""
    return hashlib.sha256(canonical(spec).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Artifact:
    kind: str
    hash: str
    path: Path
    meta: dict[str, Any]
    computed: bool  # True when this call computed it, False when it was found in the store

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.hash}"

    def tensors(self, file: str = "tensors.pt") -> dict[str, torch.Tensor]:
        return torch.load(self.path / file, map_location="cpu", weights_only=True)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))


class ArtifactStore:
    """Artifacts under ``root/<kind>-<hash>/`` with ``spec.json``, ``meta.json`` and tensor files."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, kind: str, spec: dict[str, Any]) -> Path:
        return self.root / f"{kind}-{spec_hash({'kind': kind, **spec})}"

    def find(self, kind: str, spec: dict[str, Any]) -> Artifact | None:
        full = {"kind": kind, **spec}
        h = spec_hash(full)
        path = self.root / f"{kind}-{h}"
        if not (path / "meta.json").exists():
            return None
        return Artifact(kind, h, path, json.loads((path / "meta.json").read_text()), computed=False)

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
        return Artifact(kind, h, self.root / name, meta, computed=True)


def save_tensors(directory: Path, tensors: dict[str, torch.Tensor], file: str = "tensors.pt") -> None:
    torch.save({k: v.detach().cpu() for k, v in tensors.items()}, directory / file)
