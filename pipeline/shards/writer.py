"""Encoding clips to cached features and packing them into new shards (the work half of
`python -m pipeline.shards`; pipeline/shards.py holds the config, the run's order and the CLI).

Encoding runs on a Ray Data actor pool (decode tasks -> encoder actors holding the models) or
sequentially; either writes one feature cache file per clip (shardio.save_cache), so a killed run
resumes without recomputing. write_new_shards packs cached clips into NEW shards only.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.paths import DataRoot
from pipeline.shards import io as shardio
from pipeline.shards.decode import work_units
from pipeline.shards.io import cache_path, load_cache, save_cache

if TYPE_CHECKING:
    from pipeline.shards.config import ShardsConfig


def iter_decoded(unit: list[dict], root: str, cfg: ShardsConfig):
    from pipeline.shards.decode import decode_unit

    return decode_unit(unit, root, cfg.encoder, cfg.stills_frames, cfg.stills_fps)


def encode_item(enc, item: dict, frames, idx, t, cache_dir: Path) -> int:
    save_item(enc, item, enc.encode(frames), idx, t, cache_dir)
    return len(frames)


def save_item(enc, item: dict, feats: dict, idx, t, cache_dir: Path) -> None:
    from pipeline.schema import SCHEMA_VERSION

    feats = {**feats, "frame_index": idx, "time_s": t}
    meta = {"clip_id": item["clip_id"], "video_id": item["video_id"], "origin": item["origin"],
            "source": item.get("url", ""),      # the video's link, or a still portrait's file name
            "fps": float(item["fps"]), "clip_dim": int(feats["clip_emb"].shape[1]),
            "schema_version": SCHEMA_VERSION, **enc.meta()}
    save_cache(cache_path(cache_dir, item["clip_id"]), feats, meta)


def with_identity(feats: dict, meta: dict, item: dict) -> tuple[dict, dict]:
    """Add who is in the clip at packing time (not in the feature cache: identities are decided by curate
    and may be assigned after the clip was encoded). No identity: an empty vector and the video as the
    person, so an identity split still keeps the video's clips together."""
    from pipeline.schema import SCHEMA_VERSION

    emb = item.get("identity")
    feats = {**feats, "identity": np.zeros(0, np.float32) if emb is None else np.asarray(emb, np.float32)}
    meta = {**meta, "identity_id": item.get("identity_id") or f"video:{item['video_id']}",
            "identity_model": item.get("identity_model") or "", "schema_version": SCHEMA_VERSION}
    return feats, meta


# ---------------------------------------------------------------- runners

COLUMNS = ["clip_id", "status", "reason", "nframes", "model_s", "vae_clip_s"]   # one result row per clip


def _failed(it: dict, e: Exception) -> dict:
    return {"clip_id": it["clip_id"], "status": "error", "reason": f"{type(e).__name__}: {e}"[:300], "nframes": 0,
            "model_s": 0.0, "vae_clip_s": 0.0}


def encode_sequential(items, root: DataRoot, cfg: ShardsConfig, models, cache_dir: Path, log) -> list[dict]:
    from pipeline.shards.encode import Encoders

    enc = Encoders(models, cfg.encoder)
    out = []
    try:
        for unit in work_units(items):
            t0 = time.perf_counter()
            for it, got in iter_decoded(unit, root.url, cfg):
                try:   # one bad clip never stops the run
                    if isinstance(got, Exception):
                        raise got
                    k = encode_item(enc, it, *got, cache_dir)
                    out.append({"clip_id": it["clip_id"], "status": "ok", "reason": "", "nframes": k,
                                "model_s": enc.last_s, "vae_clip_s": enc.last_vae_clip_s})
                except Exception as e:
                    out.append(_failed(it, e))
                log(f"encoded {len(out)}/{len(items)} {it['clip_id']} {out[-1]['status']} "
                    f"{time.perf_counter() - t0:.2f}s")
                t0 = time.perf_counter()
    finally:
        enc.close()
    return out


class _Decode:
    """Ray task UDF: one unit (a video's clips) in, one row per decoded clip out, as soon as it is ready."""

    def __init__(self, root: str, cfg: ShardsConfig):
        self.root, self.cfg = root, cfg

    def __call__(self, batch):
        import pandas as pd

        for unit_json in batch["unit"]:
            for it, got in iter_decoded(json.loads(unit_json), self.root, self.cfg):
                row = {"item": json.dumps(it), "status": "ok", "reason": "", "frames": b"", "shape": "[]",
                       "frame_index": b"", "time_s": b""}
                if isinstance(got, Exception):
                    row.update(status="error", reason=f"{type(got).__name__}: {got}"[:300])
                else:
                    frames, idx, t = got
                    row.update(frames=frames.tobytes(), shape=json.dumps(list(frames.shape)),
                               frame_index=idx.astype(np.int64).tobytes(), time_s=t.astype(np.float32).tobytes())
                yield pd.DataFrame([row])


