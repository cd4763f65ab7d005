"""Content hashes, in one place: the canonical JSON of a spec and the name it hashes to
(``spec_hash``: artifacts' folders, run keys, the study's hash), and the sha256 that artifacts,
checkpoints and record files carry to be checked when read.  Standard library only."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical(obj: Any) -> str:
    """``obj``'s JSON with sorted keys and no spaces: the same text for the same data, whatever its order."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def spec_hash(spec: dict[str, Any]) -> str:
    """Stable 16-hex-digit name of a spec (sha256 of its canonical JSON)."""
    return sha256(canonical(spec))[:16]
