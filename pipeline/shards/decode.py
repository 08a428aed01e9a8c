"""Clip frames for the shard encoders: which frames a clip keeps (`pick_indices`), one decoding pass
per video for all of its clips (`decode_clips`, `decode_clip`), and the units a worker decodes
(`work_units`: clips grouped by source video; `decode_unit`: a unit's frames, stills included).

A clip's crop is decoded once at `size` x `size` (EncoderConfig); the models (encode.py) then see
the same frames.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.video_io import VideoError, crop_square, iter_timed_frames

if TYPE_CHECKING:
    from pipeline.shards.config import EncoderConfig


def pick_indices(start: int, end: int, stride: int, max_frames: int) -> np.ndarray:
    idx = np.arange(start, end, max(1, stride), dtype=np.int64)
    if max_frames and len(idx) > max_frames:
        # evenly spaced, always keeping the first and last kept frame
        idx = idx[np.unique(np.round(np.linspace(0, len(idx) - 1, max_frames)).astype(np.int64))]
    return idx


def decode_clip(row: dict, media: Path, cfg: EncoderConfig):
    """(frames uint8 (T,S,S,3), frame_index int64 (T,), time_s float32 (T,)) for one clips.parquet row."""
    for _, got in decode_clips([row], media, cfg):
        if isinstance(got, Exception):
            raise got
        return got
    raise VideoError("nothing decoded")


def decode_clips(rows: list[dict], media: Path, cfg: EncoderConfig):
    """One decoding pass over a video for several of its clips (the decoder cannot seek cheaply, so
    clip-by-clip decoding would re-read the video's start for every clip). Yields (row, (frames,
    frame_index, time_s)) as soon as a clip's last frame has passed, or (row, VideoError).

    Frames come in display geometry (video_io: rotation and sample aspect ratio applied), so the
    clip's crop box, stored in display pixels, is square on screen whatever the stored pixel shape.
    time_s comes from the frames' timestamps (video_io.FrameClock, as curation's clip times do):
    seconds from the clip's first frame, right for variable frame rate and lying headers."""
    todo = sorted(range(len(rows)), key=lambda k: (int(rows[k]["end_frame"]), k))   # positions, by end
    want = [set(pick_indices(int(r["start_frame"]), int(r["end_frame"]), cfg.stride, cfg.max_frames).tolist())
            for r in rows]
    acc: list[tuple[list, list, list]] = [([], [], []) for _ in rows]

    def finish(k):
        r, (frames, got, stamps) = rows[k], acc[k]
        acc[k] = ([], [], [])
        if not frames:
            return VideoError(f"no frames in span {r['start_frame']}:{r['end_frame']} of {media.name}")
        # pick_indices always keeps the clip's first frame: times count from it
        t = np.asarray(stamps, dtype=np.float64) - stamps[0]
        return np.stack(frames), np.asarray(got, dtype=np.int64), t.astype(np.float32)

    lo, hi = min(int(r["start_frame"]) for r in rows), max(int(r["end_frame"]) for r in rows)
    frames_iter = iter_timed_frames(media, lo, hi)
    while todo:
        try:
            i, img, stamp = next(frames_iter)
        except StopIteration:
            break
        except VideoError as e:   # unreadable from here on: every unfinished clip gets the reason
            for k in todo:
                yield rows[k], e
            return
        for k in todo:
            if i in want[k]:
                r = rows[k]
                acc[k][0].append(crop_square(img, int(r["crop_x0"]), int(r["crop_y0"]), int(r["crop_size"]), cfg.size))
                acc[k][1].append(i)
                acc[k][2].append(stamp)
        while todo and int(rows[todo[0]]["end_frame"]) <= i + 1:
            k = todo.pop(0)
            yield rows[k], finish(k)
    for k in todo:   # the video ended before these spans did
        yield rows[k], finish(k)


def work_units(items: list[dict]) -> list[list[dict]]:
    """Clips grouped by source video (decoded in one pass); each still on its own."""
    units: dict[tuple, list[dict]] = {}
    for it in items:
        # a clip kept as its own file (media.keep) is its own unit; else the clips of one download share one
        key = ((it["origin"], it.get("clip_path") or it["media_path"]) if it["origin"] == "video"
               else ("still", it["clip_id"]))
        units.setdefault(key, []).append(it)
    return list(units.values())


def decode_unit(unit: list[dict], root: str, cfg: EncoderConfig, stills_frames: int, stills_fps: float):
    """Yield (item, (frames, frame_index, time_s)) or (item, exception) for every item of a unit."""
    if unit[0]["origin"] == "still":
        from pipeline.shards.stills import pseudo_clip

        for it in unit:
            try:
                yield it, pseudo_clip(Path(it["media_path"]), stills_frames, cfg.size, stills_fps,
                                      seed=int(it["clip_id"][:8], 16))
            except Exception as e:
                yield it, e
        return
    from pipeline.paths import DataRoot

    dr = DataRoot.of(root)
    kept = unit[0].get("clip_path") or ""
    with contextlib.ExitStack() as stack:
        try:     # the file itself, or a scratch copy of an object while the unit decodes
            path = stack.enter_context(dr.local_file(dr.key(kept or unit[0]["media_path"])))
        except (ValueError, OSError) as e:   # a hostile path (never read outside the data root), or no file
            for it in unit:
                yield it, (VideoError(f"media not found: {e}") if isinstance(e, OSError) else e)
            return
        if not kept:
            yield from decode_clips(unit, path, cfg)
            return
        # the kept crop file: frame k is source frame start_frame + k, already cropped square
        from pipeline.video_io import probe

        it = unit[0]
        start, side = int(it["start_frame"]), probe(path).width
        local = {**it, "start_frame": 0, "end_frame": int(it["end_frame"]) - start, "crop_x0": 0, "crop_y0": 0,
                 "crop_size": side}
        for _, got in decode_clips([local], path, cfg):
            yield it, got if isinstance(got, Exception) else (got[0], got[1] + start, got[2])

