"""Faces: the detectors (MediaPipe, insightface), their identity signatures, the stage's config, and
one fixed square crop per clip. Tracking the dominant face through a video (sparse detection with
bisection, what splits a track and what does not) is pipeline/curate/tracking.py.

Identity (MediaPipe backend): a hue-saturation histogram of the face box, compared between
neighbouring detections with the Bhattacharyya distance. It is cheap and catches a different
person/lighting at a cut the scene detector missed; it is not face recognition. The insightface
backend (SCRFD boxes + 5 landmarks, ArcFace embedding of the aligned 112 px face) is, and its
cosine distance has its own threshold: the two distances live on different scales.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class FacesConfig:
    backend: str = "mediapipe"       # "mediapipe" (bundled, offline) | "insightface" (SCRFD + ArcFace files)
    model_dir: str = ""              # insightface: folder holding the detection and recognition .onnx files
    mediapipe_model: int = 0         # 0 = short range (faces within ~2 m), 1 = full range (slower)
    stride: int = 8                  # sparse detection every N frames; disagreements are bisected
    min_confidence: float = 0.5
    # A jump (tracking.py): the face centre moves more than max_jump_faces face sizes plus max_speed_faces
    # per second between two detections. The paper split at 0.06 of the frame between detections 2 frames
    # apart, which a handheld phone exceeds every second (its jerks move the face ~0.5 face widths in 2 frames).
    max_jump_faces: float = 0.6
    max_speed_faces: float = 4.0
    max_scale_change: float = 1.4    # ... or its width changes by more than this factor (detector boxes breathe ~15%)
    max_gap_s: float = 0.15          # a miss / glitch this short between two agreeing detections does not split
    identity_threshold: float = 0.45  # Bhattacharyya distance of face histograms that counts as a new identity
    # insightface: 1 - cosine similarity of ArcFace embeddings that counts as a new identity. Same-person
    # pairs of buffalo_l's w600k_r50 are mostly > 0.35 similar even across pose/light, different people
    # mostly < 0.2, and neighbouring detections in one shot are far closer: 0.65 splits only on a clear change.
    arcface_identity_threshold: float = 0.65
    multi_face_ratio: float = 0.35   # a second face with area >= this x the main face's ...
    multi_face_score_ratio: float = 0.8  # ... and confidence >= this x the best makes the frame multi-face
    min_face_px: int = 40            # largest face narrower than this (source pixels) -> "small_face"
    # The crop's side: face width / side ~ face_w_ratio and height / side ~ face_h_ratio (the paper's
    # means), moved inside the bands [min, max] (paper mean +- 2 sd: 0.45 +- 0.05, 0.53 +- 0.07) where
    # that keeps the crop inside the frame (place_crop); the filters reject a clip outside a band.
    face_w_ratio: float = 0.45
    face_h_ratio: float = 0.53
    face_w_band: list[float] = field(default_factory=lambda: [0.35, 0.55])
    face_h_band: list[float] = field(default_factory=lambda: [0.39, 0.67])

    def __post_init__(self):
        for name in ("w", "h"):
            lo, hi = getattr(self, f"face_{name}_band")
            if not 0 < lo <= getattr(self, f"face_{name}_ratio") <= hi:
                raise ValueError(f"faces.face_{name}_band [{lo}, {hi}] must hold face_{name}_ratio "
                                 f"{getattr(self, f'face_{name}_ratio')} (0 < min <= ratio <= max)")


# ---------------------------------------------------------------- detectors

class Face(tuple):
    """One detection: the tuple (x, y, w, h, score) relative to the frame. `.kps` carries SCRFD's five
    landmarks (pixels of the frame it was detected on) to `signature` with the face itself, so there
    is no side table to grow or to mis-match; None for MediaPipe."""

    kps: np.ndarray | None = None

    def __new__(cls, box, kps=None):
        face = super().__new__(cls, box)
        face.kps = kps
        return face


class MediaPipeFaces:
    """rgb uint8 -> [(x, y, w, h, score)] relative boxes, largest first."""

    sig_kind = "hs-histogram"

    def __init__(self, cfg: FacesConfig):
        import mediapipe as mp

        from pipeline.curate.landmarks import warmup_face
        from pipeline.quiet import native_stderr_filtered

        with native_stderr_filtered():   # MediaPipe's start-up lines, written when its graph first runs
            self._fd = mp.solutions.face_detection.FaceDetection(
                model_selection=cfg.mediapipe_model, min_detection_confidence=cfg.min_confidence)
            self._fd.process(warmup_face())

    def __call__(self, rgb: np.ndarray) -> list[tuple[float, float, float, float, float]]:
        res = self._fd.process(np.ascontiguousarray(rgb))
        out = []
        for d in res.detections or []:
            b = d.location_data.relative_bounding_box
            out.append((b.xmin, b.ymin, b.width, b.height, float(d.score[0])))
        return sorted(out, key=lambda f: -f[2] * f[3])

    def signature(self, rgb: np.ndarray, face) -> np.ndarray:
        return hs_histogram(rgb, face)


class InsightFaces:
    """SCRFD detection + ArcFace identity through insightface's legacy `get_model("x.onnx")` route
    (the graph's shapes pick the class; no manifest, no download), from local buffalo_l files."""

    NEEDS = ("det_10g.onnx", "w600k_r50.onnx")   # insightface's buffalo_l pack
    DET_SIZE = (320, 320)   # SCRFD input; frames arrive at probe.small_side (256): no detail lost
    sig_kind = "arcface"

    def __init__(self, cfg: FacesConfig):
        d = Path(cfg.model_dir).expanduser() if cfg.model_dir else None
        missing = [n for n in self.NEEDS if d is None or not (d / n).is_file()]
        if missing:
            raise FileNotFoundError(f"insightface model files not found at {d or '(faces.model_dir unset)'}: "
                                    f"missing {', '.join(missing)} (buffalo_l pack)")
        try:
            import onnxruntime as ort
            from insightface.model_zoo.arcface_onnx import ArcFaceONNX
            from insightface.model_zoo.scrfd import SCRFD
        except ImportError as e:
            raise ImportError(f"faces.backend=insightface needs the insightface and onnxruntime packages ({e}); "
                              "install them or use faces.backend=mediapipe") from None
        # One thread per session: the runner already puts one detector per core (Ray actors).
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        self._det = _load_onnx(d / self.NEEDS[0], SCRFD, "an SCRFD face detector", opts)
        self._det.prepare(ctx_id=-1, input_size=self.DET_SIZE, det_thresh=cfg.min_confidence)
        self._rec = _load_onnx(d / self.NEEDS[1], ArcFaceONNX, "an ArcFace recognition model", opts)
        self._rec.prepare(ctx_id=-1)

    def __call__(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        # SCRFD letterboxes to DET_SIZE and returns boxes/landmarks in pixels of the image it is given
        boxes, kps = self._det.detect(np.ascontiguousarray(rgb[..., ::-1]), max_num=0)   # it wants BGR
        out = []
        for i, (x0, y0, x1, y1, score) in enumerate(boxes.astype(np.float64)):
            out.append(Face((x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h, score),
                            None if kps is None else kps[i]))
        return sorted(out, key=lambda f: -f[2] * f[3])

    def signature(self, rgb: np.ndarray, face) -> np.ndarray:
        """Unit-norm ArcFace embedding of the face aligned on its 5 landmarks (box-placed template
        for an SCRFD export without landmarks)."""
        from insightface.utils import face_align

        kps = getattr(face, "kps", None)
        if kps is None:
            h, w = rgb.shape[:2]
            kps = (np.float32([face[0] * w, face[1] * h])
                   + face_align.arcface_dst / 112.0 * np.float32([face[2] * w, face[3] * h]))
        crop = face_align.norm_crop(np.ascontiguousarray(rgb[..., ::-1]), landmark=np.asarray(kps, np.float32),
                                    image_size=self._rec.input_size[0])
        e = self._rec.get_feat(crop).ravel().astype(np.float32)
        return e / max(float(np.linalg.norm(e)), 1e-8)


def _load_onnx(path: Path, cls, what: str, opts):
    """insightface model from a plain .onnx path, CPU only; a bad file is a one-line error."""
    from insightface.model_zoo import get_model

    try:
        model = get_model(str(path), providers=["CPUExecutionProvider"], sess_options=opts)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"cannot load {path} as {what}: {type(e).__name__}: {first}") from None
    if not isinstance(model, cls):
        raise ValueError(f"{path} is not {what} (insightface routes it to {type(model).__name__})")
    return model


def make_detector(cfg: FacesConfig):
    if cfg.backend == "mediapipe":
        return MediaPipeFaces(cfg)
    if cfg.backend == "insightface":
        return InsightFaces(cfg)
    raise ValueError(f"faces.backend must be 'mediapipe' or 'insightface', got {cfg.backend!r}")


def hs_histogram(rgb: np.ndarray, box) -> np.ndarray:
    """Hue x saturation histogram (16 x 8 bins) of the face box, L1-normalised."""
    import cv2

    h, w = rgb.shape[:2]
    x0, y0 = max(0, int(box[0] * w)), max(0, int(box[1] * h))
    x1, y1 = min(w, int((box[0] + box[2]) * w) + 1), min(h, int((box[1] + box[3]) * h) + 1)
    patch = rgb[y0:y1, x0:x1]
    if patch.size == 0:
        return np.full(128, 1 / 128, np.float32)
    hsv = cv2.cvtColor(np.ascontiguousarray(patch), cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, [16, 8], [0, 180, 0, 256]).ravel()
    return (hist / max(hist.sum(), 1e-8)).astype(np.float32)


def signature_distance(a: np.ndarray, b: np.ndarray, kind: str) -> float:
    """Bhattacharyya distance for histograms (0 same .. 1 disjoint); 1 - cosine for ArcFace (0 .. 2)."""
    if kind == "hs-histogram":
        return float(np.sqrt(max(0.0, 1.0 - np.sum(np.sqrt(a * b)))))
    return float(1.0 - np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-8))


