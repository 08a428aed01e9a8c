"""The held-out clips an evaluation runs on: decoded from the shards by the checkpoint's split
record (model/split.py), cut to driving inputs, and their real frames decoded. Shared by
`make eval` (evaluate.py) and the consistency study (consistency.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def load_heldout(data: Path, cfg, record: dict | None) -> tuple[list[dict], str]:
    """Decoded held-out samples (all shard members) sorted by clip id, and a note on the split.

    `record`: the checkpoint's held-out record (model.split.HeldOut.record; a video split from before
    identity splits loads with a warning); None for a checkpoint that predates records (the identity rule
    is recomputed from its config and the note says it may have seen them)."""
    from model.data import decode, resolve_shards
    from model.split import HeldOut, catalog, heldout_units, shard_samples
    from pipeline.shards.io import read_samples

    urls = resolve_shards("", data)
    by_shard = shard_samples(urls) or {}      # video ids and people from the meta members only: nothing decoded
    if not catalog(by_shard):
        raise SystemExit(f"evaluate: error: no shard samples under {data / 'shards'}")
    if record is None:
        f, m = cfg.data.heldout_fraction, cfg.data.heldout_min_clips
        held = HeldOut(set(), f, m, heldout_units(catalog(by_shard, "person"), f, m))
        note = (f"split recomputed (sha1(identity) < {f}, topped up to {m} clips): WARNING the checkpoint "
                f"predates held-out records and may have trained on these clips")
    else:
        held, warn = HeldOut.from_record(record)
        if held.rule_only:
            note = f"split: sha1(identity) < {record['fraction']}, excluded from training"
        elif not held.people and not held.videos:
            raise SystemExit("evaluate: error: the checkpoint's training run held out nobody "
                             "(data.heldout_fraction=0): every shard clip was trained on")
        elif record.get("unit") == "identity":
            note = (f"split: the {len(held.people)} people the training run held out"
                    + (f" (and {len(held.videos)} videos of an older video split)" if held.videos else ""))
        else:
            note = f"split: the {len(held.videos)} videos the training run held out; {warn}"
            print(f"evaluate: {warn}", flush=True)
    out = []
    for url in urls:      # decode only the held-out samples, reading only shards that hold one
        if any(s in held for s in by_shard.get(url, [])):
            for key, members in read_samples(Path(url)):
                raw = dict(members)
                if json.loads(raw["meta.json"]) in held:
                    out.append(decode({"__key__": key, **raw}))
    out.sort(key=lambda s: s["__key__"])
    if not out:
        raise SystemExit("evaluate: error: none of the checkpoint's held-out people is in the shards any more")
    return out, note


def driving_of(s: dict, max_frames: int):
    """(landmarks filled (T,478,3), raw landmarks, ok, times, latent_mean) on <= max_frames spread frames."""
    from model.reenact import fill_missing

    T = len(s["time_s.npy"])
    idx = np.unique(np.linspace(0, T - 1, min(T, max_frames)).round().astype(int)) if max_frames else np.arange(T)
    lm, ok = s["landmarks.npy"][idx].astype(np.float32), s["landmarks_ok.npy"][idx].astype(bool)
    filled, _ = fill_missing(lm, ok)
    return filled, lm, ok, s["time_s.npy"][idx].astype(np.float32), s["latent_mean.npy"][idx].astype(np.float32)


def real_frames(enc, latent_mean: np.ndarray) -> np.ndarray:
    import torch

    from model.reenact import decode_latents

    return decode_latents(enc, torch.from_numpy(latent_mean) * enc.scaling_factor)
