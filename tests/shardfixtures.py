"""Synthetic WebDataset shards that follow the shard contract (pipeline.schema.SHARD_MEMBERS) exactly:
random latents / CLIP embeddings / landmarks, written as a real tar with webdataset.TarWriter.

Each clip's landmark z coordinate is its clip number, so tests can tell which clip a frame came from;
`write_shards` also returns every clip's arrays (keyed by clip id) for exact comparisons. Two clips per
video (`vid<i // 2>`); `identity_of(i)` names clip i's person (default: none, so the split unit is the video).
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from pipeline.schema import SCHEMA_VERSION


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def make_clip(i: int, rng: np.random.Generator, latent: int = 8, clip_dim: int = 16,
              frames: tuple[int, int] = (10, 20), fps: float = 25.0, nan_latents: bool = False) -> dict:
    T = int(rng.integers(frames[0], frames[1] + 1))
    start = int(rng.integers(0, 500))
    # stored frames are not all consecutive (the shard writer may subsample): irregular gaps of 1-2
    frame_index = start + np.cumsum(np.r_[0, rng.integers(1, 3, T - 1)]).astype(np.int64)
    lm = rng.uniform(0.25, 0.75, (T, 478, 3)).astype(np.float32)
    lm[..., 2] = float(i)                      # the clip number, to trace frames back to their clip
    ok = np.ones(T, dtype=bool)
    ok[rng.random(T) < 0.15] = False
    lm[~ok] = np.nan
    emb = rng.standard_normal((T, clip_dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    mean = rng.standard_normal((T, 4, latent, latent)).astype(np.float16)
    if nan_latents:
        mean[:] = np.nan
    return {
        "latent_mean.npy": mean,
        "latent_std.npy": rng.uniform(0.05, 0.2, (T, 4, latent, latent)).astype(np.float16),
        "clip_emb.npy": emb.astype(np.float16),
        "landmarks.npy": lm,
        "landmarks_ok.npy": ok,
        "frame_index.npy": frame_index,
        "time_s.npy": ((frame_index - start) / fps).astype(np.float32),
        "identity.npy": rng.standard_normal(128).astype(np.float32) * 0.1,   # dlib-like scale
    }


def write_shards(root: Path, n_clips: int = 8, per_shard: int = 4, latent: int = 8, clip_dim: int = 16,
                 frames: tuple[int, int] = (10, 20), seed: int = 0, name: str = "train",
                 schema_version: int = SCHEMA_VERSION, nan_latents: bool = False,
                 drop_member: str | None = None, scaling_factor: float = 0.18215, identity_of=None) -> dict:
    """Write <root>/shards/<name>-NNNNNN.tar + index.json. Returns {"paths": [...], "clips": {id: arrays}}."""
    import webdataset as wds

    out = Path(root) / "shards"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clips, paths, index = {}, [], []
    for s in range(0, n_clips, per_shard):
        path = out / f"{name}-{s // per_shard:06d}.tar"
        with wds.TarWriter(str(path)) as w:
            for i in range(s, min(s + per_shard, n_clips)):
                arrays = make_clip(i, rng, latent, clip_dim, frames, nan_latents=nan_latents)
                cid = hashlib.sha1(f"{name}:{seed}:{i}".encode()).hexdigest()[:16]
                meta = dict(clip_id=cid, video_id=f"vid{i // 2}", origin="video", fps=25.0, size=latent * 8,
                            vae="test-vae", vae_scaling_factor=scaling_factor, clip_model="test-clip",
                            clip_dim=clip_dim, schema_version=schema_version, identity_model="dlib-resnet-v1")
                if identity_of is not None:
                    meta["identity_id"] = identity_of(i)
                sample = {"__key__": cid, "meta.json": json.dumps(meta).encode()}
                sample.update({k: _npy(v) for k, v in arrays.items()})
                if drop_member:
                    sample.pop(drop_member)
                w.write(sample)
                clips[cid] = dict(arrays, number=i, meta=meta)
        data = path.read_bytes()
        index.append(dict(name=path.name, nsamples=min(per_shard, n_clips - s), bytes=len(data),
                          sha256=hashlib.sha256(data).hexdigest()))
        paths.append(path)
    (out / "index.json").write_text(json.dumps({"shards": index}, indent=1))
    return {"paths": paths, "clips": clips}


def truncate(path: Path, keep: float = 0.5) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
