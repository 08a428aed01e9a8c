"""The data contracts, written once: the curation manifests (clips, videos, rejections) and the shard
sample. pipeline/records.py holds the typed rows (ClipRow, VideoRow) whose fields mirror these columns.

`manifests/README.md` documents the same fields for people; tests check that the two agree.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 2   # 2: identity.npy and identity_id in every shard sample

# clips.parquet: one row per candidate clip; the shard writer takes status == "accepted".
CLIPS = pa.schema([
    ("clip_id", pa.string()),          # sha1(video_id:start_frame:end_frame)[:16]
    ("video_id", pa.string()),
    ("url", pa.string()),
    ("media_path", pa.string()),       # the download, relative to the data root (gone unless media.keep: all)
    ("clip_path", pa.string()),        # the clip's kept crop file, relative to the data root; "" = none kept
    ("start_frame", pa.int64()),       # inclusive, decoded-frame index
    ("end_frame", pa.int64()),         # exclusive
    ("start_s", pa.float64()),         # from the frames' timestamps, seconds from the video's first frame
    ("end_s", pa.float64()),
    ("duration_s", pa.float64()),
    ("fps", pa.float64()),             # the video's measured mean frame rate (timestamps, not the header)
    ("crop_x0", pa.int64()),           # square crop in display pixels (rotation and SAR applied); may extend
                                       # past the frame (padded)
    ("crop_y0", pa.int64()),
    ("crop_size", pa.int64()),
    ("face_w_ratio", pa.float64()),    # median face-box width / crop size
    ("face_h_ratio", pa.float64()),    # median face-box height / crop size
    ("pad_fraction", pa.float64()),    # share of the crop's area outside the frame (edge-replicated), or
                                       # outside the picture inside black bars / the inset holding the face
    ("face_confidence", pa.float64()),  # median detector score of the clip's face
    ("landmark_rate", pa.float64()),   # share of sampled crops where the 478-point mesh found the face
    ("yaw_deg", pa.float64()),         # median |head yaw| from the mesh, degrees (nan: no mesh)
    ("flat_skin", pa.float64()),       # median share of untextured skin (drawn faces score high)
    ("expression", pa.float64()),      # median mesh change across samples, similarity removed (stills ~0)
    ("quality", pa.float64()),         # 0..100
    ("quality_scorer", pa.string()),   # e.g. "hyperiqa", "sharpness-v1"
    ("resolution", pa.int64()),        # crop side in stored pixels along its coarser axis (crop_size / max(sar, 1))
    ("status", pa.string()),           # "accepted" | "rejected"
    ("reason", pa.string()),           # empty when accepted; "duplicate" for a copy of an earlier clip
    ("start_split", pa.string()),      # why the clip starts here: video_start, cut, no_face, jump, identity, ...
    ("end_split", pa.string()),        # why it ends here: video_end, cut, no_face, jump, identity, max_duration, ...
    # identity (pipeline/curate/identity.py, clusters.py); null where not computed (clips rejected by the filters)
    ("identity", pa.list_(pa.float32())),  # mean face-identity embedding of a few aligned frames of the clip
    ("identity_model", pa.string()),   # e.g. "dlib-resnet-v1" (128-D, Euclidean) | "arcface-w600k_r50"
    ("identity_frames", pa.int64()),   # aligned faces averaged
    ("identity_id", pa.string()),      # the person across the dataset (stable: a registry never renumbers)
    ("duplicate_of", pa.string()),     # clip_id of the earlier clip this one copies (status rejected)
    ("face_hashes", pa.list_(pa.int64())),   # 64-bit dHash of the face crop, every identity.every frames
    ("frame_hashes", pa.list_(pa.int64())),  # 64-bit dHash of the whole frame, same frames (duplicates)
])

# videos.parquet: one row per source video.
VIDEOS = pa.schema([
    ("video_id", pa.string()), ("url", pa.string()),
    ("status", pa.string()),          # "ok" | "no_clips" | a download status | "bad_media" | "error"
    ("error_class", pa.string()),     # e.g. "http_404", "VideoError"; empty when ok
    ("message", pa.string()),
    ("media_path", pa.string()),      # relative to the data root
    ("bytes", pa.int64()), ("attempts", pa.int64()),
    ("width", pa.int64()), ("height", pa.int64()),   # display size: rotation and sample aspect ratio applied
    ("fps", pa.float64()),            # measured mean rate from the frames' timestamps (probe's when not decoded)
    ("header_fps", pa.float64()),     # the rate the container claims
    ("sar", pa.float64()),            # sample aspect ratio (stored pixel width / height)
    ("num_frames", pa.int64()),
    ("duration_s", pa.float64()), ("rotation", pa.int64()), ("codec", pa.string()), ("has_audio", pa.bool_()),
    ("cuts", pa.int64()), ("cut_frames", pa.list_(pa.int64())),   # hard cuts: first frame of each new shot
    # every shot boundary: a cut is [c, c); a gradual one (dissolve, fade) holds its frames [start, end)
    ("boundaries", pa.list_(pa.struct([("start", pa.int64()), ("end", pa.int64()), ("kind", pa.string())]))),
    ("clips", pa.int64()), ("accepted", pa.int64()), ("accepted_s", pa.float64()),
    ("config", pa.string()),          # fingerprint of the stage parameters that produced the row
])

# rejections.parquet: every rejected span.
REJECTIONS = pa.schema([
    ("video_id", pa.string()), ("url", pa.string()),
    ("start_frame", pa.int64()), ("end_frame", pa.int64()), ("start_s", pa.float64()), ("end_s", pa.float64()),
    ("stage", pa.string()),           # "scenes" (transition) | "faces" (no / multi / small face) | "filters"
    ("reason", pa.string()),
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
    "identity.npy": "float32 (D,): the clip's face-identity embedding (clips.parquet identity); (0,) if none",
    "meta.json": "clip_id, video_id, origin, fps, size, vae, vae_scaling_factor, clip_model, weights, "
                 "identity_id, identity_model, schema_version",
}
