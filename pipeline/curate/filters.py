"""Filters: split long face tracks to a maximum duration, then accept or reject each clip with
one named reason (the first bound it fails, in the order below).

Defaults follow the paper's data (supplementary §5): clips average 3.29 s (sd 2.07), the
authors' scraper kept tracks of > 16 detections at every 2nd frame and <= ~256 frames; crops
average 745 px (sd 248); face width ~0.45 (sd 0.05) and height ~0.53 (sd 0.07) of the crop;
HyperIQA mean 51.5 (sd 10.7). Our corpus is small and synthetic, so the resolution floor is low.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class FiltersConfig:
    min_duration_s: float = 1.0
    max_duration_s: float = 8.5            # longer tracks are split into equal parts no longer than this
    min_resolution: int = 96               # crop side in source pixels
    min_quality: float = 30.0              # on the 0..100 scale of whichever scorer ran
    face_w_ratio: list[float] = field(default_factory=lambda: [0.35, 0.55])   # paper 0.45 +- 2 sd
    face_h_ratio: list[float] = field(default_factory=lambda: [0.39, 0.67])   # paper 0.53 +- 2 sd
    max_face_outside: float = 0.1          # a face box may overhang the fixed crop by this much of its width


def split_long(start: int, end: int, fps: float, max_duration_s: float) -> list[tuple[int, int]]:
    """[start, end) cut into the fewest equal parts no longer than max_duration_s."""
    max_frames = max(1, int(math.floor(max_duration_s * fps)))
    n = max(1, -(-(end - start) // max_frames))
    edges = [start + round(k * (end - start) / n) for k in range(n + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def judge(duration_s: float, resolution: int, quality: float, face_w_ratio: float, face_h_ratio: float,
          outside: float, cfg: FiltersConfig) -> str:
    """'' when the clip passes every bound, else the reason it is rejected."""
    if duration_s < cfg.min_duration_s:
        return "too_short"
    if resolution < cfg.min_resolution:
        return "low_resolution"
    if not (cfg.face_w_ratio[0] <= face_w_ratio <= cfg.face_w_ratio[1]) or \
            not (cfg.face_h_ratio[0] <= face_h_ratio <= cfg.face_h_ratio[1]):
        return "face_ratio"
    if outside > cfg.max_face_outside:   # the face wandered out of the clip's one fixed crop
        return "face_leaves_crop"
    if not math.isfinite(quality):
        return "quality_unmeasured"
    if quality < cfg.min_quality:
        return "low_quality"
    return ""
