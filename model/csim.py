"""CSIM as reenactment papers report it: identity similarity, plus the labels every printout uses.

CSIM = cosine similarity of face-identity embeddings (pipeline/curate/identity.py: dlib's face-recognition
ResNet offline, the real model shipped in `face-recognition-models`) between the source and every
generated frame, reported as the minimum and the mean over frames. Generated frames are face crops
made by curation's rule (face centred, ~0.45 of the side), so the face is located by the rule, not by a
detector that might miss a blurry output. Scale, measured here with dlib's raw descriptors: the same
person 0.99-1.00 (photo mirrored or halved; per-clip means on the test corpus >= 0.988), different people
0.81-0.91 (the astronaut, Grace Hopper, the six of insightface's group photo; corpus <= 0.891). dlib's
descriptors share a large common component, so the whole scale is compressed: a CSIM below ~0.93 already
means another person, and differences matter in the second decimal.

The CLIP similarity the supplementary calls CSIM keeps its own name, `CLIP-sim`. Computed with the
offline tiny models its CLIP has random weights: it then scores a face against other people or noise at
0.95-0.99, and every table and printout says "untrained" next to it.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1)
def identity_encoder():
    """The default identity encoder (dlib), loaded once per process."""
    from pipeline.curate.identity import make_encoder

    return make_encoder()


def identity_of_crops(frames: np.ndarray) -> np.ndarray:
    """(T, D) identity embeddings of face crops (T, S, S, 3) uint8."""
    return identity_encoder().crops(list(frames))


def identity_csim(source: np.ndarray, frame_embs: np.ndarray) -> dict:
    """{"min", "mean"} over frames of cos(source identity, frame identity); both None without a source."""
    from pipeline.curate.identity import cosine_similarity

    src = np.asarray(source, np.float64)
    if src.size == 0 or not len(frame_embs):
        return {"min": None, "mean": None}
    c = cosine_similarity(np.asarray(frame_embs, np.float64), src[None])
    return {"min": float(c.min()), "mean": float(c.mean())}


def source_identity(sample: dict) -> np.ndarray:
    """A shard sample's identity (identity.npy) when made by the default encoder, else an empty vector."""
    emb = np.asarray(sample.get("identity.npy", np.zeros(0)), np.float32)
    model = sample.get("meta.json", {}).get("identity_model", "")
    return emb if emb.size and model == identity_encoder().name else np.zeros(0, np.float32)


def clip_label(clip_model_label: str) -> str:
    """How a CLIP similarity is named in tables: 'CLIP-sim', with 'untrained' when the CLIP has random
    weights (the offline tiny models: build_tiny_models never trains CLIP)."""
    if clip_model_label.startswith("tiny-"):
        return "CLIP-sim (untrained tiny CLIP, random weights: not a similarity)"
    return "CLIP-sim"


def csim_label() -> str:
    return f"CSIM (identity, {identity_encoder().name})"
