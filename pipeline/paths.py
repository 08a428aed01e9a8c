"""The data root and safe names inside it.

Every generated file lives under one data root (default ``data/``). Ids come from
untrusted manifests, so they are turned into file names only through `safe_name`,
and joined only through `DataRoot.path`, which refuses anything that escapes the root.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(raw: str, max_len: int = 80) -> str:
    """A file-name-safe, deterministic form of an untrusted id.

    Keeps [A-Za-z0-9_.-], replaces the rest, never starts with a dot, and appends a short
    hash whenever the id had to change, so two different ids never collide.
    """
    if not raw:
        raise ValueError("empty id")
    cleaned = _SAFE.sub("_", raw).lstrip(".")[:max_len] or "_"
    if cleaned != raw:
        cleaned = f"{cleaned[: max_len - 9]}-{hashlib.sha1(raw.encode()).hexdigest()[:8]}"
    return cleaned


@dataclass(frozen=True)
class DataRoot:
    root: Path

    @classmethod
    def of(cls, root: str | os.PathLike) -> "DataRoot":
        return cls(Path(root).resolve())

    def path(self, *parts: str) -> Path:
        """Join parts under the root; raise if the result would leave it."""
        p = self.root.joinpath(*parts).resolve()
        if p != self.root and self.root not in p.parents:
            raise ValueError(f"path escapes the data root: {'/'.join(parts)!r}")
        return p

    def dir(self, *parts: str) -> Path:
        p = self.path(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, fsync, rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
