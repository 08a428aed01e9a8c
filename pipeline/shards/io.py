"""WebDataset tar shards: deterministic bytes, atomic publish, index and clip->shard table.

A shard is a plain POSIX (ustar) tar; sample `key` has members `key.<suffix>` for every
suffix of `pipeline.schema.SHARD_MEMBERS`, in that order. Every header is normalised (mtime 0,
uid/gid 0, no user names, mode 0644), so the same samples always give the same bytes and an
opt-out rewrite of one shard leaves the others' sha256 untouched.

Locations (`shard_dir`, a shard, a cache file) are local paths or URLs (pipeline/storage.py). index.json
is the commit marker: a shard exists for readers when the index names it. Shard names are write-once:
new samples go into new numbers, and an opt-out writes a shard's successor under a new name
(faces-000003.tar -> faces-000003.1.tar), commits the index, and only then deletes the old name.
shards.parquet follows the index; `reconcile_table` repairs it when a run died between the two.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np

from pipeline.paths import TMP_TAG, DataRoot, safe_name
from pipeline.schema import SCHEMA_VERSION, SHARD_MEMBERS
from pipeline.storage import open_url

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


def _at(where) -> tuple[DataRoot, str]:
    """A file location (path or URL) -> (its folder as a DataRoot, its name)."""
    s = str(where).rstrip("/")
    parent, _, name = s.rpartition("/")
    return DataRoot.of(parent or ("/" if s.startswith("/") else ".")), name


def loc(folder, name: str) -> str:
    """The location of `name` inside a folder given as a path or URL."""
    return DataRoot.of(folder).join(name)


def exists(where) -> bool:
    d, name = _at(where)
    return d.exists(name)


def read_samples(path, suffixes: set[str] | None = None) -> list[tuple[str, list[tuple[str, bytes]]]]:
    """Inverse of tar_bytes: samples in file order, members in file order.

    `suffixes` keeps only those members (every sample is still listed); the others are seeked
    over, never read."""
    out: list[tuple[str, list[tuple[str, bytes]]]] = []
    with open_url(path) as f, tarfile.open(fileobj=f, mode="r:") as tf:
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


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open_url(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_shard(path, samples) -> dict:
    """Write atomically (DataRoot.write_bytes): a visible shard is always complete."""
    data = tar_bytes(samples)
    d, name = _at(path)
    d.write_bytes(name, data)
    return {"name": name, "nsamples": len(samples), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def shard_name(prefix: str, number: int) -> str:
    return f"{prefix}-{number:06d}.tar"


def shard_number(name: str) -> int:
    return int(name.rsplit("-", 1)[1].split(".", 1)[0])


def successor(name: str) -> str:
    """The write-once name of a rewritten shard: faces-000003.tar -> faces-000003.1.tar -> .2.tar."""
    stem = name[:-len(".tar")]
    base, _, gen = stem.rpartition(".")
    return f"{base}.{int(gen) + 1}.tar" if base and gen.isdigit() else f"{stem}.1.tar"


# ---------------------------------------------------------------- index.json + shards.parquet

SHARDS_COLUMNS = ["clip_id", "video_id", "url", "origin", "shard", "nframes"]


def load_index(shard_dir) -> dict:
    try:
        return json.loads(DataRoot.of(shard_dir).read_text("index.json"))
    except FileNotFoundError:
        return {"schema_version": SCHEMA_VERSION, "encoder": None, "shards": []}


def save_index(shard_dir, index: dict) -> None:
    """The commit: from this write on, readers see exactly the shards the index names."""
    index["shards"] = sorted(index["shards"], key=lambda s: s["name"])
    DataRoot.of(shard_dir).write_text("index.json", json.dumps(index, indent=1, sort_keys=True) + "\n")


def load_table(shard_dir):
    import pandas as pd

    d = DataRoot.of(shard_dir)
    if d.exists("shards.parquet"):
        with d.open("shards.parquet") as f:
            return pd.read_parquet(f)
    return pd.DataFrame({c: pd.Series(dtype="int64" if c == "nframes" else "object") for c in SHARDS_COLUMNS})


def save_table(shard_dir, table) -> None:
    import pyarrow as pa

    t = table.sort_values(["shard", "clip_id"]).reset_index(drop=True)
    schema = pa.schema([(c, pa.int64() if c == "nframes" else pa.string()) for c in SHARDS_COLUMNS])
    DataRoot.of(shard_dir).write_parquet(
        "shards.parquet", pa.Table.from_pandas(t[SHARDS_COLUMNS], schema=schema, preserve_index=False))


def rewrite_without(shard_dir, index: dict, table, clip_ids: set[str]) -> tuple[list[dict], list[dict]]:
    """Write every shard holding one of `clip_ids` again without them, under its successor name (a shard left
    empty gets none); commit index.json, update shards.parquet, and only then delete the superseded names
    (write-once: nothing is overwritten in place, a crash leaves either the old or the new set committed).
    `index` is updated in place. Returns (rewritten, deleted) records for the audit."""
    mine = table[table["clip_id"].isin(clip_ids)]
    rewritten, deleted, renamed = [], [], {}
    by_name = {s["name"]: s for s in index["shards"]}
    for name in sorted(set(mine["shard"])):
        path = loc(shard_dir, name)
        old = by_name.get(name)
        kept = [s for s in read_samples(path) if s[0] not in clip_ids] if exists(path) else []
        if kept:
            new = successor(name)
            entry = write_shard(loc(shard_dir, new), kept)
            rewritten.append({"name": new, "old_name": name, "old_sha256": old and old["sha256"],
                              "new_sha256": entry["sha256"], "nsamples": entry["nsamples"]})
            index["shards"] = [entry if s["name"] == name else s for s in index["shards"]]
            renamed[name] = new
        else:
            deleted.append({"name": name, "old_sha256": old and old["sha256"]})
            index["shards"] = [s for s in index["shards"] if s["name"] != name]
    if len(mine):
        save_index(shard_dir, index)        # the commit: readers see the successors from here on
        rest = table[~table["clip_id"].isin(clip_ids)]
        save_table(shard_dir, rest.assign(shard=rest["shard"].replace(renamed)))
        for name in sorted(set(mine["shard"])):
            DataRoot.of(shard_dir).rm(name)   # superseded or emptied: only after the commit
    return rewritten, deleted


def recover(shard_dir, index: dict) -> list[str]:
    """Drop what a killed run can leave: temp files, and tars written but never indexed (a new shard, or an
    opt-out successor whose index never came, or a superseded shard the index no longer names)."""
    d = DataRoot.of(shard_dir)
    removed = []
    known = {s["name"] for s in index["shards"]}
    for name in d.ls("", f".*{TMP_TAG}*"):
        d.rm(name)
        removed.append(name)
    for name in d.ls("", "*.tar"):
        if name not in known:
            d.rm(name)   # a new shard is rewritten (to the same bytes) from the cache by this run
            removed.append(name)
    return removed


def reconcile_table(shard_dir, index: dict, table, items: list[dict]):
    """shards.parquet as the committed index says: rows of shards it does not name are dropped, and the
    rows of named shards the table lacks (a run died between index and table) are read back from the
    shards' meta.json (url from the old rows or the work items). Returns (table, rows changed)."""
    import pandas as pd

    names = [s["name"] for s in index["shards"]]
    stale = ~table["shard"].isin(names)
    missing = [n for n in names if n not in set(table["shard"])]
    if not stale.any() and not missing:
        return table, 0
    urls = {**{it["clip_id"]: it.get("url", "") for it in items}, **dict(zip(table["clip_id"], table["url"]))}
    rows = []
    for name in missing:
        for key, members in read_samples(loc(shard_dir, name), {"meta.json", "frame_index.npy"}):
            m = dict(members)
            meta = json.loads(m["meta.json"])
            nframes = len(np.load(io.BytesIO(m["frame_index.npy"]), allow_pickle=False))
            rows.append({"clip_id": key, "video_id": meta["video_id"], "url": urls.get(key, "") or "",
                         "origin": meta.get("origin", "video"), "shard": name, "nframes": nframes})
    kept = table[~stale]
    out = pd.concat([kept, pd.DataFrame(rows, columns=SHARDS_COLUMNS)], ignore_index=True) if rows else kept
    return out.reset_index(drop=True), int(stale.sum()) + len(rows)


# ---------------------------------------------------------------- per-clip feature cache (npz, no pickle)

def cache_name(clip_id: str) -> str:
    return f"{safe_name(clip_id)}.npz"


def cache_path(cache_dir, clip_id: str) -> str:
    """The location (path or URL) of a clip's cached features."""
    return loc(cache_dir, cache_name(clip_id))


def save_cache(path, feats: dict, meta: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8), **feats)
    d, name = _at(path)
    d.write_bytes(name, buf.getvalue())


def load_cache(path) -> tuple[dict, dict]:
    with open_url(path) as f:
        raw = f.read()
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        feats = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(z["meta"].tobytes().decode())
    return feats, meta
