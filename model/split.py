"""The held-out split: the trainer never sees these people, `make eval` scores only on them.

The unit is the person (`identity_id` in each sample's meta.json, curate's identity clusters: the same
person in two videos is one unit, as VoxCeleb splits by speaker), or the video for a sample without
one (`video:<video_id>`). A person is held out when sha1(identity_id), read as a number in [0, 1), is
below `fraction`, so every clip of a person falls on the same side, on every machine, whatever order the
shards come in. A small corpus may hold out too few clips to evaluate: then the lowest-hash people are
added until at least `min_clips` clips of at least 2 people are held out (cross-identity pairs need 2),
but no more than half of them (2 of 3), and never the last one. `fraction = 0` holds nothing out.

The trainer records the set it excluded in every checkpoint (`heldout`: unit, people, videos), and eval
uses that record, so a later change to the shards (new videos, opt-outs) cannot move a trained-on clip into
the evaluation. A checkpoint from before identity splits recorded videos: its video split still loads
(and a resumed run keeps excluding those videos), with a warning that one person may be on both sides.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

log = logging.getLogger("reenactfaces.split")


def hash01(key: str) -> float:
    return int(hashlib.sha1(key.encode()).hexdigest()[:12], 16) / 16 ** 12


def is_held_out(key: str, fraction: float) -> bool:
    """Deterministic split: sha1(key) as a number in [0, 1) below `fraction`."""
    return hash01(key) < fraction


def person_of(meta: dict) -> str:
    """The split unit of a sample: its identity_id, or its video for a sample without one."""
    return str(meta.get("identity_id") or f"video:{meta.get('video_id')}")


def heldout_units(clips_per_unit: dict[str, int], fraction: float, min_clips: int) -> set[str]:
    """The held-out units (people, or videos) of a catalog {unit: number of clips} (see the module doc)."""
    if fraction <= 0:
        return set()
    units = sorted(clips_per_unit, key=hash01)
    held = {u for u in units if is_held_out(u, fraction)}
    cap = min(max(2, len(units) // 2), len(units) - 1)
    for u in units:
        enough = sum(clips_per_unit[h] for h in held) >= min_clips and len(held) >= 2
        if enough or len(held | {u}) > cap:
            break
        held.add(u)
    return held


heldout_videos = heldout_units   # the same rule over videos (older callers)


def shard_samples(urls: list[str]) -> dict[str, list[dict]] | None:
    """{shard url: [{video_id, identity_id, person} per sample]} from the samples' meta.json, reading only those
    members (local tars are seeked over). None when a shard is not a local file (remote URLs are not scanned: the
    caller falls back to the hash rule alone). A shard that cannot be read maps to [] (the loader's own
    bad-shard handling reports it)."""
    if not all(Path(u).is_file() for u in urls):
        return None
    from pipeline.shards.io import read_samples

    out: dict[str, list[dict]] = {}
    for u in urls:
        try:
            metas = [json.loads(dict(members)["meta.json"]) for _, members in read_samples(Path(u), {"meta.json"})
                     if members]
            out[u] = [{"video_id": str(m["video_id"]), "identity_id": m.get("identity_id"), "person": person_of(m)}
                      for m in metas]
        except (tarfile.TarError, OSError, ValueError, KeyError) as e:
            log.warning("split: cannot read the sample metadata of %s (%s)", u, e)
            out[u] = []
    return out


def shard_videos(urls: list[str]) -> dict[str, list[str]] | None:
    """{shard url: video id of each sample} (shard_samples without the people)."""
    got = shard_samples(urls)
    return None if got is None else {u: [s["video_id"] for s in v] for u, v in got.items()}


def catalog(by_shard: dict[str, list], key: str = "video_id") -> dict[str, int]:
    """{unit: number of clips} over all shards; `by_shard` from shard_videos (ids) or shard_samples (dicts)."""
    return dict(Counter(v[key] if isinstance(v, dict) else v for vids in by_shard.values() for v in vids))


class HeldOut:
    """Membership test for held-out samples: a sample (its meta dict) is held out when its person is in
    `people` or its video in `videos`; with neither known (remote shards) the hash rule on its person
    decides. A plain string is tested as a video id (older callers). Picklable, for DataLoader workers."""

    def __init__(self, videos: set[str] | None, fraction: float, min_clips: int = 0, people: set[str] | None = None):
        self.videos = frozenset(videos) if videos is not None else None
        self.people = frozenset(people) if people is not None else None
        self.fraction, self.min_clips = fraction, min_clips

    @property
    def rule_only(self) -> bool:
        return self.videos is None and self.people is None

    def __contains__(self, sample) -> bool:
        if isinstance(sample, dict):
            if self.rule_only:
                return is_held_out(person_of(sample), self.fraction)
            return (self.people is not None and person_of(sample) in self.people) or \
                (self.videos is not None and str(sample.get("video_id")) in self.videos)
        if not isinstance(sample, str):
            return False
        if self.videos is not None:
            return sample in self.videos
        return self.people is None and is_held_out(sample, self.fraction)

    def record(self) -> dict:
        """What a checkpoint stores (plain types: loads with weights_only=True)."""
        return {"unit": "identity", "fraction": float(self.fraction), "min_clips": int(self.min_clips),
                "people": sorted(self.people) if self.people is not None else None,
                "videos": sorted(self.videos) if self.videos is not None else None}

    @classmethod
    def from_record(cls, rec: dict) -> tuple[HeldOut, str]:
        """A checkpoint's record -> (HeldOut, warning or ""). A record without `unit` is a video split."""
        f, m = float(rec.get("fraction", 0.0)), int(rec.get("min_clips", 0))
        if rec.get("unit") == "identity":
            vids = rec.get("videos")
            return cls(set(vids) if vids is not None else None, f, m,
                       set(rec["people"]) if rec.get("people") is not None else None), ""
        vids = rec.get("videos")
        return cls(set(vids) if vids is not None else None, f, m, people=None if vids is None else set()), (
            "WARNING: this checkpoint split by video (made before identity splits): "
            "the same person may appear in both its training and held-out clips")


