"""The data root and safe names inside it.

Every generated file lives under one data root (default ``data/``): a local path, or a URL such as
``s3://bucket/prefix`` (pipeline/storage.py has the rules for object storage). Ids come from untrusted
manifests, so they are turned into file names only through `safe_name`, and joined only through
`DataRoot.key` / `DataRoot.path`, which refuse anything that escapes the root. Code that must work on
both kinds of root reads and writes through DataRoot's methods with keys relative to the root
("curate/clips.parquet"); `path` / `dir` / `root` are for local roots only.
"""
from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline import storage

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


class RemoteRootError(ValueError):
    """A step that needs a local data root was given a URL."""


@dataclass(frozen=True)
class DataRoot:
    url: str     # local: the absolute path; remote: "proto://bucket/prefix" (no trailing slash)

    @classmethod
    def of(cls, root: "str | os.PathLike | DataRoot") -> "DataRoot":
        if isinstance(root, DataRoot):
            return root
        proto, rest = storage.split_url(str(root))
        if proto in storage.LOCAL_PROTOCOLS:
            return cls(str(Path(rest).resolve()))
        rest = posixpath.normpath(rest.strip("/"))
        if not rest or rest == "." or rest.startswith(".."):
            raise ValueError(f"data root URL needs a bucket: {root!r}")
        return cls(f"{proto}://{rest}")

    # ------------------------------------------------------------ naming
    @property
    def remote(self) -> bool:
        return storage.is_remote(self.url)

    @property
    def root(self) -> Path:
        """The local directory (local roots only)."""
        if self.remote:
            raise RemoteRootError(f"this step needs a local data root, not {self.url}")
        return Path(self.url)

    def key(self, *parts: str) -> str:
        """Parts joined to a normalised key relative to the root ("" = the root); raise if it would leave it."""
        joined = "/".join(str(p) for p in parts if str(p) not in ("", "."))
        k = posixpath.normpath(joined) if joined else ""
        if k in (".", ""):
            return ""
        if k.startswith("/") or k == ".." or k.startswith("../") or "\\" in k:
            raise ValueError(f"path escapes the data root: {'/'.join(map(str, parts))!r}")
        return k

    def join(self, *parts: str) -> str:
        """The full local path or URL of a key."""
        k = self.key(*parts)
        return f"{self.url}/{k}" if k else self.url

    def path(self, *parts: str) -> Path:
        """Join parts under a local root; raise if the result would leave it (symlinks resolved)."""
        root = self.root
        p = root.joinpath(*parts).resolve()
        if p != root and root not in p.parents:
            raise ValueError(f"path escapes the data root: {'/'.join(parts)!r}")
        return p

    def dir(self, *parts: str) -> Path:
        p = self.path(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def fs(self):
        return storage.filesystem(storage.split_url(self.url)[0])

    def _fp(self, k: str) -> str:
        """A key as the remote filesystem names it (bucket/prefix/key)."""
        return storage.split_url(self.join(k))[1]

    # ------------------------------------------------------------ reading
    def exists(self, k: str) -> bool:
        return self.path(k).exists() if not self.remote else self.fs.exists(self._fp(self.key(k)))

    def isdir(self, k: str) -> bool:
        return self.path(k).is_dir() if not self.remote else self.fs.isdir(self._fp(self.key(k)))

    def open(self, k: str, mode: str = "rb"):
        """A file object for reading (use write_bytes / open_atomic to write)."""
        return open(self.path(k), mode) if not self.remote else self.fs.open(self._fp(self.key(k)), mode)

    def read_bytes(self, k: str) -> bytes:
        """FileNotFoundError when absent, as for a local file."""
        return self.path(k).read_bytes() if not self.remote else self.fs.cat_file(self._fp(self.key(k)))

    def read_text(self, k: str) -> str:
        return self.read_bytes(k).decode()

    def read_parquet(self, k: str, columns: list[str] | None = None):
        import pyarrow.parquet as pq

        with self.open(k) as f:
            return pq.read_table(f, columns=columns)

    def size(self, k: str) -> int:
        return self.path(k).stat().st_size if not self.remote else int(self.fs.size(self._fp(self.key(k))))

    def ls(self, k: str = "", pattern: str = "*") -> list[str]:
        """Names (not keys) of the FILES directly under key `k` matching a glob pattern, sorted; [] if none."""
        import fnmatch

        if not self.remote:
            d = self.path(k)
            return sorted(p.name for p in d.glob(pattern) if p.is_file()) if d.is_dir() else []
        try:
            entries = self.fs.ls(self._fp(self.key(k)), detail=True)
        except FileNotFoundError:
            return []
        names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "file"]
        return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))

    def subdirs(self, k: str = "") -> list[str]:
        """Names of the folders (object stores: common prefixes) directly under key `k`, sorted."""
        if not self.remote:
            d = self.path(k)
            return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
        try:
            entries = self.fs.ls(self._fp(self.key(k)), detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")

    def du(self, k: str = "") -> tuple[int, int]:
        """(files, bytes) under key `k`, recursively."""
        if not self.remote:
            d = self.path(k)
            files = [p for p in d.rglob("*") if p.is_file()] if d.is_dir() else ([d] if d.is_file() else [])
            return len(files), sum(p.stat().st_size for p in files)
        try:
            sizes = self.fs.du(self._fp(self.key(k)), total=False)
        except FileNotFoundError:
            return 0, 0
        return len(sizes), int(sum(sizes.values()))

    @contextmanager
    def local_file(self, k: str):
        """A local path holding the object's bytes, for tools that need a real file (PyAV, tarfile by name):
        the file itself on a local root, else a scratch copy removed when the block ends."""
        if not self.remote:
            yield self.path(k)
            return
        tmp = Path(tempfile.mkdtemp(dir=storage.scratch_dir("stage")))
        try:
            local = tmp / posixpath.basename(self.key(k))
            self.fs.get_file(self._fp(self.key(k)), str(local))
            yield local
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def mirror(self, k: str) -> Path:
        """A local copy of the directory tree at key `k` (model folders loaded by from_pretrained-style
        loaders), kept under the scratch space and refreshed when the remote listing changes."""
        if not self.remote:
            return self.path(k)
        import hashlib
        import json

        try:
            listing = sorted((n, s) for n, s in self.fs.du(self._fp(self.key(k)), total=False).items())
        except FileNotFoundError:
            listing = []
        tag = hashlib.sha1(json.dumps([self.join(k), listing]).encode()).hexdigest()[:16]
        dest = storage.scratch_dir("mirror") / tag
        if not (dest / ".complete").exists():
            shutil.rmtree(dest, ignore_errors=True)
            base = self._fp(self.key(k)).rstrip("/") + "/"
            for name, _ in listing:
                out = dest / name[len(base):]
                out.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(name, str(out))
            dest.mkdir(parents=True, exist_ok=True)        # an absent folder mirrors as an empty one
            (dest / ".complete").write_text("")
        return dest

    def pull_tree(self, k: str, skip: str = "", dest: Path | None = None) -> Path:
        """A writable local working copy of the folder at key `k`: the folder itself when local; else `dest`
        or a scratch folder, holding the remote files (those under `skip` left out), e.g. a run's logs."""
        if not self.remote:
            return self.dir(k)
        import hashlib

        dest = Path(dest) if dest else storage.scratch_dir("work", hashlib.sha1(self.join(k).encode()).hexdigest()[:16])
        dest.mkdir(parents=True, exist_ok=True)
        base = self._fp(self.key(k)).rstrip("/") + "/"
        try:
            names = self.fs.find(base)
        except FileNotFoundError:
            names = []
        for name in names:
            rel = name[len(base):]
            if rel and not (skip and rel.startswith(skip)):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(name, str(dest / rel))
        return dest

    # ------------------------------------------------------------ writing (atomic per object)
    def makedirs(self, k: str = "") -> None:
        """Create a local directory; object stores have none (a no-op there)."""
        if not self.remote:
            self.path(k).mkdir(parents=True, exist_ok=True)

    @contextmanager
    def open_atomic(self, k: str):
        """A binary file whose content appears under key `k` all at once when the block ends, or not at all
        if it raises: local tmp + fsync + rename (atomic_open); remote one upload of the buffered bytes."""
        if not self.remote:
            with atomic_open(self.path(k)) as f:
                yield f
            return
        buf = io.BytesIO()
        yield buf
        self.fs.pipe_file(self._fp(self.key(k)), buf.getvalue())

    def write_bytes(self, k: str, data: bytes) -> None:
        with self.open_atomic(k) as f:
            f.write(data)

    def write_text(self, k: str, text: str) -> None:
        self.write_bytes(k, text.encode())

    def write_parquet(self, k: str, table) -> None:
        import pyarrow.parquet as pq

        with self.open_atomic(k) as f:
            pq.write_table(table, f)

    def append_text(self, k: str, text: str) -> None:
        """Append to a log. Local: a plain append. Object stores cannot append: read + rewrite (the logs
        written this way are small and have one writer)."""
        if not self.remote:
            p = self.path(k)
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "a") as f:
                f.write(text)
            return
        try:
            old = self.read_bytes(k)
        except FileNotFoundError:
            old = b""
        self.write_bytes(k, old + text.encode())

    def put_file(self, local: str | os.PathLike, k: str, move: bool = False) -> None:
        """Publish a finished local file under key `k` (atomic as write_bytes); `move` drops the local one."""
        if not self.remote:
            dest = self.path(k)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if move:
                os.replace(local, dest)
            else:
                with atomic_open(dest) as f, open(local, "rb") as src:
                    shutil.copyfileobj(src, f)
            return
        self.fs.put_file(str(local), self._fp(self.key(k)))
        if move:
            Path(local).unlink()

    def put_tree(self, local_dir: str | os.PathLike, k: str, last: str = "") -> None:
        """Upload a folder; `last` (a relative name) goes after everything else: the folder's commit marker."""
        files = sorted((p.relative_to(local_dir).as_posix() for p in Path(local_dir).rglob("*") if p.is_file()),
                       key=lambda rel: (rel == last, rel))
        for rel in files:
            self.put_file(Path(local_dir) / rel, posixpath.join(k, rel))

    def rm(self, k: str) -> bool:
        """Delete one file/object; False if it was not there."""
        if not self.remote:
            p = self.path(k)
            if not p.is_file():
                return False
            p.unlink()
            return True
        fp = self._fp(self.key(k))
        if not self.fs.isfile(fp):     # an S3 DELETE of a missing key succeeds: ask first, to report truly
            return False
        self.fs.rm_file(fp)
        return True

    def rm_tree(self, k: str) -> list[str]:
        """Delete everything under key `k`; returns the keys of the files deleted."""
        base = self.key(k)
        if not base:
            raise ValueError("refusing to delete the whole data root")
        if not self.remote:
            d = self.path(base)
            if not d.is_dir():
                return []
            gone = sorted(p.relative_to(self.root).as_posix() for p in d.rglob("*") if p.is_file())
            shutil.rmtree(d)
            return gone
        try:
            names = sorted(self.fs.find(self._fp(base)))
        except FileNotFoundError:
            return []
        prefix = self._fp("").rstrip("/") + "/"
        if names:
            self.fs.rm(names)
        return [n[len(prefix):] for n in names]


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
