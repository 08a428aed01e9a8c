"""Face identity: one small encoder interface, a per-clip identity embedding, a perceptual hash per frame.

Encoders (`make_encoder`):
- `dlib` (default, offline): dlib's face-recognition ResNet (128-D, 99.38% on LFW) with its 5-point
  shape predictor, both from the registry package `face-recognition-models` (run by `dlib-bin`).
  Distance: Euclidean between raw descriptors; dlib's rule is "same person below 0.6". Measured here:
  the astronaut flipped 0.19 from herself, Grace Hopper at half size 0.11 from herself; different
  people 0.63-0.93 (astronaut, Grace Hopper, the six people of insightface's group photo t1.jpg).
- `arcface`: insightface's ArcFace (buffalo_l's `w600k_r50.onnx`, given as a file). Distance: 1 - cosine
  of L2-normalised embeddings; "same person below 0.6" (cosine similarity above 0.4) is our reading of
  common ArcFace verification thresholds, not measured here (no weights offline).
Both align the face on dlib's five landmarks found inside the detector's box, so any detector works.

A clip's identity is the mean embedding of `frames` aligned faces spread over the clip (re-normalised for
ArcFace). `IdentitySampler` is a consumer of curation's single decode pass: where the face scanner found
one usable face, every `every` frames it keeps the aligned face chip (150 px for dlib) and two 64-bit
difference hashes (for duplicates): of the paper-ratio crop around the face and of the whole frame. On the
test corpus, where different videos reuse one photo, the pair separates copies (re-encoded, rescaled, 25 vs
30 fps, trimmed: <= 10.5 of 128 bits apart in the median frame) from other footage of the same face (>= 15
in every frame), where either hash alone overlaps. The ResNet runs only for the accepted clips, at the end
(`clip_identity`): ~0.02 CPU s a face in torch (`dlib_resnet`), ~0.13 s in dlib's own runtime.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DLIB_PACKAGE = "face_recognition_models"
DLIB_FILES = {"shape": "shape_predictor_5_face_landmarks.dat", "resnet": "dlib_face_recognition_resnet_model_v1.dat"}
# A crop made by curation's rule holds the face box centred at ~0.45 of its side (pipeline.curate.faces).
CROP_FACE_RATIO = 0.45


@dataclass
class IdentityConfig:
    backend: str = "dlib"          # dlib (registry package, offline) | arcface (insightface w600k_r50.onnx file)
    arcface_model: str = ""        # backend arcface: path to w600k_r50.onnx
    frames: int = 3                # aligned faces averaged per accepted clip (each ~0.02 CPU s with dlib's ResNet in torch)
    every: int = 8                 # keep a face chip + frame hash every N frames (rounded up to faces.stride)
    max_samples: int = 2048        # per video (~140 MB of dlib chips); beyond it `every` doubles (older thinned)
    same_person: float = 0.0       # distance below which two faces are one person; 0 = the encoder's rule
    threads: int = 1               # torch CPU threads while the dlib ResNet runs (restored after; one worker per core)


class NoFace(ValueError):
    """A photo in which no usable face (or more than one) was found."""


def dlib_model_files() -> dict[str, Path]:
    """The .dat files of face-recognition-models, found without importing the package (its __init__
    imports pkg_resources, absent from recent setuptools): the package folder from its import spec."""
    spec = importlib.util.find_spec(DLIB_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {DLIB_PACKAGE.replace('_', '-')} is not installed "
                                "(pip install face-recognition-models dlib-bin)")
    models = Path(list(spec.submodule_search_locations)[0]) / "models"
    out = {k: models / name for k, name in DLIB_FILES.items()}
    missing = [str(p) for p in out.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"dlib model files missing: {', '.join(missing)}")
    return out


def distance(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Distance between embeddings (..., D): 'euclidean' (dlib) or 'cosine' (1 - cos, ArcFace)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if metric == "euclidean":
        return np.linalg.norm(a - b, axis=-1)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return 1.0 - (a * b).sum(-1) / np.maximum(na * nb, 1e-12)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a, b) over the last axis: the identity similarity (CSIM) whatever the encoder's own metric."""
    return 1.0 - distance(a, b, "cosine")


