"""The data contracts, written once: the curation manifests and the shard sample.

`manifests/README.md` documents the same fields for people; tests check that the two agree.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

# clips.parquet: one row per candidate clip; the shard writer takes status == "accepted".
CLIPS = pa.schema([
    ("clip_id", pa.string()),          # sha1(video_id:start_frame:end_frame)[:16]
    ("video_id", pa.string()),
    ("url", pa.string()),
    ("media_path", pa.string()),       # the download, relative to the data root (gone unless media.keep: all)
    ("clip_path", pa.string()),        # the clip's kept crop file, relative to the data root; "" = none kept
    ("start_frame", pa.int64()),       # inclusive, decoded-frame index
    ("end_frame", pa.int64()),         # exclusive
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("duration_s", pa.float64()),
    ("fps", pa.float64()),
    ("crop_x0", pa.int64()),           # square crop in display pixels; may extend past the frame (padded)
    ("crop_y0", pa.int64()),
    ("crop_size", pa.int64()),
    ("face_w_ratio", pa.float64()),    # median face-box width / crop size
    ("face_h_ratio", pa.float64()),    # median face-box height / crop size
    ("quality", pa.float64()),         # 0..100
    ("quality_scorer", pa.string()),   # e.g. "hyperiqa", "sharpness-v1"
    ("resolution", pa.int64()),        # crop size in source pixels
    ("status", pa.string()),           # "accepted" | "rejected"
    ("reason", pa.string()),           # empty when accepted
])

# Shard sample: one per clip, key = clip_id. Members (suffix -> content):
SHARD_MEMBERS = {
    "latent_mean.npy": "float16 (T, 4, h, w): VAE posterior mean, unscaled",
    "latent_std.npy": "float16 (T, 4, h, w): VAE posterior std",
    "clip_emb.npy": "float16 (T, D): CLIP image embedding per frame, L2-normalised",
    "landmarks.npy": "float32 (T, 478, 3): MediaPipe mesh, x,y in [0,1] of the crop, NaN if no face",
    "landmarks_ok.npy": "bool (T,): a face was found on that frame",
    "frame_index.npy": "int64 (T,): source-video frame index of each stored frame",
    "time_s.npy": "float32 (T,): seconds from the clip start of each stored frame",
    "meta.json": "clip_id, video_id, origin, fps, size, vae, vae_scaling_factor, clip_model, weights, schema_version",
}