class _EncodeActor:
    """One per Ray actor: models loaded once, then batches of decoded clips."""

    def __init__(self, models, cfg: ShardsConfig, cache_dir: str):
        from pipeline.shards.encode import Encoders

        self.enc, self.cache_dir = Encoders(models, cfg.encoder), cache_dir   # a path or URL

    def __call__(self, batch):
        import pandas as pd

        rows, ok = [], []
        for r in batch.to_dict("records"):
            it = json.loads(r["item"])
            rows.append({"clip_id": it["clip_id"], "status": r["status"], "reason": r["reason"], "nframes": 0,
                         "model_s": 0.0, "vae_clip_s": 0.0})
            if r["status"] == "ok":
                ok.append((len(rows) - 1, it, np.frombuffer(r["frames"], dtype=np.uint8).reshape(json.loads(r["shape"])),
                           np.frombuffer(r["frame_index"], dtype=np.int64), np.frombuffer(r["time_s"], dtype=np.float32)))
        if ok:
            # the frames of all clips in this batch go through the models together (full batches on a GPU)
            try:
                feats = self.enc.encode(np.concatenate([o[2] for o in ok]))
                total, start = sum(len(o[2]) for o in ok), 0
                for k, it, frames, idx, t in ok:
                    n = len(frames)
                    save_item(self.enc, it, {key: v[start:start + n] for key, v in feats.items()}, idx, t,
                              self.cache_dir)
                    rows[k].update(nframes=n, model_s=self.enc.last_s * n / total,
                                   vae_clip_s=self.enc.last_vae_clip_s * n / total)
                    start += n
            except Exception:   # find the culprit: clip by clip, so the others still get their features
                for k, it, frames, idx, t in ok:
                    try:
                        rows[k].update(nframes=encode_item(self.enc, it, frames, idx, t, self.cache_dir),
                                       model_s=self.enc.last_s, vae_clip_s=self.enc.last_vae_clip_s)
                    except Exception as e:
                        rows[k] = _failed(it, e)
        return pd.DataFrame(rows, columns=COLUMNS)


def encode_ray(items, root: DataRoot, cfg: ShardsConfig, models, cache_dir: Path, log) -> list[dict]:
    import os

    import ray
    import torch

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    gpus = cfg.encode_gpus if torch.cuda.is_available() else 0
    units = [{"unit": json.dumps(u)} for u in work_units(items)]
    ds = ray.data.from_items(units, override_num_blocks=len(units))
    ds = ds.map_batches(_Decode(root.url, cfg), batch_size=1, batch_format="pandas", num_cpus=cfg.decode_cpus)
    ds = ds.map_batches(_EncodeActor, fn_constructor_args=(models, cfg, str(cache_dir)), batch_format="pandas",
                        batch_size=cfg.clips_per_batch, concurrency=(1, max(1, cfg.max_actors)),
                        num_cpus=cfg.encode_cpus, num_gpus=gpus)
    out = []
    for r in ds.iter_rows():
        out.append({k: r[k] for k in ("clip_id", "status", "reason")} | {
            "nframes": int(r["nframes"]), "model_s": float(r["model_s"]), "vae_clip_s": float(r["vae_clip_s"])})
        log(f"encoded {len(out)}/{len(items)} {r['clip_id']} {r['status']}")
    return out


# ---------------------------------------------------------------- writing

def write_new_shards(sdir: Path, cfg: ShardsConfig, index, table, ready, cache_dir: Path,
                     log) -> tuple[list[dict], list[dict]]:
    """Pack cached clips into NEW shards numbered after the last existing one; never touch an existing
    shard. A clip whose stored frames show the face mesh on fewer than `cfg.min_landmark_rate` of them is
    not written (curation checked a sample of frames; this is every stored frame of the exact crop): it
    stays unsharded and is checked again, from its cache, on the next run. Each cache is read once.
    Returns (index entries written, dropped [{"clip_id", "video_id", "landmark_rate"}])."""
    import pandas as pd

    nxt = max((shardio.shard_number(s["name"]) for s in index["shards"]), default=-1) + 1
    written, dropped, samples, rows = [], [], [], []

    def flush():
        nonlocal nxt, table, samples, rows
        name = shardio.shard_name(cfg.name, nxt)
        rows = [{**r, "shard": name} for r in rows]
        entry = shardio.write_shard(shardio.loc(sdir, name), samples)
        # the shard is visible and complete; now record it (a kill before this line -> recover() redoes it)
        index["shards"].append(entry)
        shardio.save_index(sdir, index)
        table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True) if len(table) else pd.DataFrame(rows)
        shardio.save_table(sdir, table)
        written.append(entry)
        log(f"wrote {name}: {entry['nsamples']} samples, {entry['bytes']} bytes")
        nxt, samples, rows = nxt + 1, [], []

    for it in ready:
        feats, meta = load_cache(cache_path(cache_dir, it["clip_id"]))
        ok = feats["landmarks_ok"]
        rate = float(np.mean(ok)) if len(ok) else 0.0
        if rate < cfg.min_landmark_rate:
            dropped.append({"clip_id": it["clip_id"], "video_id": it["video_id"], "landmark_rate": round(rate, 4)})
            continue
        samples.append((it["clip_id"], shardio.sample_members(*with_identity(feats, meta, it))))
        rows.append({"clip_id": it["clip_id"], "video_id": it["video_id"], "url": it.get("url", ""),
                     "origin": it["origin"], "nframes": int(len(feats["frame_index"]))})
        if len(samples) == cfg.samples_per_shard:
            flush()
    if samples:
        flush()
    if dropped:
        log(f"dropped {len(dropped)} clips: face mesh on fewer than {cfg.min_landmark_rate:.0%} of their frames")
    return written, dropped
