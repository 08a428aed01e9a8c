"""Shot boundaries: hard cuts and gradual transitions (dissolves, fades), as frame intervals.

A boundary is [start, end) with a kind: a `cut` is empty (start == end = the first frame of the new
shot); a `gradual` boundary holds every frame of a dissolve or fade. Clips come only from the
spans between boundaries: the frames of a gradual boundary, widened by `margin` on each side,
are never part of a clip (they are recorded as rejections with reason `transition`).

Detectors (`scenes.detector`), all fed the small frames of the one decode pass:
  transnetv2  (default) TransNetV2's many-hot output (transnet.py), run on windows that a cheap
              pass over 48x27 thumbnails flags (transnet.CandidateWindows), or on every frame
              (`transnet_frames: all`, for a GPU worker). Finds dissolves and fades as windows.
  content, adaptive   PySceneDetect's detectors (the fast option): hard cuts only; a dissolve
              gives at most one cut somewhere inside it.
Every detector adds fades through black found from the brightness curve (`dark_fades`), and
boundaries closer than `merge_gap_s` merge into one (a shot that short gives no clip anyway).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DETECTORS = ("transnetv2", "content", "adaptive")


@dataclass
class ScenesConfig:
    detector: str = "transnetv2"  # transnetv2 | content | adaptive (PySceneDetect: cuts only, fast)
    # PySceneDetect (content, adaptive)
    threshold: float = 27.0       # content: PySceneDetect's default; adaptive: its adaptive_threshold (3.0)
    min_content_val: float = 15.0  # adaptive only: a cut also needs this much absolute change
    min_scene_len: int = 8        # frames; shorter scenes are merged (flashes are not cuts)
    max_side: int = 128           # frames are shrunk to this side first: cuts do not need detail
    # TransNetV2
    transnet_frames: str = "candidates"  # candidates (windows the cheap pass flags) | all (every frame: GPU)
    transnet_threshold: float = 0.5  # many-hot probability that makes a frame part of a transition
    transnet_context: int = 8     # frames of context either side of each window (the wheel uses 25)
    transnet_device: str = "cpu"  # cpu | cuda | auto
    transnet_threads: int = 1     # torch CPU threads while the network runs (Ray runs one worker per core)
    # the cheap pass that picks TransNetV2's windows (48x27 thumbnails)
    candidate_lag_s: float = 0.5  # longest lag over which a gradual change shows as a colour-histogram change
    candidate_hist: float = 0.25  # ... of at least this much (half the L1 distance, 0..1; a still shot ~0.05)
    cut_min_diff: float = 12.0    # mean |difference| (0..255) of consecutive thumbnails that can be a cut
    cut_spike_ratio: float = 3.0  # a difference this many times its neighbours' is a clean cut: no network
    # every detector
    dark_luma: float = 12.0       # mean brightness (0..255) below which a frame is black (fade through black)
    fade_step: float = 0.02       # a fade darkens by at least this share of the brightness per frame
    max_fade_s: float = 2.0       # black runs longer than this are content, not a transition
    merge_gap_s: float = 0.25     # boundaries closer than this merge into one gradual boundary
    margin: int = 3               # frames either side of a gradual boundary that no clip may use (found: <= 2 off)

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise ValueError(f"scenes.detector must be one of {', '.join(DETECTORS)}, got {self.detector!r}")
        if self.transnet_frames not in ("candidates", "all"):
            raise ValueError(f"scenes.transnet_frames must be candidates or all, got {self.transnet_frames!r}")


@dataclass(frozen=True)
class Boundary:
    start: int
    end: int          # exclusive; == start for a cut
    kind: str         # "cut" | "gradual"

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "kind": self.kind}


# ---------------------------------------------------------------- PySceneDetect (the fast option)

class SceneCutter:
    """Streaming: `update(i, rgb)` for every frame in order, then `finish()` -> cut frame indices.

    PySceneDetect normally decodes the video itself; we call its detectors' `process_frame` on the
    frames decoded once for everything (decode is the CPU budget). A cut is the index of the first
    frame of the new scene."""

    def __init__(self, cfg: ScenesConfig, fps: float):
        from scenedetect import AdaptiveDetector, ContentDetector

        self.cfg, self.fps = cfg, float(fps) if fps and fps > 0 else 25.0
        if cfg.detector == "content":
            self.det = ContentDetector(threshold=cfg.threshold, min_scene_len=cfg.min_scene_len)
        elif cfg.detector == "adaptive":
            self.det = AdaptiveDetector(adaptive_threshold=cfg.threshold, min_scene_len=cfg.min_scene_len,
                                        min_content_val=cfg.min_content_val)
        else:
            raise ValueError(f"SceneCutter runs PySceneDetect's content or adaptive detector, not {cfg.detector!r}")
        self.cuts: list[int] = []
        self.last = -1
        self._size: tuple[int, int] | None = None

    def _small(self, rgb: np.ndarray) -> np.ndarray:
        import cv2

        h, w = rgb.shape[:2]
        if self._size is None:
            s = min(1.0, self.cfg.max_side / max(h, w))
            self._size = (max(8, int(round(w * s))), max(8, int(round(h * s))))
        img = rgb if (w, h) == self._size else cv2.resize(rgb, self._size, interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(img[..., ::-1])  # the detectors expect OpenCV's BGR

    def update(self, i: int, rgb: np.ndarray) -> None:
        from scenedetect import FrameTimecode

        self.last = i
        for tc in self.det.process_frame(FrameTimecode(int(i), self.fps), self._small(rgb)):
            self.cuts.append(int(tc.frame_num))

    def finish(self) -> list[int]:
        from scenedetect import FrameTimecode

        if self.last >= 0:
            for tc in self.det.post_process(FrameTimecode(int(self.last), self.fps)):
                self.cuts.append(int(tc.frame_num))
        return sorted({c for c in self.cuts if 0 < c <= self.last})


# ---------------------------------------------------------------- every detector

def dark_fades(luma: np.ndarray, fps: float, cfg: ScenesConfig) -> list[Boundary]:
    """Fades through black from the per-frame mean brightness: each run of black frames (at most
    max_fade_s long) widened over the frames that darken into it and brighten out of it (each step
    at least fade_step of the brightness, and one grey level)."""
    n = len(luma)
    dark = np.asarray(luma) < cfg.dark_luma
    out = []
    max_run = max(1, int(round(cfg.max_fade_s * fps)))
    i = 0
    while i < n:
        if not dark[i]:
            i += 1
            continue
        j = i
        while j < n and dark[j]:
            j += 1
        if j - i <= max_run:
            s, e = i, j

            def falling(brighter, darker):   # brightness steps down from `brighter` into `darker`
                return luma[brighter] - luma[darker] >= max(1.0, cfg.fade_step * luma[brighter])

            while s > 1 and i - s < max_run and falling(s - 2, s - 1):   # s - 1 darker than its predecessor
                s -= 1
            while e + 1 < n and e - j < max_run and falling(e + 1, e):   # e darker than its successor
                e += 1
            out.append(Boundary(s, e, "gradual"))
        i = j
    return out


def merge_boundaries(bounds: list[Boundary], num_frames: int, gap: int) -> list[Boundary]:
    """Sorted, clipped to the video, and merged where one starts within `gap` frames of the last's end
    (two cuts that close become one gradual boundary between them)."""
    out: list[Boundary] = []
    for b in sorted(bounds, key=lambda b: (b.start, b.end)):
        s, e = max(0, b.start), min(num_frames, b.end)
        if b.kind == "cut" and not 0 < s < num_frames:
            continue                       # a cut at the very first or past the last frame cuts nothing
        if out and s <= out[-1].end + gap:
            last = out[-1]
            if (last.kind, b.kind) == ("cut", "cut") and s == last.start:
                continue
            out[-1] = Boundary(last.start, max(last.end, e), "gradual")
        else:
            out.append(Boundary(s, e, b.kind if e > s else "cut"))
    return out


def transition_intervals(bounds: list[Boundary], num_frames: int, margin: int) -> list[tuple[int, int]]:
    """[start, end) frames that no clip may use: every gradual boundary widened by `margin`, merged."""
    out: list[tuple[int, int]] = []
    for b in bounds:
        if b.kind != "gradual":
            continue
        s, e = max(0, b.start - margin), min(num_frames, b.end + margin)
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        elif e > s:
            out.append((s, e))
    return out


def shot_spans(bounds: list[Boundary], num_frames: int, margin: int) -> list[tuple[int, int]]:
    """[start, end) spans between boundaries: split at cuts, transition frames (with margin) left out."""
    cuts = [b.start for b in bounds if b.kind == "cut"]
    spans, pos = [], 0
    for s, e in [*transition_intervals(bounds, num_frames, margin), (num_frames, num_frames)]:
        edges = [pos] + [c for c in cuts if pos < c < s] + [s]
        spans += [(a, b) for a, b in zip(edges, edges[1:]) if b > a]
        pos = max(pos, e)
    return spans


class ShotDetector:
    """The scenes stage on the decode pass: `update(frame)` for every frame (a probe.Frame), then
    `finish(n)` -> [Boundary]. `net` (a transnet.ShotNet) is needed for detector transnetv2.
    `net_seconds`: CPU seconds spent inside TransNetV2 for this video. A decodepass.Consumer."""

    name = "scenes"

    def __init__(self, cfg: ScenesConfig, fps: float, net=None):
        from pipeline.curate.transnet import CandidateWindows

        self.cfg, self.fps = cfg, float(fps) if fps and fps > 0 else 25.0
        self.luma: list[float] = []
        self.windows = self.cutter = None
        if cfg.detector == "transnetv2":
            if net is None:
                raise ValueError("scenes.detector=transnetv2 needs the network (Models.shot_net)")
            self.windows = CandidateWindows(cfg, self.fps, net, skip=self._inside_fade)
        else:
            self.cutter = SceneCutter(cfg, self.fps)
        self._net, self._net_s0 = net, net.seconds if net is not None else 0.0

    @property
    def net_seconds(self) -> float:
        return self._net.seconds - self._net_s0 if self._net is not None else 0.0

    def _inside_fade(self, a: int, b: int) -> bool:
        """Candidate frames [a, b) lie inside a fade through black seen so far (up to the lag the cheap
        pass looks back over): brightness already says where that fade is, the network need not."""
        reach = self.windows.lags[-1]
        lo = max(0, a - reach - 2 * int(round(self.cfg.max_fade_s * self.fps)))
        fades = dark_fades(np.asarray(self.luma[lo:], np.float64), self.fps, self.cfg)
        return any(lo + f.start - reach <= a and b <= lo + f.end + reach for f in fades)

    def update(self, frame) -> None:
        from pipeline.curate.transnet import mean_value, thumbnail

        thumb = thumbnail(frame.small)
        self.luma.append(mean_value(thumb))
        if self.windows is not None:
            self.windows.update(frame.index, thumb)
        else:
            self.cutter.update(frame.index, frame.small)

    def finish(self, num_frames: int) -> list[Boundary]:
        if self.windows is not None:
            found = [Boundary(s, e, "cut" if s == e else "gradual") for s, e in self.windows.finish(num_frames)]
        else:
            found = [Boundary(c, c, "cut") for c in self.cutter.finish()]
        found += dark_fades(np.asarray(self.luma[:num_frames], np.float64), self.fps, self.cfg)
        self.boundaries = merge_boundaries(found, num_frames, int(round(self.cfg.merge_gap_s * self.fps)))
        cuts = {b.start for b in self.boundaries if b.kind == "cut"}
        gaps = transition_intervals(self.boundaries, num_frames, self.cfg.margin)
        self.settled = lambda f: f in cuts or any(a <= f <= b for a, b in gaps)
        return self.boundaries

    boundaries: list[Boundary] | None = None    # set by finish
    settled = None   # after finish: frame -> True where a cut or a transition window (+ margin) splits the video