# ---------------------------------------------------------------- crop

@dataclass
class Crop:
    x0: int
    y0: int
    size: int
    face_w_ratio: float
    face_h_ratio: float
    outside: float        # worst overhang of a detected face box beyond the crop, / median face width
    pad_fraction: float   # share of the crop's area outside the frame (filled by crop_square's edge replication)
    in_band: bool         # both face ratios inside faces.face_w_band / face_h_band
    inset: bool = False   # placed inside a picture-in-picture: pad_fraction counts what lies outside it
                          # (inside black bars, inset stays False: what lies outside them is padding)


def crop_side(fw: float, fh: float, width: int, height: int, cfg: FacesConfig) -> tuple[float, bool]:
    """The crop side for a (fw x fh) px face in a (width x height) frame, and whether it keeps both
    face ratios inside their bands.

    Preferred: the paper's ratios (the larger of fw / face_w_ratio and fh / face_h_ratio). The bands
    allow sides in [lo, hi] = [max(fw / w_max, fh / h_max), min(fw / w_min, fh / h_min)]. A side up to
    the frame's shorter extent needs no padding, so a preferred side that does not fit shrinks to
    that extent, but never below lo: a face too large for the band pads as little as the band allows.
    When no side satisfies both bands (an odd box shape) lo wins and the filters reject the ratio.
    """
    (w_min, w_max), (h_min, h_max) = cfg.face_w_band, cfg.face_h_band
    lo, hi = max(fw / w_max, fh / h_max), min(fw / w_min, fh / h_min)
    side = min(max(fw / cfg.face_w_ratio, fh / cfg.face_h_ratio), hi)
    side = max(min(side, min(width, height)), lo)
    return side, lo <= hi * (1 + 1e-9)


