"""Filters: split long face tracks to a maximum duration, then accept or reject each clip with
one named reason (the first bound it fails, in the order of `judge`).

Defaults follow the paper's data (supplementary §5): clips average 3.29 s (sd 2.07), the
authors' scraper kept tracks of > 16 detections at every 2nd frame and <= ~256 frames; crops
average 745 px (sd 248); HyperIQA mean 51.5 (sd 10.7). Our corpus is small and synthetic, so the
resolution floor is low. The face-ratio band is the faces stage's (faces.face_w_band / face_h_band):
the crop is chosen inside it, and a clip whose face cannot fit it is rejected here.

Face verification (pipeline/curate/verify.py measures, `judge` decides): every accepted clip shows
a real, roughly frontal human face. Measured per clip (medians; MediaPipe short-range detector on the
256-px frames, the mesh on 256-px crops), real faces vs the rest:
  detector score  real faces 0.83-0.96 | drawn cartoon 0.91-0.96, anime 0.87 | cat 0.64, false
                  detections in real footage (a caricature on a monitor, hands over a glass) 0.51-0.63
  mesh found      real 100% of samples (a blurred face 33%) | drawn, anime 100% | cat, false detections 0%
  flat skin       real 0.002-0.049 | drawn 0.72-0.73, anime 0.26
  yaw             real talking heads 0-16 deg, a face turned 25 deg reads 27 | turned 60 deg reads 48-57
So the detector and the mesh alone let drawings through (they fit them as well as faces); the
flat-skin share (untextured paint) is what rejects them. Quality comes before the face checks: a
blurred face also loses its mesh, and blur is the cause worth reporting.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class FiltersConfig:
    min_duration_s: float = 1.0
    max_duration_s: float = 8.5            # longer tracks are split into equal parts no longer than this
    min_resolution: int = 96               # crop side in source pixels
    min_quality: float = 30.0              # on the 0..100 scale of whichever scorer ran
    max_face_outside: float = 0.1          # a face box may overhang the fixed crop by this much of its width
    max_pad_fraction: float = 0.05         # share of the crop's area outside the frame (edge-replicated padding)
    # Face verification (verify.py). The mesh runs on `landmark_samples_per_s` sampled frames per second of
    # video (at detection frames), on the crop the clip's rule gives that frame's face, at `verify_size` px.
    min_face_confidence: float = 0.7       # median detector score of the clip's face (real faces 0.83-0.96)
    min_landmark_rate: float = 0.9         # share of sampled crops where the mesh finds the tracked face
    max_yaw_deg: float = 45.0              # median |yaw| from the mesh (landmarks.yaw_degrees)
    max_flat_skin: float = 0.12            # median share of flat skin (real <= 0.05, drawn and anime >= 0.26)
    # median non-rigid change of the face's mesh across samples (verify.expression_change): a photo shown
    # as a video 0.0002-0.0012; real talking heads 0.007-0.10, the stillest (a calm presenter) 0.0067
    min_expression: float = 0.003
    landmark_samples_per_s: float = 2.0
    verify_size: int = 256                 # the shards' crop side (paper 256)


@dataclass
class FaceCheck:
    """What face verification measured on one clip (verify.FaceVerifier.check)."""
    samples: int               # sampled crops inside the clip
    landmark_rate: float       # share of them where the mesh found the tracked face (0 with no sample)
    yaw_deg: float             # median |yaw| where found (nan if never)
    flat_skin: float           # median flat-skin share where found (nan if never)
    confidence: float          # median detector score over the clip's detections
    expression: float = float("nan")   # median mesh change across found samples (nan with fewer than 2)


def split_long(start: int, end: int, fps: float, max_duration_s: float) -> list[tuple[int, int]]:
    """[start, end) cut into the fewest equal parts no longer than max_duration_s."""
    max_frames = max(1, int(math.floor(max_duration_s * fps)))
    n = max(1, -(-(end - start) // max_frames))
    edges = [start + round(k * (end - start) / n) for k in range(n + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def judge(duration_s: float, resolution: int, quality: float, crop, face: FaceCheck, cfg: FiltersConfig) -> str:
    """'' when the clip passes every bound, else the reason it is rejected. `crop` is the clip's
    faces.Crop (face ratios, band, padding, how far the face leaves it)."""
    if duration_s < cfg.min_duration_s:
        return "too_short"
    if resolution < cfg.min_resolution:
        return "low_resolution"
    if not crop.in_band:
        return "face_ratio"
    if crop.pad_fraction > cfg.max_pad_fraction:   # the frame (or the inset) is too small for the face in the band
        return "inset" if crop.inset else "padding"
    if crop.outside > cfg.max_face_outside:   # the face wandered out of the clip's one fixed crop
        return "face_leaves_crop"
    if not math.isfinite(quality):
        return "quality_unmeasured"
    if quality < cfg.min_quality:   # before the face checks: a blurred face also loses its mesh, blur is the cause
        return "low_quality"
    return face_reason(face, cfg)


def face_reason(face: FaceCheck, cfg: FiltersConfig) -> str:
    """The face-verification part of `judge` (also what a still portrait must pass): '' or the reason.
    A measure that could not be taken (nan) fails its bound: an unverified face is not accepted."""
    if not face.confidence >= cfg.min_face_confidence:
        return "low_confidence"
    if not face.landmark_rate >= cfg.min_landmark_rate:
        return "no_landmarks"
    if not face.yaw_deg <= cfg.max_yaw_deg:
        return "profile"
    if not face.flat_skin <= cfg.max_flat_skin:
        return "drawn_face"
    if face.expression < cfg.min_expression:   # a photo shown as a video (nan, < 2 samples, cannot tell)
        return "still"
    return ""
