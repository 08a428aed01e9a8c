"""Shard loader: an infinite, resampled WebDataset stream of F-frame training sequences.

Sharding: each rank takes shards[rank::world] and each DataLoader worker a slice of those (all shards
when there are fewer shards than ranks/workers, since a rank with no shard would hang DDP), then
resamples its shards forever with an RNG seeded from (seed, rank, worker, start_step): a resumed run
starts a fresh stream instead of replaying the first one (webdataset has no mid-epoch state).

Safety: only .npy (allow_pickle=False) and .json members are decoded; anything else is ignored.
Robustness: a missing, truncated or corrupt shard is logged, counted and never resampled again by that
worker; a sample that fails to decode is logged, counted and skipped; training goes on. The counts are
the worker's `WorkerCounters`, handed out beside every batch it collates. A schema mismatch is caught
before training (`check_schema`) with an error naming what differs.

Conditioning dropout (data.cond_dropout = p, data.dropout_mode):
  joint (the paper's, supplementary §4): landmarks and CLIP are dropped together with probability p, never
    one alone. The model learns two modes, none and CLIP+landmarks: enough for classifier-free guidance;
    landmarks-only and CLIP-only inference are modes it never saw ("performs poorly", Table 1).
  independent (ours): each is dropped on its own with probability p (both with p^2), so all four guidance
    modes are trained, at the price of fewer fully conditioned sequences ((1-p)^2 instead of 1-p).
"""
from __future__ import annotations

import dataclasses
import glob
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.paths import DataRoot
from pipeline.schema import SCHEMA_VERSION, SHARD_MEMBERS
from pipeline.storage import is_remote, register_webdataset

log = logging.getLogger("reenactfaces.data")


class SchemaError(ValueError):
    pass


@dataclass(frozen=True)
class ShardDims:
    """What the shards hold, read by `check_schema` (config.with_shard_dims adopts it for 0-valued keys)."""
    latent_size: int
    latent_channels: int
    clip_dim: int
    meta: dict           # the first sample's meta.json (encoder labels, scaling factor, schema version)


@dataclass
class WorkerCounters:
    """Running totals of one loader worker (one rank's DataLoader process), read beside each batch."""
    worker: int = 0
    bad_shards: int = 0      # shards found unreadable so far (never resampled by this worker)
    bad_samples: int = 0     # samples that failed to decode so far (skipped)


