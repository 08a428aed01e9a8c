"""The analysis consumers' one protocol, and the sequential runner that feeds them one decode pass.

A consumer is built with what it needs (its config and the worker's models: that is its setup),
then sees every decoded frame once, in decode order, through `update(frame)` (a probe.Frame), and
gives its result for the video from `finish(num_frames)`. `name` is its key in the per-stage CPU
times. The consumers of a video run from one ordered list: a consumer that reads another's work on
the same frame comes after it (the verifier, quality and identity samplers read the face scanner's
detection of the frame they are handed).

    scenes.ShotDetector    -> [Boundary]              tracking.FaceScanner  -> {frame: Det}
    verify.FaceVerifier    -> {frame: Sample}         quality.QualitySampler -> {frame: score}
    identity.IdentitySampler -> {frame: chip}         FrameTimes            -> [time s of each frame]

`run_consumers` is the whole runner: a test drives one or two consumers on a fixture video with it,
and `stages.analyse_video` drives all of them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline.curate.probe import Frame, TruncatedDecode, scan


class Consumer(Protocol):
    name: str                                    # its key in the CPU times (scan's timings)

    def update(self, frame: Frame) -> None: ...

    def finish(self, num_frames: int) -> Any: ...


class FrameTimes:
    """Each decoded frame's time (seconds from the first frame, from its timestamp)."""

    name = "timestamps"

    def __init__(self):
        self.times: list[float] = []

    def update(self, frame: Frame) -> None:
        self.times.append(frame.time)

    def finish(self, num_frames: int) -> list[float]:
        return self.times[:num_frames]


@dataclass
class DecodeRun:
    num_frames: int                              # frames decoded (before the damage of a truncated file)
    results: dict[str, Any] = field(default_factory=dict)   # consumer name -> what its finish returned
    message: str = ""                            # why decoding stopped early, "" when it reached the end


def run_consumers(media: str | Path, max_side: int, consumers: list[Consumer],
                  times: dict[str, float] | None = None, max_frames: int | None = None) -> DecodeRun:
    """Decode `media` once (small frames of `max_side`), hand every frame to each consumer in list
    order, then finish each in that order. A decode that breaks after some frames keeps them (the
    message says where); one that yields none raises VideoError. `times` accumulates CPU seconds per
    consumer name (update and finish) and under "decode"."""
    names = [c.name for c in consumers]
    if len(set(names)) != len(names):
        raise ValueError(f"two consumers share a name: {names}")
    times = times if times is not None else {}
    message = ""
    try:
        n = scan(media, max_side, {c.name: c.update for c in consumers}, times, max_frames)
    except TruncatedDecode as e:   # keep the frames before the damage
        n, message = e.frames, str(e)
    run = DecodeRun(n, message=message)
    for c in consumers:
        t0 = time.process_time()
        run.results[c.name] = c.finish(n)
        times[c.name] = times.get(c.name, 0.0) + time.process_time() - t0
    return run
