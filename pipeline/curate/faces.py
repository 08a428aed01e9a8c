"""Faces: detect at a stride, track the dominant face, split where it is lost, jumps or changes
identity, reject multi-face and tiny-face stretches, and place one fixed square crop per clip.

Sparse detection with bisection: the detector (~5 ms a call on CPU, whatever the frame size)
would alone blow the curation budget at the paper's every-2nd-frame rate on small videos, so
we detect every `stride` frames and, only where two neighbouring detections disagree (face
lost or found, second face, jump, identity), bisect the gap on the buffered small frames until
the change is located to 1 frame (2 frames for a jump, the paper's detection spacing). Quiet
stretches cost one detection per stride, changes are located as precisely as dense detection.

Identity (MediaPipe backend): a hue-saturation histogram of the face box, compared between
neighbouring detections with the Bhattacharyya distance. It is cheap and catches a different
person/lighting at a cut the scene detector missed; it is not face recognition. The insightface
backend (SCRFD boxes + 5 landmarks, ArcFace embedding of the aligned 112 px face) is, and its
cosine distance has its own threshold: the two distances live on different scales.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class FacesConfig:
    backend: str = "mediapipe"       # "mediapipe" (bundled, offline) | "insightface" (SCRFD + ArcFace files)
    model_dir: str = ""              # insightface: folder holding the detection and recognition .onnx files
    mediapipe_model: int = 0         # 0 = short range (faces within ~2 m), 1 = full range (slower)
    stride: int = 8                  # sparse detection every N frames; disagreements are bisected
    min_confidence: float = 0.5
    max_jump: float = 0.06           # paper: split when the box centre moves > 0.06 of the frame between detections
    max_scale_change: float = 1.4    # ... or its width changes by more than this factor (detector boxes breathe ~15%)
    identity_threshold: float = 0.45  # Bhattacharyya distance of face histograms that counts as a new identity
    # insightface: 1 - cosine similarity of ArcFace embeddings that counts as a new identity. Same-person
    # pairs of buffalo_l's w600k_r50 are mostly > 0.35 similar even across pose/light, different people
    # mostly < 0.2, and neighbouring detections in one shot are far closer: 0.65 splits only on a clear change.
    arcface_identity_threshold: float = 0.65
    multi_face_ratio: float = 0.35   # a second face with area >= this x the largest makes the frame multi-face
    min_face_px: int = 40            # largest face narrower than this (source pixels) -> "small_face"
    face_w_ratio: float = 0.45       # paper: face width / crop side
    face_h_ratio: float = 0.53       # paper: face height / crop side
    max_pad: float = 0.10            # the crop may overhang the frame by this fraction of its side (padded)


@dataclass
class Det:
    state: str                                  # "ok" | "none" | "multi" | "small"
    box: tuple[float, float, float, float] | None = None   # largest face x, y, w, h relative to the frame
    faces: int = 0
    sig: np.ndarray | None = None               # identity signature of the largest face
    sig_kind: str = "hs-histogram"              # "hs-histogram" | "arcface": which distance/threshold applies
    ident: object = None                        # pipeline.curate.identity.FaceIdentity where one was computed


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

        self._fd = mp.solutions.face_detection.FaceDetection(
            model_selection=cfg.mediapipe_model, min_detection_confidence=cfg.min_confidence)

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


# ---------------------------------------------------------------- streaming scan

class FaceScanner:
    """Consumer of the decode pass (`update(frame)` for every frame, then `finish(n)` -> {frame: Det})."""

    def __init__(self, cfg: FacesConfig, detector, src_width: int, identity=None):
        self.cfg, self.detector, self.src_width = cfg, detector, src_width
        self.identity = identity    # a face-identity encoder (pipeline.curate.identity): decides "identity"
        self.dets: dict[int, Det] = {}
        self.calls = 0
        self._buf: dict[int, np.ndarray] = {}
        self._prev: int | None = None

    def update(self, frame) -> None:
        self._buf[frame.index] = frame.small
        if frame.index % max(1, self.cfg.stride) == 0:
            self._anchor(frame.index)

    def finish(self, num_frames: int) -> dict[int, Det]:
        if num_frames and (num_frames - 1) not in self.dets and (num_frames - 1) in self._buf:
            self._anchor(num_frames - 1)
        self._buf.clear()
        return self.dets

    def _anchor(self, i: int) -> None:
        self._detect(i)
        if self._prev is not None:
            self._refine(self._prev, i)
        self._prev = i
        self._buf = {i: self._buf[i]}  # frames before an anchor are never needed again

    def _detect(self, i: int) -> Det:
        img = self._buf[i]
        faces = self.detector(img)
        self.calls += 1
        c = self.cfg
        if not faces:
            d = Det("none")
        else:
            box = tuple(float(v) for v in faces[0][:4])
            if len(faces) > 1 and faces[1][2] * faces[1][3] >= c.multi_face_ratio * box[2] * box[3]:
                d = Det("multi", box, len(faces))
            elif box[2] * self.src_width < c.min_face_px:
                d = Det("small", box, len(faces))
            else:
                d = Det("ok", box, len(faces), self.detector.signature(img, faces[0]), self.detector.sig_kind)
        self.dets[i] = d
        return d

    def _refine(self, a: int, b: int) -> None:
        why = disagreement(self.dets[a], self.dets[b], self.cfg)
        if why == "identity" and self.identity is not None:
            # the cheap signature saw a change: the identity embeddings (frames still buffered) decide
            for k in (a, b):
                d = self.dets[k]
                if d.ident is None:
                    d.ident = self.identity.identity(self.identity.faces(self._buf[k], [d.box])[0])
            why = disagreement(self.dets[a], self.dets[b], self.cfg)
        if not why or b - a <= 1 or (why == "jump" and b - a <= 2):
            return
        m = (a + b) // 2
        self._detect(m)
        self._refine(a, m)
        self._refine(m, b)


def disagreement(d1: Det, d2: Det, cfg: FacesConfig) -> str:
    """Why two neighbouring detections cannot belong to one clip ('' if they can)."""
    if d1.state != d2.state:
        return "state"
    if d1.state != "ok":
        return ""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = d1.box, d2.box
    move = max(abs(x1 + w1 / 2 - x2 - w2 / 2), abs(y1 + h1 / 2 - y2 - h2 / 2))
    if move > cfg.max_jump or max(w1 / w2, w2 / w1) > cfg.max_scale_change:
        return "jump"
    if d1.ident is not None and d2.ident is not None:    # face identity, where computed, overrules the signature
        return "" if d1.ident.same_person(d2.ident) else "identity"
    if d1.sig is not None and d2.sig is not None and d1.sig_kind == d2.sig_kind:
        limit = cfg.arcface_identity_threshold if d1.sig_kind == "arcface" else cfg.identity_threshold
        if signature_distance(d1.sig, d2.sig, d1.sig_kind) > limit:
            return "identity"
    return ""


# ---------------------------------------------------------------- segmentation and crop

REASON_OF_STATE = {"none": "no_face", "multi": "multi_face", "small": "small_face"}


def segment(dets: dict[int, Det], cuts: list[int], cfg: FacesConfig):
    """Tracks of one consistent dominant face, split at scene cuts.

    Returns (spans, rejected): spans = [(start, end, [det frames])] with end exclusive, ending
    at the last detection that saw the face (frames after it are unverified); rejected =
    [(start, end, reason)] for stretches of no / multiple / tiny faces.
    """
    frames = sorted(dets)
    runs: list[list[int]] = []
    bad: list[tuple[int, int, str]] = []
    for k, f in enumerate(frames):
        d = dets[f]
        prev = dets[frames[k - 1]] if k else None
        # The previous detection in the same state ended runs[-1] (state "ok") or bad[-1] (any other).
        same = prev is not None and prev.state == d.state
        if d.state == "ok":
            if same and not disagreement(prev, d, cfg):
                runs[-1].append(f)
            else:
                runs.append([f])
        elif same:
            bad[-1] = (bad[-1][0], f + 1, bad[-1][2])
        else:
            bad.append((f, f + 1, REASON_OF_STATE[d.state]))
    spans = []
    cut_list = sorted(cuts)
    for run in runs:
        s, e = run[0], run[-1] + 1
        edges = [s] + [c for c in cut_list if s < c < e] + [e]
        for a, b in zip(edges[:-1], edges[1:]):
            inside = [f for f in run if a <= f < b]
            if inside:
                spans.append((a, b, inside))
    return spans, bad


@dataclass
class Crop:
    x0: int
    y0: int
    size: int
    face_w_ratio: float
    face_h_ratio: float
    outside: float        # worst overhang of a detected face box beyond the crop, / median face width


def place_crop(boxes: list[tuple[float, float, float, float]], width: int, height: int,
               cfg: FacesConfig) -> Crop:
    """One square crop (display pixels) for a clip from its relative face boxes.

    Side: the paper's face ratio (face ~ 0.45 of the crop width, ~ 0.53 of its height) from the
    median box. Position: centred on the median face centre, then slid inside the frame; when
    the frame is too small, the side is clamped so at most `max_pad` of it overhangs (padded),
    which raises the face ratio and lets the ratio filter reject such close-ups.
    """
    b = np.asarray(boxes, dtype=np.float64) * [width, height, width, height]
    cx, cy = np.median(b[:, 0] + b[:, 2] / 2), np.median(b[:, 1] + b[:, 3] / 2)
    fw, fh = np.median(b[:, 2]), np.median(b[:, 3])
    size = max(fw / cfg.face_w_ratio, fh / cfg.face_h_ratio)
    size = int(round(min(size, min(width, height) * (1 + 2 * cfg.max_pad))))
    size = max(size, 2)

    def place(c, extent):
        x = int(round(c - size / 2))
        if size <= extent:
            return min(max(x, 0), extent - size)
        return int(round((extent - size) / 2))  # larger than the frame: overhang both sides equally

    x0, y0 = place(cx, width), place(cy, height)
    over = np.maximum.reduce([x0 - b[:, 0], y0 - b[:, 1], b[:, 0] + b[:, 2] - x0 - size,
                              b[:, 1] + b[:, 3] - y0 - size, np.zeros(len(b))])
    return Crop(x0, y0, size, float(fw / size), float(fh / size), float(over.max() / max(fw, 1e-6)))