@dataclass(frozen=True)
class FaceIdentity:
    """One face's embedding with the rule that compares it (what tracking stores on a detection)."""
    emb: np.ndarray
    model: str
    metric: str
    same_below: float

    def same_person(self, other: FaceIdentity) -> bool:
        if other.model != self.model:
            raise ValueError(f"identity embeddings of two models: {self.model} vs {other.model}")
        return float(distance(self.emb, other.emb, self.metric)) < self.same_below


# ---------------------------------------------------------------- encoders

class _Encoder:
    """Shared by both backends: the 5-point alignment inside a detector box, batching, clip means."""

    name = metric = ""
    same_below = 0.0
    dim = 0

    def __init__(self, cfg: IdentityConfig):
        import dlib

        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(dlib_model_files()["shape"]))
        if cfg.same_person > 0:
            self.same_below = cfg.same_person

    def _landmarks(self, rgb: np.ndarray, box) -> object:
        """dlib's five points in a relative (x, y, w, h) box. MediaPipe's boxes sit ~5% lower than the
        dlib detector's the predictor was trained on: the square is moved up by that much."""
        h, w = rgb.shape[:2]
        side = max(box[2] * w, box[3] * h)
        cx, cy = (box[0] + box[2] / 2) * w, (box[1] + box[3] / 2) * h - 0.05 * side
        r = self._dlib.rectangle(int(round(cx - side / 2)), int(round(cy - side / 2)),
                                 int(round(cx + side / 2)), int(round(cy + side / 2)))
        return self._shape(np.ascontiguousarray(rgb), r)

    def faces(self, rgb: np.ndarray, boxes) -> np.ndarray:
        """(N, D) float32 embeddings of the faces in relative boxes of one picture."""
        if not len(boxes):
            return np.zeros((0, self.dim), np.float32)
        return self.embed_chips([self.chip(rgb, b) for b in boxes])

    def crops(self, crops) -> np.ndarray:
        """(N, D) embeddings of face crops made by curation's rule (face centred, ~0.45 of the side):
        shard crops, generated frames. No detector: the face is where the crop rule put it."""
        c = CROP_FACE_RATIO
        return self.embed_chips([self.chip(x, ((1 - c) / 2, (1 - c) / 2, c, c)) for x in crops])

    def identity(self, emb: np.ndarray) -> FaceIdentity:
        return FaceIdentity(np.asarray(emb, np.float32), self.name, self.metric, self.same_below)

    def mean(self, embs: np.ndarray) -> np.ndarray:
        """One identity from several embeddings of a face (a clip's frames)."""
        m = np.asarray(embs, np.float64).mean(0)
        return (m / max(np.linalg.norm(m), 1e-12) if self.metric == "cosine" else m).astype(np.float32)

    def photo(self, rgb: np.ndarray, detector=None) -> np.ndarray:
        """(D,) embedding of the one face in a photo (an opt-out request, a still portrait); NoFace when
        there is none or two of similar size. `detector`: rgb -> relative boxes, largest first (default:
        dlib's HOG detector: silent, no model file, and it finds smaller faces in photos than MediaPipe)."""
        found = (detector or self._hog_faces)(np.ascontiguousarray(rgb))
        if not found:
            raise NoFace("no face found")
        if len(found) > 1 and found[1][2] * found[1][3] >= 0.35 * found[0][2] * found[0][3]:
            raise NoFace(f"{len(found)} faces found; the photo must show one person")
        return self.faces(rgb, [found[0][:4]])[0]

    def _hog_faces(self, rgb: np.ndarray, min_score: float = 0.3) -> list[tuple]:
        """dlib's frontal-face detector (upsampled once: faces from ~40 px), largest first, as relative boxes
        in MediaPipe's convention (`_landmarks` moves boxes up 5%: these are moved down as much). Weak
        detections are dropped (the astronaut photo's badge scores 0.12, faces 0.47-1.27 here)."""
        if not hasattr(self, "_hog"):
            self._hog = self._dlib.get_frontal_face_detector()
        h, w = rgb.shape[:2]
        rects, scores, _ = self._hog.run(rgb, 1, 0)
        best = max(scores, default=0.0)
        keep = [r for r, sc in zip(rects, scores) if sc >= min_score or sc == best]
        boxes = [(r.left() / w, (r.top() + 0.05 * r.height()) / h, r.width() / w, r.height() / h) for r in keep]
        return sorted(boxes, key=lambda b: -b[2] * b[3])


