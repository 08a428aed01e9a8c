"""The data root and safe names inside it.

Every generated file lives under one data root (default ``data/``). Ids come from
untrusted manifests, so they are turned into file names only through `safe_name`,
and joined only through `DataRoot.path`, which refuses anything that escapes the root.
"""
from __future__ import annotations

import hashlib
import os
import re
from contextlib import contextmanager
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


TMP_TAG = ".tmp-"   # temp siblings are ".<name>.tmp-<pid>"; shardio.recover() deletes what a kill leaves


@contextmanager
def atomic_open(path: Path):
    """A binary file under a temporary sibling name; fsync + rename onto `path` when the block ends.

    Readers see the old file or the new one, never half. If the block raises, the temp file is
    removed; a process killed before the rename leaves it for recovery code to find by TMP_TAG.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_TAG}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, fsync, rename: readers see old or new, never half."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_parquet(path: Path, table) -> None:
    """A pyarrow Table as a parquet file, written atomically (pyarrow imported only here)."""
    import pyarrow.parquet as pq

    with atomic_open(path) as f:
        pq.write_table(table, f)