def pad_fraction(x0: float, y0: float, size: float, width: int, height: int) -> float:
    """Share of a square crop's area that lies outside the (width x height) frame."""
    ix = max(0.0, min(x0 + size, width) - max(x0, 0.0))
    iy = max(0.0, min(y0 + size, height) - max(y0, 0.0))
    return float(1.0 - ix * iy / max(size * size, 1e-9))


def place_crop(boxes: list[tuple[float, float, float, float]], width: int, height: int,
               cfg: FacesConfig, region: tuple[float, float, float, float] | None = None,
               inset: bool = False) -> Crop:
    """One square crop (display pixels) for a clip from its relative face boxes.

    Side: crop_side of the median box (the paper's ratios where the frame allows, else the largest
    side inside the face-ratio bands that fits, else the smallest the bands allow). Position:
    centred on the median face centre, then slid inside the frame; along an extent shorter than the
    side the crop covers all of it and stays as centred on the face as that allows. What remains
    outside the frame is `pad_fraction` of the crop's area (the filters reject above
    filters.max_pad_fraction); crop_square fills it by repeating the frame's edge pixels.

    region: the part of the frame that is the face's picture (relative x0, y0, x1, y1; pipeline.curate.insets:
    a picture-in-picture when `inset`, else the frame inside black bars): the crop is placed in it as in
    a frame of its own, and pad_fraction is the share outside it.
    """
    if region is not None:
        rx0, ry0 = int(np.ceil(region[0] * width)), int(np.ceil(region[1] * height))
        rw, rh = int(region[2] * width) - rx0, int(region[3] * height) - ry0
        if rw >= 2 and rh >= 2:
            inner = [((x * width - rx0) / rw, (y * height - ry0) / rh, w * width / rw, h * height / rh)
                     for x, y, w, h in boxes]
            c = place_crop(inner, rw, rh, cfg)
            return Crop(c.x0 + rx0, c.y0 + ry0, c.size, c.face_w_ratio, c.face_h_ratio, c.outside,
                        c.pad_fraction, c.in_band, inset=inset)
    b = np.asarray(boxes, dtype=np.float64) * [width, height, width, height]
    cx, cy = np.median(b[:, 0] + b[:, 2] / 2), np.median(b[:, 1] + b[:, 3] / 2)
    fw, fh = np.median(b[:, 2]), np.median(b[:, 3])
    side, in_band = crop_side(fw, fh, width, height, cfg)
    size = max(int(round(side)), 2)

    def place(c, extent):
        x = int(round(c - size / 2))
        if size <= extent:
            return min(max(x, 0), extent - size)
        return min(max(x, extent - size), 0)   # larger than the frame: cover it all, nearest the face centre

    x0, y0 = place(cx, width), place(cy, height)
    over = np.maximum.reduce([x0 - b[:, 0], y0 - b[:, 1], b[:, 0] + b[:, 2] - x0 - size,
                              b[:, 1] + b[:, 3] - y0 - size, np.zeros(len(b))])
    fw_r, fh_r = float(fw / size), float(fh / size)
    (w_min, w_max), (h_min, h_max) = cfg.face_w_band, cfg.face_h_band
    ok = in_band and w_min - 1e-3 <= fw_r <= w_max + 1e-3 and h_min - 1e-3 <= fh_r <= h_max + 1e-3   # rounding
    return Crop(x0, y0, size, fw_r, fh_r, float(over.max() / max(fw, 1e-6)),
                pad_fraction(x0, y0, size, width, height), ok)