class DlibIdentity(_Encoder):
    """dlib's alignment (5-point predictor, `get_face_chip`) and its ResNet's weights, run by torch
    (`dlib_resnet.DlibResNet`: the same descriptors as dlib's own runtime, ~6x less CPU without BLAS)."""
    name, metric, same_below, dim, chip_size = "dlib-resnet-v1", "euclidean", 0.6, 128, 150

    def __init__(self, cfg: IdentityConfig | None = None):
        from pipeline.curate.dlib_resnet import DlibResNet

        cfg = cfg or IdentityConfig()
        super().__init__(cfg)
        self._net = DlibResNet(dlib_model_files()["resnet"])
        self._threads = cfg.threads

    def chip(self, rgb: np.ndarray, box) -> np.ndarray:
        """(150, 150, 3) uint8 face aligned by dlib (its 0.25 padding): what the ResNet sees."""
        return np.asarray(self._dlib.get_face_chip(np.ascontiguousarray(rgb), self._landmarks(rgb, box),
                                                   self.chip_size, 0.25))

    def embed_chips(self, chips) -> np.ndarray:
        if not len(chips):
            return np.zeros((0, self.dim), np.float32)
        from pipeline.threads import torch_threads

        with torch_threads(self._threads):
            return self._net.embed(np.stack(chips))


# insightface.utils.face_align.arcface_dst: eye centres and nose tip of the 112 px ArcFace crop
_ARCFACE_EYES_NOSE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366]])


