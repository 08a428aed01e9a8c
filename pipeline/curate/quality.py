"""Quality of a clip's face crop, 0..100: HyperIQA (pyiqa) when its weights are on disk, else a
weight-free sharpness score. Every score is stored with the name of the scorer that made it.

sharpness-v1 (the offline default): the crop's luma is resized to `size` x `size` (so the
figure does not depend on the crop's pixel size, only on the detail it holds at the size the
model will see), then
    m = std(Laplacian(luma)) / (std(luma) + 8)          (high-frequency energy per unit contrast)
    score = 100 * (1 - exp(-m / m0))
The contrast normalisation keeps dim or flat-lit faces from scoring as blurred; m0 sets where
the curve bends (calibrated on the bundled astronaut photo, JPEG-compressed: sharp face crops of
100-200 px score ~50, like the paper's HyperIQA mean of 51.5; a Gaussian blur of sigma 1.5 px
scores 15-27, sigma 3 px under 15; a sharp 50 px crop, upscaled, ~28).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HYPERIQA_FILE = "HyperIQA-resnet50-koniq10k-c96c41b1.pth"   # the file name pyiqa downloads


@dataclass
class QualityConfig:
    scorer: str = "sharpness"   # "sharpness" (weight-free, offline) | "hyperiqa" (pyiqa; needs weights)
    model_path: str = ""        # hyperiqa checkpoint; empty = pyiqa's cache (~/.cache/torch/hub/pyiqa/)
    every: int = 8              # sample the face crop every N frames (rounded to the faces stride)
    size: int = 128             # sharpness: side the crop is resized to before measuring
    m0: float = 1.6             # sharpness: scale of the 0..100 mapping
    reduce: str = "min"         # clip score from its samples: "min" (as good as its worst frame) | "mean"


class SharpnessScorer:
    name = "sharpness-v1"
    wants = "gray"

    def __init__(self, cfg: QualityConfig):
        self.size, self.m0 = cfg.size, cfg.m0

    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        import cv2

        out = []
        for c in crops:
            g = c if c.ndim == 2 else cv2.cvtColor(c, cv2.COLOR_RGB2GRAY)
            interp = cv2.INTER_AREA if g.shape[0] > self.size else cv2.INTER_CUBIC
            g = cv2.resize(g, (self.size, self.size), interpolation=interp).astype(np.float32)
            m = cv2.Laplacian(g, cv2.CV_32F, ksize=3).std() / (g.std() + 8.0)
            out.append(100.0 * (1.0 - np.exp(-m / self.m0)))
        return np.asarray(out, dtype=np.float64)


@contextlib.contextmanager
def _no_backbone_download():
    """pyiqa's HyperNet asks timm for an ImageNet ResNet-50 before loading the HyperIQA checkpoint,
    which holds the backbone weights too; skip that download (it would hang offline)."""
    import timm

    orig = timm.create_model

    def create(*a, **k):
        k["pretrained"] = False
        return orig(*a, **k)

    timm.create_model = create
    try:
        yield
    finally:
        timm.create_model = orig


class HyperIQAScorer:
    name = "hyperiqa"
    wants = "rgb"

    def __init__(self, cfg: QualityConfig):
        import torch

        path = Path(cfg.model_path).expanduser() if cfg.model_path else \
            Path(torch.hub.get_dir()) / "pyiqa" / HYPERIQA_FILE
        if not path.is_file():
            raise FileNotFoundError(f"HyperIQA weights not found at {path}; set quality.model_path "
                                    "or use quality.scorer=sharpness (weight-free)")
        # pyiqa loads with weights_only=False; check first that the file holds tensors, not code.
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"HyperIQA weights at {path} are not a plain tensor checkpoint: {e}") from None
        import pyiqa

        device = "cuda" if torch.cuda.is_available() else "cpu"
        with _no_backbone_download():
            self.metric = pyiqa.create_metric("hyperiqa", device=device, pretrained_model_path=str(path),
                                              num_crop=1)
        self.metric.eval()

    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        x = torch.stack([torch.from_numpy(np.ascontiguousarray(c)).permute(2, 0, 1) for c in crops]).float() / 255
        x = F.interpolate(x.to(self.metric.device), size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        with torch.no_grad():
            s = self.metric(x).reshape(-1)
        return (100.0 * s.clamp(0, 1)).double().cpu().numpy()


def make_scorer(cfg: QualityConfig):
    if cfg.scorer == "sharpness":
        return SharpnessScorer(cfg)
    if cfg.scorer == "hyperiqa":
        return HyperIQAScorer(cfg)
    raise ValueError(f"quality.scorer must be 'sharpness' or 'hyperiqa', got {cfg.scorer!r}")


def on_detection_frames(every: int, stride: int) -> int:
    """A sampling period of about `every` frames rounded up to a multiple of the detection stride, so that
    samples sit on frames whose face boxes the scanner detected (not interpolated)."""
    stride = max(1, stride)
    return max(stride, -(-every // stride) * stride)


def face_crop_box(box, width: int, height: int, w_ratio: float, h_ratio: float) -> tuple[int, int, int]:
    """The paper-ratio square around one relative face box, in pixels of a (width, height) picture."""
    x, y, w, h = box[0] * width, box[1] * height, box[2] * width, box[3] * height
    size = max(2, int(round(max(w / w_ratio, h / h_ratio))))
    return int(round(x + w / 2 - size / 2)), int(round(y + h / 2 - size / 2)), size


class QualitySampler:
    """Consumer of the decode pass: scores the face crop of every `every`-th frame where the
    face scanner (run before it on the same frame) found one usable face. A decodepass.Consumer:
    `finish(n)` -> {frame: score}; `clip_score(start, end)` per clip."""

    name = "quality"

    def __init__(self, cfg: QualityConfig, scorer, faces, face_w_ratio: float, face_h_ratio: float):
        self.every = on_detection_frames(cfg.every, faces.cfg.stride)
        self.cfg, self.scorer, self.faces = cfg, scorer, faces
        self.ratios = (face_w_ratio, face_h_ratio)
        self.samples: dict[int, float] = {}

    def update(self, frame) -> None:
        box = self.faces.sampled_box(frame.index, self.every)
        if box is None:
            return
        from pipeline.video_io import crop_square

        img = frame.gray() if self.scorer.wants == "gray" else frame.rgb()
        x0, y0, size = face_crop_box(box, img.shape[1], img.shape[0], *self.ratios)
        crop = crop_square(img, x0, y0, size)
        self.samples[frame.index] = float(self.scorer([crop])[0])

    def finish(self, num_frames: int) -> dict[int, float]:
        return self.samples

    def clip_score(self, start: int, end: int) -> float:
        v = [s for i, s in self.samples.items() if start <= i < end]
        if not v:
            return float("nan")
        return float(min(v) if self.cfg.reduce == "min" else np.mean(v))
