"""The held-out split: the trainer never sees these videos, `make eval` scores only on them.

A video is held out when sha1(video_id), read as a number in [0, 1), is below `fraction`, so every
clip of a video falls on the same side, on every machine, whatever order the shards come in. A
small corpus may hold out too few clips to evaluate: then the lowest-hash videos are added until at
least `min_clips` clips of at least 2 videos are held out (cross-identity pairs need 2), but no more
than half of the videos (2 of 3), and never the last one. `fraction = 0` holds nothing out.

The trainer records the set it excluded in every checkpoint (`heldout_videos`), and eval uses that
record, so a later change to the shards (new videos, opt-outs) cannot move a trained-on clip into
the evaluation.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

log = logging.getLogger("reenactfaces.split")


def hash01(video_id: str) -> float:
    return int(hashlib.sha1(video_id.encode()).hexdigest()[:12], 16) / 16 ** 12


def is_held_out(video_id: str, fraction: float) -> bool:
    """Deterministic split: sha1(video_id) as a number in [0, 1) below `fraction`."""
    return hash01(video_id) < fraction


def heldout_videos(clips_per_video: dict[str, int], fraction: float, min_clips: int) -> set[str]:
    """The held-out video ids of a catalog {video_id: number of clips} (see the module doc)."""
    if fraction <= 0:
        return set()
    vids = sorted(clips_per_video, key=hash01)
    held = {v for v in vids if is_held_out(v, fraction)}
    cap = min(max(2, len(vids) // 2), len(vids) - 1)
    for v in vids:
        enough = sum(clips_per_video[h] for h in held) >= min_clips and len(held) >= 2
        if enough or len(held | {v}) > cap:
            break
        held.add(v)
    return held


def shard_videos(urls: list[str]) -> dict[str, list[str]] | None:
    """{shard url: video id of each sample} from the samples' meta.json, reading only those members
    (local tars are seeked over). None when a shard is not a local file (remote URLs are not
    scanned: the caller falls back to the hash rule alone). A shard that cannot be read maps to []
    (the loader's own bad-shard handling reports it)."""
    if not all(Path(u).is_file() for u in urls):
        return None
    from pipeline.shards.io import read_samples

    out: dict[str, list[str]] = {}
    for u in urls:
        try:
            samples = read_samples(Path(u), {"meta.json"})
            out[u] = [str(json.loads(dict(members)["meta.json"])["video_id"]) for _, members in samples if members]
        except (tarfile.TarError, OSError, ValueError, KeyError) as e:
            log.warning("split: cannot read the sample metadata of %s (%s)", u, e)
            out[u] = []
    return out


def catalog(by_shard: dict[str, list[str]]) -> dict[str, int]:
    """{video_id: number of clips} over all shards."""
    return dict(Counter(v for vids in by_shard.values() for v in vids))


class HeldOut:
    """Membership test for held-out videos: an explicit set, or the hash rule alone when the shards
    could not be catalogued (remote URLs). Picklable, so DataLoader workers get it."""

    def __init__(self, videos: set[str] | None, fraction: float, min_clips: int = 0):
        self.videos = frozenset(videos) if videos is not None else None
        self.fraction, self.min_clips = fraction, min_clips

    def __contains__(self, video_id) -> bool:
        if not isinstance(video_id, str):
            return False
        if self.videos is not None:
            return video_id in self.videos
        return is_held_out(video_id, self.fraction)

    def record(self) -> dict:
        """What a checkpoint stores (plain types: loads with weights_only=True)."""
        return {"fraction": float(self.fraction), "min_clips": int(self.min_clips),
                "videos": sorted(self.videos) if self.videos is not None else None}


def training_split(urls: list[str], fraction: float, min_clips: int,
                   recorded: list[str] | None = None) -> tuple[HeldOut, list[str], str]:
    """-> (held-out test, the shards that still hold a training clip, a one-line summary).

    `recorded`: the held-out videos of the checkpoint being resumed; they stay held out."""
    by_shard = shard_videos(urls)
    if by_shard is None:
        return HeldOut(None, fraction, min_clips), urls, f"held out by rule: sha1(video_id) < {fraction} (remote shards)"
    counts = catalog(by_shard)
    held = heldout_videos(counts, fraction, min_clips) | set(recorded or ())
    keep = [u for u in urls if not by_shard[u] or any(v not in held for v in by_shard[u])]
    n_held = sum(n for v, n in counts.items() if v in held)
    n_train = sum(counts.values()) - n_held
    if n_train == 0 and counts:
        raise ValueError(f"every clip is held out for evaluation ({len(held)} videos, data.heldout_fraction="
                         f"{fraction}); add videos or set data.heldout_fraction=0 to train on all of them")
    note = f"held out {len(held)} videos ({n_held} clips) for eval; training on {n_train} clips in {len(keep)} shards"
    return HeldOut(held, fraction, min_clips), keep, note