class ArcFaceIdentity(_Encoder):
    name, metric, same_below, dim, chip_size = "arcface-w600k_r50", "cosine", 0.6, 512, 112

    def __init__(self, cfg: IdentityConfig):
        path = Path(cfg.arcface_model).expanduser()
        if not cfg.arcface_model or not path.is_file():
            raise FileNotFoundError(f"identity.backend=arcface needs identity.arcface_model, the w600k_r50.onnx "
                                    f"of insightface's buffalo_l pack (not found: {cfg.arcface_model or '(unset)'})")
        super().__init__(cfg)
        try:
            import onnxruntime as ort
            from insightface.model_zoo import get_model
            from insightface.model_zoo.arcface_onnx import ArcFaceONNX
        except ImportError as e:
            raise ImportError(f"identity.backend=arcface needs insightface and onnxruntime ({e})") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        try:
            net = get_model(str(path), providers=["CPUExecutionProvider"], sess_options=opts)
        except Exception as e:
            raise ValueError(f"cannot load {path} as an ArcFace model: {type(e).__name__}: "
                             f"{(str(e).strip().splitlines() or [''])[0][:160]}") from None
        if not isinstance(net, ArcFaceONNX):
            raise ValueError(f"{path} is not an ArcFace recognition model ({type(net).__name__})")
        net.prepare(ctx_id=-1)
        self._net, self.dim = net, int(net.output_shape[1])
        self.chip_size = int(net.input_size[0])

    def chip(self, rgb: np.ndarray, box) -> np.ndarray:
        """ArcFace's 112 crop: the similarity that puts dlib's eye centres and nose on ArcFace's template
        (dlib's nose point is the base of the nose, a few pixels below the template's tip)."""
        import cv2

        p = np.array([[q.x, q.y] for q in self._landmarks(rgb, box).parts()], np.float64)
        eyes = sorted([p[0:2].mean(0), p[2:4].mean(0)], key=lambda e: e[0])
        m = _similarity(np.array([eyes[0], eyes[1], p[4]]), _ARCFACE_EYES_NOSE * self.chip_size / 112.0)
        return cv2.warpAffine(np.ascontiguousarray(rgb), m, (self.chip_size, self.chip_size), borderValue=0)

    def embed_chips(self, chips) -> np.ndarray:
        if not len(chips):
            return np.zeros((0, self.dim), np.float32)
        e = np.asarray(self._net.get_feat([np.ascontiguousarray(c[..., ::-1]) for c in chips]), np.float64)  # BGR
        return (e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 least-squares similarity transform (rotation, uniform scale, shift) taking src points to dst."""
    sm, dm = src.mean(0), dst.mean(0)
    s, d = src - sm, dst - dm
    a = (s * d).sum() / max((s * s).sum(), 1e-12)                                 # scale * cos
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / max((s * s).sum(), 1e-12)  # scale * sin
    r = np.array([[a, -b], [b, a]])
    return np.hstack([r, (dm - r @ sm)[:, None]]).astype(np.float32)


def encoder_rule(model: str, cfg: IdentityConfig) -> tuple[str, float]:
    """(metric, same-person distance) of an encoder by name, without loading it (the driver's dataset step)."""
    for cls in (DlibIdentity, ArcFaceIdentity):
        if cls.name == model:
            return cls.metric, cfg.same_person or cls.same_below
    raise ValueError(f"unknown identity model {model!r}")


def make_encoder(cfg: IdentityConfig | None = None):
    cfg = cfg or IdentityConfig()
    if cfg.backend == "dlib":
        return DlibIdentity(cfg)
    if cfg.backend == "arcface":
        return ArcFaceIdentity(cfg)
    raise ValueError(f"identity.backend must be 'dlib' or 'arcface', got {cfg.backend!r}")


# ---------------------------------------------------------------- frame hashes (duplicates)

def dhash(gray: np.ndarray) -> int:
    """64-bit difference hash: the signs of horizontal gradients of the picture at 9x8 (as a signed int64,
    so it fits Parquet's int64). Survives re-encoding and rescaling; not a crop or a mirror."""
    import cv2

    small = cv2.resize(np.ascontiguousarray(gray), (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int(np.packbits(bits).view(">i8")[0])


def hamming(a, b) -> np.ndarray:
    """Bits that differ between int64 hashes (broadcasting)."""
    x = np.ascontiguousarray(np.bitwise_xor(np.asarray(a, np.int64), np.asarray(b, np.int64)))
    return np.unpackbits(x.reshape(-1).view(np.uint8)).reshape(-1, 64).sum(1).reshape(x.shape)


# ---------------------------------------------------------------- the decode-pass consumer

class IdentitySampler:
    """Consumer of the decode pass (after the face scanner): face chips and frame hashes where the
    scanner found one usable face; `clip_identity(start, end)` embeds a clip from them. A
    decodepass.Consumer: `finish(n)` -> {frame: face chip}."""

    name = "identity"

    def __init__(self, cfg: IdentityConfig, encoder, faces, face_w_ratio: float, face_h_ratio: float):
        from pipeline.curate.quality import on_detection_frames

        self.every = on_detection_frames(cfg.every, faces.cfg.stride)
        self.cfg, self.encoder, self.faces = cfg, encoder, faces
        self.ratios = (face_w_ratio, face_h_ratio)
        self.chips: dict[int, np.ndarray] = {}
        self.hashes: dict[int, tuple[int, int]] = {}     # frame -> (face-crop dHash, whole-frame dHash)

    def update(self, frame) -> None:
        box = self.faces.sampled_box(frame.index, self.every)
        if box is None:
            return
        from pipeline.curate.quality import face_crop_box
        from pipeline.video_io import crop_square

        gray = frame.gray()
        x0, y0, size = face_crop_box(box, gray.shape[1], gray.shape[0], *self.ratios)
        self.hashes[frame.index] = (dhash(crop_square(gray, x0, y0, size)), dhash(gray))
        self.chips[frame.index] = self.encoder.chip(frame.rgb(), box)
        if len(self.chips) > self.cfg.max_samples:   # bounded memory on long videos: halve the sampling rate
            self.every *= 2
            for i in [i for i in self.chips if i % self.every]:
                del self.chips[i], self.hashes[i]

    def finish(self, num_frames: int) -> dict[int, np.ndarray]:
        return self.chips

    def clip_identity(self, start: int, end: int) -> dict:
        """{identity (D,) list or None, identity_frames, face_hashes, frame_hashes} of the clip [start, end)."""
        idx = sorted(i for i in self.chips if start <= i < end)
        hashes = {"face_hashes": [self.hashes[i][0] for i in idx], "frame_hashes": [self.hashes[i][1] for i in idx]}
        if not idx:
            return {"identity": None, "identity_frames": 0, **hashes}
        pick = [idx[k] for k in np.unique(np.linspace(0, len(idx) - 1, min(len(idx), self.cfg.frames)).round()
                                          .astype(int))]
        embs = self.encoder.embed_chips([self.chips[i] for i in pick])
        return {"identity": self.encoder.mean(embs).tolist(), "identity_frames": len(pick), **hashes}
