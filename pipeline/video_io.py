"""Video decode/encode with PyAV (ffprobe is not always present).

Frames come out as RGB uint8 (H, W, 3) in *display* orientation: rotation metadata is
applied, so every coordinate in this project (face boxes, crop boxes, landmarks) refers to
the picture a person sees. Frame indices count decoded frames from 0.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np


class VideoError(RuntimeError):
    """A file that is missing, empty, or not a decodable video."""


@dataclass
class VideoInfo:
    width: int            # display width (after rotation)
    height: int           # display height (after rotation)
    fps: float
    num_frames: int       # from the container when known, else estimated from duration
    duration_s: float
    rotation: int         # degrees, as stored in the display matrix
    codec: str
    has_audio: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _open(path: str | Path):
    import av

    p = Path(path)
    if not p.exists():
        raise VideoError(f"no such file: {p.name}")
    if p.stat().st_size == 0:
        raise VideoError(f"empty file: {p.name}")
    try:
        c = av.open(str(p))
    except Exception as e:  # av raises many InvalidDataError subclasses
        raise VideoError(f"not a video ({type(e).__name__}): {p.name}") from None
    if not c.streams.video:
        c.close()
        raise VideoError(f"no video stream: {p.name}")
    return c


def _rotation_of(frame) -> int:
    try:
        return int(round(frame.rotation)) % 360
    except Exception:
        return 0


def probe(path: str | Path) -> VideoInfo:
    """Duration, fps, display size, rotation, codec. Decodes one frame to read rotation."""
    c = _open(path)
    try:
        s = c.streams.video[0]
        fps = float(s.average_rate or s.guessed_rate or 0) or 25.0
        dur = float(s.duration * s.time_base) if s.duration else (c.duration or 0) / 1e6
        n = s.frames or int(round(dur * fps))
        first = None
        try:
            first = next(c.decode(video=0))
        except Exception as e:
            raise VideoError(f"no decodable frame ({type(e).__name__}): {Path(path).name}") from None
        rot = _rotation_of(first)
        w, h = first.width, first.height
        if rot in (90, 270):
            w, h = h, w
        if not dur and n:
            dur = n / fps
        return VideoInfo(w, h, fps, int(n), float(dur), rot, s.codec_context.name,
                         bool(c.streams.audio))
    finally:
        c.close()


def _to_display(img: np.ndarray, rot: int) -> np.ndarray:
    # The display matrix angle is counter-clockwise; np.rot90 k=1 is counter-clockwise too.
    k = (rot // 90) % 4
    return np.ascontiguousarray(np.rot90(img, k=k)) if k else img


def small_size(w: int, h: int, max_side: int) -> tuple[int, int]:
    """(w, h) shrunk so the longer side is at most max_side, rounded down to even sides (>= 2)."""
    s = min(1.0, max_side / max(w, h))
    return max(2, int(round(w * s)) // 2 * 2), max(2, int(round(h * s)) // 2 * 2)


def _decode(path: str | Path, end: int | None, keep, max_side: int | None) -> Iterator[tuple[int, np.ndarray]]:
    """(index, rgb) of the frames before `end` for which keep(index) holds; the others are
    decoded but never converted (the RGB conversion costs more than the decode)."""
    from av.video.reformatter import VideoReformatter

    c = _open(path)
    try:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        # One reformatter for the whole video: it keeps its scaler context (frame.to_ndarray(width=...)
        # builds a new one per frame). Downscaling in the scaler is far cheaper than in numpy.
        scaler = VideoReformatter()
        for i, frame in enumerate(c.decode(s)):
            if end is not None and i >= end:
                break
            if not keep(i):
                continue
            w, h = frame.width, frame.height
            if max_side and max(w, h) > max_side:
                w, h = small_size(w, h, max_side)
            img = scaler.reformat(frame, width=w, height=h, format="rgb24").to_ndarray()
            yield i, _to_display(img, _rotation_of(frame))
    except VideoError:
        raise
    except Exception as e:
        raise VideoError(f"decode failed at frame ({type(e).__name__}: {e}): {Path(path).name}") from None
    finally:
        c.close()


def iter_frames(path: str | Path, start: int = 0, end: int | None = None, stride: int = 1,
                max_side: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame_index, rgb) for start <= index < end, every `stride`-th frame, the longer
    side downscaled (keeping aspect) to at most `max_side` when given."""
    return _decode(path, end, lambda i: i >= start and (i - start) % stride == 0, max_side)


def read_frames(path: str | Path, indices: Iterable[int], max_side: int | None = None) -> dict[int, np.ndarray]:
    """Decode only the wanted frames (one sequential pass); returns {index: rgb}."""
    want = set(int(i) for i in indices)
    if not want:
        return {}
    return dict(_decode(path, max(want) + 1, want.__contains__, max_side))


def crop_square(img: np.ndarray, x0: int, y0: int, size: int, out_size: int | None = None) -> np.ndarray:
    """Square crop that may extend past the frame: the outside is padded with edge pixels."""
    import cv2

    h, w = img.shape[:2]
    pad = max(0, -x0, -y0, x0 + size - w, y0 + size - h)
    if pad:
        img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    crop = img[y0:y0 + size, x0:x0 + size]
    if out_size and out_size != size:
        interp = cv2.INTER_AREA if out_size < size else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (out_size, out_size), interpolation=interp)
    return crop


def write_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: float, crf: int = 20) -> int:
    """Write RGB frames as H.264 MP4 (yuv420p, even sizes). Returns frames written."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with av.open(str(path), "w") as c:
        rate = Fraction(fps).limit_denominator(1001)
        s = None
        for img in frames:
            if s is None:
                h, w = img.shape[:2]
                s = c.add_stream("libx264", rate=rate)
                s.width, s.height = w - w % 2, h - h % 2
                s.pix_fmt = "yuv420p"
                s.options = {"crf": str(crf), "preset": "veryfast"}
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[: s.height, : s.width]), format="rgb24")
            for pkt in s.encode(frame):
                c.mux(pkt)
            n += 1
        if s is not None:
            for pkt in s.encode():
                c.mux(pkt)
    if n == 0:
        path.unlink(missing_ok=True)
        raise VideoError("no frames to write")
    return n


def frame_time(index: int, fps: float) -> float:
    return index / fps if fps > 0 and math.isfinite(fps) else 0.0
