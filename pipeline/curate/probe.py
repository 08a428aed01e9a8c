"""probe, and the one decode pass per video that feeds scenes, faces and quality.

Decode is the CPU budget (target: all of curation <= 3x a plain PyAV decode of the same
video), so no stage decodes on its own. `scan` decodes every frame once, asks PyAV's scaler
once for a small RGB image (scenes and face detection work on it), and hands out the
full-size picture only on demand: the quality sampler reads the luma plane of a few frames.
It decodes a few frames ahead (`_BURST`) and then hands them out in order: the decoder's
working set stays in cache instead of being evicted by the models after every frame.
Decoding is single-threaded on purpose: Ray parallelises across videos, and per-stage CPU
accounting stays honest.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.video_io import (
    FrameClock,
    VideoError,
    VideoInfo,
    _rotation_of,
    _to_display,
    display_width,
    sample_aspect,
    small_size,
)
from pipeline.video_io import probe as _probe


@dataclass
class ProbeConfig:
    max_duration_s: float = 3600.0   # longer videos are recorded as "too_long", not decoded
    max_pixels: int = 4096 * 4096    # bigger frames are recorded as "too_large" (4K passes)
    min_side: int = 64               # smaller frames cannot hold a usable face crop
    small_side: int = 256            # side of the small frames scenes and faces see (paper: 150 px)


def probe_video(path: str | Path, cfg: ProbeConfig) -> VideoInfo:
    """Metadata of a downloaded file; VideoError with a one-line reason if it cannot be curated."""
    info = _probe(path)
    if info.width * info.height > cfg.max_pixels:
        raise VideoError(f"frame {info.width}x{info.height} exceeds probe.max_pixels={cfg.max_pixels}")
    if min(info.width, info.height) < cfg.min_side:
        raise VideoError(f"frame {info.width}x{info.height} is smaller than probe.min_side={cfg.min_side}")
    if info.duration_s > cfg.max_duration_s:
        raise VideoError(f"duration {info.duration_s:.0f}s exceeds probe.max_duration_s={cfg.max_duration_s:.0f}")
    return info


# frames decoded ahead of the consumers in `scan`
_BURST = 8

# 8-bit formats whose first plane is the luma itself (10-bit ones take the conversion path)
_LUMA8 = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"}


class Frame:
    """One decoded frame: its index, its time (seconds from the first frame, from its timestamp),
    `small` RGB (display geometry: rotation and SAR applied) always; full-size planes on demand."""

    __slots__ = ("index", "time", "small", "_av", "_rot", "_sar", "_gray", "_rgb")

    def __init__(self, index: int, small: np.ndarray, av_frame, rot: int, time: float = 0.0, sar: Fraction = Fraction(1)):
        self.index, self.small, self._av, self._rot = index, small, av_frame, rot
        self.time, self._sar = time, sar
        self._gray = self._rgb = None   # converted once per frame, whichever consumers ask (read-only)

    def _display(self, img: np.ndarray) -> np.ndarray:
        if self._sar != 1:     # stored pixels are not square: stretch the width as video_io does
            import cv2

            img = cv2.resize(img, (display_width(img.shape[1], self._sar), img.shape[0]), interpolation=cv2.INTER_AREA
                             if self._sar < 1 else cv2.INTER_LINEAR)
        return _to_display(np.ascontiguousarray(img), self._rot)

    def gray(self) -> np.ndarray:
        """Full-size, full-range luma in display orientation: the Y plane, no colour conversion
        (limited-range 16..235 video is stretched to 0..255 so all formats score alike)."""
        if self._gray is None:
            self._gray = self._luma()
        return self._gray

    def _luma(self) -> np.ndarray:
        f = self._av
        name = f.format.name
        if name in _LUMA8:
            p = f.planes[0]
            y = np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[: f.height, : f.width]
            if not (name.startswith("yuvj") or name == "gray" or int(f.color_range or 0) == 2):
                import cv2

                y = cv2.convertScaleAbs(y, alpha=255 / 219, beta=-16 * 255 / 219)
        else:
            y = f.to_ndarray(format="gray")
        return self._display(y)

    def rgb(self) -> np.ndarray:
        """Full-size RGB in display geometry (the quality, verification and identity samplers share it)."""
        if self._rgb is None:
            self._rgb = self._display(self._av.to_ndarray(format="rgb24"))
        return self._rgb


def scan(path: str | Path, max_side: int, consumers: dict[str, Callable[[Frame], None]],
         timings: dict[str, float] | None = None, max_frames: int | None = None) -> int:
    """Decode `path` once; call every consumer on every frame, in order. Returns frames decoded.
    Frames carry their time (video_io.FrameClock): a consumer collects `frame.time` where it needs it.

    `timings` accumulates CPU seconds per consumer name and under "decode" for decoding plus the
    small-frame conversion.
    """
    from av.video.reformatter import VideoReformatter

    from pipeline.video_io import _open

    t = timings if timings is not None else {}
    for k in ["decode", *consumers]:
        t.setdefault(k, 0.0)
    c = _open(path)
    n = 0
    try:
        s = c.streams.video[0]
        frames = c.decode(s)
        sar, stamp = sample_aspect(s), FrameClock(s)
        size = None
        # One reformatter for the whole video: it keeps its scaler context (frame.to_ndarray(width=...)
        # builds a new one per frame, which costs more than decoding a small frame).
        scaler = VideoReformatter()
        clock = time.process_time()
        broken: VideoError | None = None
        while broken is None and (max_frames is None or n < max_frames):
            # Decode a few frames ahead, then hand them out: the decoder's working set (reference frames,
            # tables) stays in cache for a burst instead of being evicted by the models after every frame.
            batch = []
            while len(batch) < _BURST and (max_frames is None or n + len(batch) < max_frames):
                try:  # only decoder errors are caught here; a consumer's bug must surface
                    av_frame = next(frames)
                except StopIteration:
                    break
                except Exception as e:  # a corrupt stream: keep what was decoded, say where it broke
                    k = n + len(batch)
                    if k == 0:
                        raise VideoError(f"decode failed ({type(e).__name__}: {e})") from None
                    broken = TruncatedDecode(k, f"decode stopped after frame {k} ({type(e).__name__})")
                    break
                if size is None:   # the small frame has the display's shape: the scaler applies the SAR for free
                    size = small_size(display_width(av_frame.width, sar), av_frame.height, max_side)
                rot = _rotation_of(av_frame)
                small = scaler.reformat(av_frame, width=size[0], height=size[1], format="rgb24",
                                        interpolation="AREA").to_ndarray()
                batch.append(Frame(n + len(batch), _to_display(small, rot), av_frame, rot, stamp(av_frame), sar))
            if not batch:
                break
            now = time.process_time()
            t["decode"] += now - clock
            clock = now
            for frame in batch:
                for name, fn in consumers.items():
                    fn(frame)
                    now = time.process_time()
                    t[name] += now - clock
                    clock = now
                n += 1
        if broken is not None:
            raise broken
    finally:
        c.close()
    return n


class TruncatedDecode(VideoError):
    """Decoding broke after `frames` good frames; the caller may keep results before that."""

    def __init__(self, frames: int, msg: str):
        super().__init__(msg)
        self.frames = frames
