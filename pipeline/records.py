"""Typed rows of the curation tables: `ClipRow` (clips.parquet) and `VideoRow` (videos.parquet).

Their fields are pipeline/schema.py's CLIPS and VIDEOS columns, in order (a test holds them equal);
the schema stays the one place that names and types the columns, these the one place a row is
built. `to_dict()` is what state files and tables take. A field left None is a null in the table:
the identity fields of a clip the filters rejected, the probe fields of a video never decoded.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class ClipRow:
    clip_id: str
    video_id: str
    url: str
    media_path: str
    clip_path: str                    # set by retention once a crop file is kept; "" = none
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    duration_s: float
    fps: float
    crop_x0: int
    crop_y0: int
    crop_size: int
    face_w_ratio: float
    face_h_ratio: float
    pad_fraction: float               # crop area outside the frame (or outside the inset holding the face)
    face_confidence: float
    landmark_rate: float
    yaw_deg: float
    flat_skin: float
    expression: float                 # median non-rigid change of the face's mesh across samples (nan: < 2)
    quality: float
    quality_scorer: str
    resolution: int
    status: str                       # "accepted" | "rejected"
    reason: str
    start_split: str
    end_split: str
    # identity (accepted clips only; identity_id and duplicate_of come from the dataset-level step)
    identity: list[float] | None = None
    identity_model: str | None = None
    identity_frames: int | None = None
    identity_id: str | None = None
    duplicate_of: str | None = None
    face_hashes: list[int] | None = None
    frame_hashes: list[int] | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class VideoRow:
    video_id: str
    url: str
    status: str
    error_class: str
    message: str
    media_path: str
    bytes: int
    attempts: int
    # probe and decode: None until the video is decoded
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    header_fps: float | None = None
    sar: float | None = None
    num_frames: int | None = None
    duration_s: float | None = None
    rotation: int | None = None
    codec: str | None = None
    has_audio: bool | None = None
    cuts: int | None = None
    cut_frames: list[int] | None = None
    boundaries: list[dict] | None = None
    clips: int | None = None
    accepted: int | None = None
    accepted_s: float | None = None
    config: str = ""                  # fingerprint of the stage parameters that produced the row

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
