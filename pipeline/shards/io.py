"""WebDataset tar shards: deterministic bytes, atomic publish, index and clip->shard table.

A shard is a plain POSIX (ustar) tar; sample `key` has members `key.<suffix>` for every
suffix of `pipeline.schema.SHARD_MEMBERS`, in that order. Every header is normalised (mtime 0,
uid/gid 0, no user names, mode 0644), so the same samples always give the same bytes and an
opt-out rewrite of one shard leaves the others' sha256 untouched.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np

from pipeline.paths import TMP_TAG, atomic_write_bytes, atomic_write_parquet, atomic_write_text, safe_name
from pipeline.schema import SCHEMA_VERSION, SHARD_MEMBERS

MEMBER_ORDER = list(SHARD_MEMBERS)
NPY_DTYPES = {"latent_mean.npy": np.float16, "latent_std.npy": np.float16, "clip_emb.npy": np.float16,
              "landmarks.npy": np.float32, "landmarks_ok.npy": np.bool_, "frame_index.npy": np.int64,
              "time_s.npy": np.float32, "identity.npy": np.float32}


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def sample_members(feats: dict, meta: dict) -> list[tuple[str, bytes]]:
    """The (suffix, bytes) pairs of one sample, with the contract dtypes."""
    out = []
    for suffix in MEMBER_ORDER:
        if suffix == "meta.json":
            out.append((suffix, json.dumps(meta, sort_keys=True).encode()))
        else:
            out.append((suffix, npy_bytes(np.asarray(feats[suffix[:-4]]).astype(NPY_DTYPES[suffix], copy=False))))
    return out


def _info(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o644, 0, 0, "", ""
    return ti


def tar_bytes(samples: list[tuple[str, list[tuple[str, bytes]]]]) -> bytes:
    """[(key, [(suffix, data), ...]), ...] -> deterministic tar bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for key, members in samples:
            for suffix, data in members:
                tf.addfile(_info(f"{key}.{suffix}", len(data)), io.BytesIO(data))
    return buf.getvalue()


def read_samples(path: Path, suffixes: set[str] | None = None) -> list[tuple[str, list[tuple[str, bytes]]]]:
    """Inverse of tar_bytes: samples in file order, members in file order.

    `suffixes` keeps only those members (every sample is still listed); the others are seeked
    over, never read."""
    out: list[tuple[str, list[tuple[str, bytes]]]] = []
    with tarfile.open(path, mode="r:") as tf:
        for m in tf:
            if not m.isfile():
                continue
            base = m.name.rsplit("/", 1)[-1]
            key, suffix = base.split(".", 1)
            if not out or out[-1][0] != key:
                out.append((key, []))
            if suffixes is None or suffix in suffixes:
                out[-1][1].append((suffix, tf.extractfile(m).read()))
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_shard(path: Path, samples) -> dict:
    """Write atomically (paths.atomic_write_bytes): a visible shard is always complete."""
    data = tar_bytes(samples)
    atomic_write_bytes(path, data)
    return {"name": path.name, "nsamples": len(samples), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def shard_name(prefix: str, number: int) -> str:
    return f"{prefix}-{number:06d}.tar"


def shard_number(name: str) -> int:
    return int(name.rsplit("-", 1)[1].split(".", 1)[0])


# ---------------------------------------------------------------- index.json + shards.parquet

SHARDS_COLUMNS = ["clip_id", "video_id", "url", "origin", "shard", "nframes"]


def load_index(shard_dir: Path) -> dict:
    p = shard_dir / "index.json"
    if p.exists():
        return json.loads(p.read_text())
    return {"schema_version": SCHEMA_VERSION, "encoder": None, "shards": []}


def save_index(shard_dir: Path, index: dict) -> None:
    index["shards"] = sorted(index["shards"], key=lambda s: s["name"])
    atomic_write_text(shard_dir / "index.json", json.dumps(index, indent=1, sort_keys=True) + "\n")


def load_table(shard_dir: Path):
    import pandas as pd

    p = shard_dir / "shards.parquet"
    if p.exists():
        return pd.read_parquet(p)
    return pd.DataFrame({c: pd.Series(dtype="int64" if c == "nframes" else "object") for c in SHARDS_COLUMNS})


def save_table(shard_dir: Path, table) -> None:
    import pyarrow as pa

    t = table.sort_values(["shard", "clip_id"]).reset_index(drop=True)
    schema = pa.schema([(c, pa.int64() if c == "nframes" else pa.string()) for c in SHARDS_COLUMNS])
    atomic_write_parquet(shard_dir / "shards.parquet",
                         pa.Table.from_pandas(t[SHARDS_COLUMNS], schema=schema, preserve_index=False))


def rewrite_without(sdir: Path, index: dict, table, clip_ids: set[str]) -> tuple[list[dict], list[dict]]:
    """Rewrite only the shards holding `clip_ids` without them (a shard left empty is deleted); update
    index.json and shards.parquet. Returns (rewritten, deleted) records for the audit."""
    mine = table[table["clip_id"].isin(clip_ids)]
    rewritten, deleted = [], []
    by_name = {s["name"]: s for s in index["shards"]}
    for name in sorted(set(mine["shard"])):
        path = sdir / name
        old = by_name.get(name)
        kept = [s for s in read_samples(path) if s[0] not in clip_ids] if path.exists() else []
        if kept:
            entry = write_shard(path, kept)
            rewritten.append({"name": name, "old_sha256": old and old["sha256"], "new_sha256": entry["sha256"],
                              "nsamples": entry["nsamples"]})
            index["shards"] = [entry if s["name"] == name else s for s in index["shards"]]
        else:
            path.unlink(missing_ok=True)
            deleted.append({"name": name, "old_sha256": old and old["sha256"]})
            index["shards"] = [s for s in index["shards"] if s["name"] != name]
    if len(mine):
        save_index(sdir, index)
        save_table(sdir, table[~table["clip_id"].isin(clip_ids)])
    return rewritten, deleted


def recover(shard_dir: Path, index: dict) -> list[str]:
    """Drop what a killed run can leave: temp files, and tars renamed but never indexed."""
    removed = []
    known = {s["name"] for s in index["shards"]}
    for p in sorted(shard_dir.glob(f".*{TMP_TAG}*")):
        p.unlink()
        removed.append(p.name)
    for p in sorted(shard_dir.glob("*.tar")):
        if p.name not in known:
            p.unlink()   # rewritten (to the same bytes) from the cache by this run
            removed.append(p.name)
    return removed


# ---------------------------------------------------------------- per-clip feature cache (npz, no pickle)

def cache_path(cache_dir: Path, clip_id: str) -> Path:
    return cache_dir / f"{safe_name(clip_id)}.npz"


def save_cache(path: Path, feats: dict, meta: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8), **feats)
    atomic_write_bytes(path, buf.getvalue())


def load_cache(path: Path) -> tuple[dict, dict]:
    with np.load(path, allow_pickle=False) as z:
        feats = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(z["meta"].tobytes().decode())
    return feats, meta
