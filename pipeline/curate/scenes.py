"""Scene cuts: PySceneDetect's detectors, fed the small frames of the one decode pass.

PySceneDetect normally opens and decodes the video itself; we call its detectors'
`process_frame` directly so the frames decoded once for faces also serve the cut detector
(decode is the CPU budget). A cut is reported as the index of the first frame of the new scene.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ScenesConfig:
    detector: str = "content"     # "content" (HSV frame difference) | "adaptive" (difference vs its neighbours)
    threshold: float = 27.0       # content: PySceneDetect's default; adaptive: its adaptive_threshold (3.0)
    min_content_val: float = 15.0  # adaptive only: a cut also needs this much absolute change
    min_scene_len: int = 8        # frames; shorter scenes are merged (flashes are not cuts)
    max_side: int = 128           # frames are shrunk to this side first: cuts do not need detail


class SceneCutter:
    """Streaming: `update(i, rgb)` for every frame in order, then `finish()` -> cut frame indices."""

    def __init__(self, cfg: ScenesConfig, fps: float):
        from scenedetect import AdaptiveDetector, ContentDetector

        self.cfg, self.fps = cfg, float(fps) if fps and fps > 0 else 25.0
        if cfg.detector == "content":
            self.det = ContentDetector(threshold=cfg.threshold, min_scene_len=cfg.min_scene_len)
        elif cfg.detector == "adaptive":
            self.det = AdaptiveDetector(adaptive_threshold=cfg.threshold, min_scene_len=cfg.min_scene_len,
                                        min_content_val=cfg.min_content_val)
        else:
            raise ValueError(f"scenes.detector must be 'content' or 'adaptive', got {cfg.detector!r}")
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


def scene_spans(cuts: list[int], num_frames: int) -> list[tuple[int, int]]:
    """[start, end) spans between cuts covering 0..num_frames."""
    edges = [0] + [c for c in sorted(set(cuts)) if 0 < c < num_frames] + [num_frames]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