def resolve_shards(spec: str, data_root: Path | str | None = None) -> list[str]:
    """Shard URLs from: "" (= <data>/shards), a directory (index.json or *.tar), a .txt list of URLs,
    a brace pattern (train-{000000..000009}.tar), a glob, or a comma-separated list. The data root and a
    directory may be object-store URLs (s3://bucket/prefix): the index, the only thing trusted there,
    names the shards, which are then streamed through fsspec."""
    if not spec:
        if data_root is None:
            raise SchemaError("no shards given (data.shards is empty and no data root)")
        spec = DataRoot.of(data_root).join("shards")
    if is_remote(spec) and not spec.endswith((".tar", ".txt")) and not any(ch in spec for ch in "{*?[,"):
        d = DataRoot.of(spec)
        if not d.exists("index.json"):
            raise SchemaError(f"{spec}: no index.json (on object storage only indexed shards are read)")
        names = [s["name"] for s in json.loads(d.read_text("index.json"))["shards"]]
        if any("/" in n or "\\" in n or n.startswith(".") for n in names):
            raise SchemaError(f"{spec}/index.json: shard names must be plain file names")
        return [d.join(n) for n in names]
    p = Path(spec)
    if p.is_dir():
        idx = p / "index.json"
        if idx.is_file():
            names = [s["name"] for s in json.loads(idx.read_text())["shards"]]
            bad = [n for n in names if "/" in n or "\\" in n or n.startswith(".")]
            if bad:
                raise SchemaError(f"{idx}: shard names must be plain file names, got {bad[:3]}")
            return [str(p / n) for n in names]
        return sorted(str(x) for x in p.glob("*.tar"))
    if p.suffix == ".txt" and p.is_file():
        return [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if "{" in spec:
        import webdataset as wds
        return list(wds.shardlists.expand_urls(spec))
    if any(ch in spec for ch in "*?["):
        return sorted(glob.glob(spec))
    return [s for s in spec.split(",") if s]


def decode(raw: dict) -> dict:
    """Raw tar members -> arrays. Never unpickles: np.load(allow_pickle=False) and json only."""
    out = {"__key__": raw["__key__"]}
    for k, v in raw.items():
        if k.endswith(".npy"):
            out[k] = np.load(io.BytesIO(v), allow_pickle=False)
        elif k.endswith(".json"):
            out[k] = json.loads(v)
    return out


def draw_dropout(rng: np.random.Generator, p: float, mode: str) -> tuple[bool, bool]:
    """(drop_landmarks, drop_clip) for one training sequence; see the module docstring for the modes."""
    if mode not in ("joint", "independent"):
        raise ValueError(f"dropout mode must be joint|independent, got {mode!r}")
    # Both modes draw two numbers, so runs that differ only in the mode (same seed) see the very same
    # sequences, frames and noise: the dropout flags are the one difference between them.
    u_lm, u_clip = rng.random(2)
    drop_lm = bool(u_lm < p)
    return (drop_lm, drop_lm) if mode == "joint" else (drop_lm, bool(u_clip < p))


def make_sequence(s: dict, frames: int, rng: np.random.Generator, cond_dropout: float, dropout_mode: str,
                  clean_reference_p: float = 0.0, max_offset_s: float = 0.0) -> dict:
    """One training sequence from one decoded clip: F stored frames at random (non-uniform spacing).
    Frame 0 is a random reference frame; offsets are seconds relative to it (negative = earlier),
    clamped to +-max_offset_s when > 0 (the range anchored sampling clamps to; a clip longer than it is
    the only case it changes). `clean_reference`: slot 0 goes to the model clean and out of the loss
    (drawn with probability clean_reference_p; no draw at all when 0, so older runs' streams stay the same)."""
    T = len(s["time_s.npy"])
    idx = rng.choice(T, size=frames, replace=T < frames)                  # (F,) stored-frame positions
    idx = np.r_[idx[0], np.sort(idx[1:])]                                  # reference first, rest in time order
    time_s = s["time_s.npy"].astype(np.float32)
    mean = s["latent_mean.npy"][idx].astype(np.float32)                    # (F, 4, h, w)
    std = s["latent_std.npy"][idx].astype(np.float32)
    eps = rng.standard_normal(mean.shape, dtype=np.float32)
    lm = np.nan_to_num(s["landmarks.npy"][idx].astype(np.float32), nan=0.0)  # (F, 478, 3)
    src = int(rng.integers(T))                                             # source frame for CLIP
    drop_lm, drop_clip = draw_dropout(rng, cond_dropout, dropout_mode)
    clean_ref = bool(rng.random() < clean_reference_p) if clean_reference_p > 0 else False
    offsets = time_s[idx] - time_s[idx[0]]
    if max_offset_s > 0:
        offsets = np.clip(offsets, -max_offset_s, max_offset_s)
    return {
        "latents": (mean + std * eps) * np.float32(s["meta.json"]["vae_scaling_factor"]),
        "landmarks": lm,
        "landmarks_ok": s["landmarks_ok.npy"][idx].astype(bool),
        "offsets": offsets,
        "clip_emb": s["clip_emb.npy"][src].astype(np.float32),
        "drop_landmarks": drop_lm,
        "drop_clip": drop_clip,
        "clean_reference": clean_ref,
        "frames": idx.astype(np.int64),
        "key": s["__key__"],
    }


def _read_shard(url: str, errors: list):
    import webdataset as wds

    if is_remote(url):
        register_webdataset()    # s3:// and friends through fsspec (webdataset has no opener of its own)
    return wds.tarfile_samples([{"url": url}], handler=lambda exn: errors.append(exn) or True)


def check_schema(urls: list[str], cfg) -> ShardDims:
    """Read the first sample of the first readable shard; raise SchemaError on any contract mismatch.
    model.latent_size / model.clip_dim set to 0 accept what the shards hold. The config is not changed:
    the caller adopts the returned dimensions (model.config.with_shard_dims)."""
    if not urls:
        raise SchemaError("no shards found")
    for url in urls:
        errors: list = []
        first = next(iter(_read_shard(url, errors)), None)
        if first is None or errors:  # errors before the first sample: a partial sample of a broken shard
            log.warning("schema check: skipping unreadable shard %s (%s)", url, errors[:1])
            continue
        missing = sorted(set(SHARD_MEMBERS) - set(first))
        if missing:
            raise SchemaError(f"{url}: sample {first['__key__']} lacks members {missing} (shard contract v{SCHEMA_VERSION})")
        s = decode(first)
        meta = s["meta.json"]
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise SchemaError(f"{url}: schema_version {meta.get('schema_version')!r}, trainer expects {SCHEMA_VERSION}")
        got = tuple(int(n) for n in s["latent_mean.npy"].shape[1:])              # (C, h, w) per frame
        clip_dim = int(meta.get("clip_dim", s["clip_emb.npy"].shape[-1]))
        m = cfg.model
        size = m.latent_size or got[-1]   # 0 = adopt the shards' latent size
        want = (m.latent_channels, size, size)
        if got != want:
            raise SchemaError(f"{url}: latents are {got} per frame, config model expects {want} "
                              f"(set model.latent_size / latent_channels)")
        if m.clip_dim and clip_dim != m.clip_dim:
            raise SchemaError(f"{url}: clip_dim {meta.get('clip_dim')} != model.clip_dim {m.clip_dim}")
        return ShardDims(latent_size=got[-1], latent_channels=got[0], clip_dim=clip_dim, meta=meta)
    raise SchemaError(f"none of the {len(urls)} shards is readable (first: {urls[0]})")


def _meta(raw: dict) -> dict | None:
    """The sample's meta.json (video_id, identity_id: what the held-out split tests), None if unreadable."""
    try:
        return dict(json.loads(raw["meta.json"]))
    except Exception:
        return None  # make_sequence/decode reports the broken sample


class SequenceStream(IterableDataset):
    """`exclude`: held-out people (model.split.HeldOut); their clips are skipped, and a shard that holds
    nothing else is not read again by this worker."""

    def __init__(self, urls: list[str], cfg, rank: int = 0, world: int = 1, start_step: int = 0, exclude=None):
        self.urls, self.cfg, self.rank, self.world, self.start_step = urls, cfg, rank, world, start_step
        self.exclude = exclude

    def __iter__(self):
        wi = get_worker_info()
        wid, nw = (wi.id, wi.num_workers) if wi else (0, 1)
        mine = self.urls[self.rank::self.world] if len(self.urls) >= self.world else list(self.urls)
        mine = mine[wid::nw] if len(mine) >= nw else mine
        rng = np.random.default_rng([self.cfg.train.seed, self.rank, wid, self.start_step])
        d, F = self.cfg.data, self.cfg.model.frames
        self.counters = counters = WorkerCounters(worker=wid)   # this worker's copy of the stream owns it
        bad_shards: set[str] = set()
        held_only: set[str] = set()   # shards with no training clip (every clip held out)
        buf: list[dict] = []
        while True:
            live = [u for u in mine if u not in bad_shards and u not in held_only]
            if not live:
                why = "unreadable" if bad_shards else "held out for evaluation"
                raise RuntimeError(f"rank {self.rank} worker {wid}: every shard is {why}: {mine[:3]}")
            url = live[int(rng.integers(len(live)))]
            errors: list = []
            used = 0
            for raw in _read_shard(url, errors):
                if self.exclude is not None and _meta(raw) in self.exclude:
                    continue
                used += 1
                try:
                    seq = make_sequence(decode(raw), F, rng, d.cond_dropout, d.dropout_mode,
                                        d.clean_reference_p, self.cfg.model.max_offset_s)
                except Exception as exn:  # corrupt/incomplete sample: skip it, keep training
                    counters.bad_samples += 1
                    log.warning("skipping sample %s in %s: %r", raw.get("__key__"), url, exn)
                    continue
                buf.append(seq)
                if len(buf) >= max(1, d.shuffle_buffer):
                    yield buf.pop(int(rng.integers(len(buf))))
            if not used and not errors:
                held_only.add(url)
            if errors:
                bad_shards.add(url)
                counters.bad_shards = len(bad_shards)
                log.warning("skipping shard %s (%d/%d bad in this worker): %s", url, len(bad_shards), len(mine),
                            errors[0])


class LocalBatches(IterableDataset):
    """A stream's sequences collated into local batches inside the loader worker that reads them, each
    yielded as (batch, a copy of that worker's WorkerCounters)."""

    def __init__(self, stream: SequenceStream, size: int):
        self.stream, self.size = stream, size

    def __iter__(self):
        from torch.utils.data import default_collate

        samples = iter(self.stream)
        while True:
            batch = default_collate([next(samples) for _ in range(self.size)])
            yield batch, dataclasses.replace(self.stream.counters)


def make_batches(urls: list[str], cfg, rank: int = 0, world: int = 1, start_step: int = 0, exclude=None):
    """Iterator of (local batch, WorkerCounters) for this rank: the batch a dict of tensors (plus a "key"
    list), the counters those of the loader worker that made it.

    With data.overfit_batches = K > 0, K global batches are drawn once from a fixed stream and cycled
    (each rank slicing its part), so the run is identical for any world size and across resumes."""
    B = cfg.train.global_batch
    if B % world:
        raise ValueError(f"train.global_batch {B} not divisible by world size {world}")
    local = B // world
    K = cfg.data.overfit_batches
    if K > 0:
        stream = SequenceStream(urls, cfg, 0, 1, 0, exclude)
        draws = iter(LocalBatches(stream, B))
        fixed = [next(draws) for _ in range(K)]
        fixed = [({k: v[rank * local:(rank + 1) * local] for k, v in b.items()}, n) for b, n in fixed]

        def cycle():
            step = start_step
            while True:
                yield fixed[step % K]
                step += 1
        return cycle()
    nw = cfg.data.num_workers
    # batch_size=None: the workers collate (LocalBatches), so their counters travel beside each batch
    return iter(DataLoader(LocalBatches(SequenceStream(urls, cfg, rank, world, start_step, exclude), local),
                           batch_size=None, num_workers=nw, persistent_workers=nw > 0,
                           pin_memory=torch.cuda.is_available()))
