"""Video decode/encode with PyAV (ffprobe is not always present).

Frames come out as RGB uint8 (H, W, 3) in *display* geometry: the rotation metadata and the
sample aspect ratio (SAR, the shape of a stored pixel) are applied, so every coordinate in this
project (face boxes, crop boxes, landmarks) refers to the picture a person sees, where a square is
square. A video stored 704x576 with SAR 16:11 comes out 1024x576 (the width is scaled by the SAR, as
players and ffmpeg's `scale=iw*sar:ih` do). Frame indices count decoded frames from 0.

Time comes from the frames' own timestamps, not from the header's frame rate (variable frame rate
is common on phones; an AVI header may claim 50 fps for frames that come at 25): `FrameClock` gives
every decoded frame its seconds from the first frame, the same in every pass over a video.
"""
from __future__ import annotations

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
    sar: float = 1.0      # sample aspect ratio (stored pixel width / height); width above already applies it

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


def sample_aspect(stream) -> Fraction:
    """The stream's sample aspect ratio: the container's (MP4 `pasp`, Matroska) when set, else the
    codec's (H.264 VUI), else 1. Values outside 1/4..4 are broken metadata and read as 1."""
    for r in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if r is not None and r.numerator > 0 and r.denominator > 0:
            r = Fraction(r.numerator, r.denominator)
            return r if Fraction(1, 4) <= r <= 4 else Fraction(1)
    return Fraction(1)


def display_width(stored_width: int, sar: Fraction) -> int:
    """Width of the picture a person sees (before rotation): stored columns scaled by the SAR."""
    return max(2, int(round(stored_width * sar)))


def header_fps(stream) -> float:
    """The frame rate the container claims (average, else guessed, else 25): a fallback, not the truth."""
    return float(stream.average_rate or stream.guessed_rate or 0) or 25.0


def probe(path: str | Path) -> VideoInfo:
    """Duration, fps (the header's), display size, rotation, codec, SAR. Decodes one frame to read rotation.
    The frame count and rate are the container's claims: curation measures them on the decode pass."""
    c = _open(path)
    try:
        s = c.streams.video[0]
        fps = header_fps(s)
        dur = float(s.duration * s.time_base) if s.duration else (c.duration or 0) / 1e6
        n = s.frames or int(round(dur * fps))
        first = None
        try:
            first = next(c.decode(video=0))
        except Exception as e:
            raise VideoError(f"no decodable frame ({type(e).__name__}): {Path(path).name}") from None
        rot = _rotation_of(first)
        sar = sample_aspect(s)
        w, h = display_width(first.width, sar), first.height
        if rot in (90, 270):
            w, h = h, w
        if not dur and n:
            dur = n / fps
        return VideoInfo(w, h, fps, int(n), float(dur), rot, s.codec_context.name,
                         bool(c.streams.audio), float(sar))
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


def _decode(path: str | Path, end: int | None, keep, max_side: int | None) -> Iterator[tuple[int, np.ndarray, float]]:
    """(index, rgb, seconds) of the frames before `end` for which keep(index) holds; the others are
    decoded but never converted (the RGB conversion costs more than the decode)."""
    from av.video.reformatter import VideoReformatter

    c = _open(path)
    try:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        sar = sample_aspect(s)
        clock = FrameClock(s)
        # One reformatter for the whole video: it keeps its scaler context (frame.to_ndarray(width=...)
        # builds a new one per frame). Downscaling (and the SAR's stretch) in the scaler is far cheaper than in numpy.
        scaler = VideoReformatter()
        for i, frame in enumerate(c.decode(s)):
            if end is not None and i >= end:
                break
            t = clock(frame)      # every frame, kept or not: a frame's time depends on those before it
            if not keep(i):
                continue
            w, h = display_width(frame.width, sar), frame.height
            if max_side and max(w, h) > max_side:
                w, h = small_size(w, h, max_side)
            img = scaler.reformat(frame, width=w, height=h, format="rgb24").to_ndarray()
            yield i, _to_display(img, _rotation_of(frame)), t
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
    for i, img, _ in iter_timed_frames(path, start, end, stride, max_side):
        yield i, img


def iter_timed_frames(path: str | Path, start: int = 0, end: int | None = None, stride: int = 1,
                      max_side: int | None = None) -> Iterator[tuple[int, np.ndarray, float]]:
    """iter_frames with each frame's time: (frame_index, rgb, seconds from the first frame)."""
    return _decode(path, end, lambda i: i >= start and (i - start) % stride == 0, max_side)


def read_frames(path: str | Path, indices: Iterable[int], max_side: int | None = None) -> dict[int, np.ndarray]:
    """Decode only the wanted frames (one sequential pass); returns {index: rgb}."""
    want = set(int(i) for i in indices)
    if not want:
        return {}
    return {i: img for i, img, _ in _decode(path, max(want) + 1, want.__contains__, max_side)}


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


class FrameClock:
    """Seconds from the first decoded frame, from each frame's presentation timestamp.

    Call it on every decoded frame, in decode order. A frame without a timestamp, or whose timestamp
    does not move forward (a broken or reordered stream), is placed one header-rate interval after the
    previous frame and counted in `repaired`; the times are always increasing. Deterministic: two
    passes over the same file give the same seconds, so clip times and shard `time_s` agree.
    """

    def __init__(self, stream):
        self.interval = 1.0 / header_fps(stream)
        self.offset: float | None = None      # timestamp (s) of time 0
        self.last: float | None = None
        self.frames = 0
        self.repaired = 0

    def __call__(self, frame) -> float:
        stamp = frame.time                      # pts * time_base, None without a pts
        self.frames += 1
        guess = 0.0 if self.last is None else self.last + self.interval
        if stamp is not None and self.offset is None:
            self.offset = float(stamp) - guess
        t = None if stamp is None else float(stamp) - self.offset
        if t is None or (self.last is not None and t <= self.last):
            t = guess
            self.repaired += 1
        self.last = t
        return t


def end_time(times: list[float], fallback_fps: float) -> float:
    """When the last of these frames stops showing: its time plus the mean frame interval."""
    if not times:
        return 0.0
    if len(times) > 1 and times[-1] > times[0]:
        return times[-1] + (times[-1] - times[0]) / (len(times) - 1)
    return times[-1] + 1.0 / (fallback_fps if fallback_fps > 0 else 25.0)


def measured_fps(times: list[float], fallback_fps: float) -> float:
    """Mean frame rate from timestamps: (frames - 1) / (last - first); the fallback for < 2 frames."""
    if len(times) > 1 and times[-1] > times[0]:
        return (len(times) - 1) / (times[-1] - times[0])
    return fallback_fps