def training_split(urls: list[str], fraction: float, min_clips: int,
                   recorded: dict | list | None = None) -> tuple[HeldOut, list[str], str]:
    """-> (held-out test, the shards that still hold a training clip, a one-line summary).

    `recorded`: the held-out record of the checkpoint being resumed (a list: its videos, the oldest form);
    what it held out stays held out. An older video split is kept and the identity split added to it."""
    if isinstance(recorded, list):
        recorded = {"videos": recorded}
    prior, warn = HeldOut.from_record(recorded) if recorded else (HeldOut(set(), fraction, min_clips, set()), "")
    by_shard = shard_samples(urls)
    if by_shard is None:
        return HeldOut(None, fraction, min_clips), urls, f"held out by rule: sha1(identity) < {fraction} (remote shards)"
    people = heldout_units(catalog(by_shard, "person"), fraction, min_clips) | set(prior.people or ())
    held = HeldOut(set(prior.videos or ()), fraction, min_clips, people)
    keep = [u for u in urls if not by_shard[u] or any(s not in held for s in by_shard[u])]
    samples = [s for v in by_shard.values() for s in v]
    out = [s for s in samples if s in held]
    n_train = len(samples) - len(out)
    if n_train == 0 and samples:
        raise ValueError(f"every clip is held out for evaluation ({len(people)} people, data.heldout_fraction="
                         f"{fraction}); add videos or set data.heldout_fraction=0 to train on all of them")
    note = (f"held out {len({s['person'] for s in out})} people ({len(out)} clips of "
            f"{len({s['video_id'] for s in out})} videos) for eval; training on {n_train} clips in {len(keep)} shards")
    return held, keep, note + (f"; {warn}" if warn else "")
