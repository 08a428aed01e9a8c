"""Face verification: is the tracked face a real, roughly frontal human face? Measured on the
crops the shards will store, by MediaPipe's 478-point mesh; filters.judge decides.

`FaceVerifier` is a consumer of the single decode pass (after the face scanner, like the quality
sampler). On sampled detection frames (`filters.landmark_samples_per_s`, at the detection stride)
whose detection is a usable face, it cuts the square crop that the clip rule (faces.place_crop)
gives that frame's face box, resized to `filters.verify_size` like the shards' crops, and runs the
mesh on it. A sample counts as "found" only if one of the mesh's faces is the tracked face: its
centre inside the tracked box and its width 0.6-1.6x the box's (measured on real talking heads:
0.86-1.03x, centre within 0.4-0.6 of the box; a poster or inset face elsewhere in the crop does not
vouch for the tracked one). For found samples it records the yaw
(landmarks.yaw_degrees) and the flat-skin share (below). Cost: one mesh call (~10 ms on a CPU at
256 px) per sample, so at most landmark_samples_per_s x filters.max_duration_s calls per clip
(17 at the defaults), whatever the video's resolution. There is no second decode: the crop is
the clip rule applied to that frame's box; the clip's own crop (the median over its boxes) is
what `make shards` re-checks on every stored frame (its min_landmark_rate drop).
Each sample also looks for a picture-in-picture around the face and for black bars on the small
frame (insets.py): `region(start, end)` is where the clip's crop must stay.

Flat skin: drawn, cartoon and anime faces get a mesh and a confident detection, but their skin
is flat paint. Inside the mesh's face oval (eroded, eyes/brows/lips cut out), on the crop resized
to 128 px and blurred (sigma 1 px), the share of pixels whose luminance gradient is below 0.5
grey levels per pixel. Measured on sampled frames: real footage (talking heads of 19 public example
videos, film, TV, a vertical social clip; photos, JPEG q30, downscaled to 96 px and back) 0.00-0.06
per frame, one frame 0.19; cv2-drawn cartoon faces 0.57-0.89 (with noise, blur, JPEG); an anime frame
(ToonCrafter) 0.12-0.24. A clip's value is the median over its samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pipeline.curate.faces import FacesConfig, place_crop
from pipeline.curate.filters import FaceCheck, FiltersConfig
from pipeline.curate.insets import active_area, clip_inset, clip_picture, find_inset, luma


@dataclass
class Sample:
    found: bool             # the mesh found the tracked face in the crop
    yaw_deg: float          # nan when not found
    flat_skin: float        # nan when not found
    inset: tuple[float, float, float, float] | None = None   # the picture-in-picture holding the face (insets.py)
    picture: tuple[float, float, float, float] | None = None  # the frame inside its black bars (insets.py)
    shape: np.ndarray | None = None   # float32 (478, 2) mesh, centred and scaled to unit RMS (expression_change)


# ---------------------------------------------------------------- mesh regions

def _ring(edges) -> list[int]:
    """Ordered vertex loop from an unordered closed set of mesh edges (MediaPipe's connection sets)."""
    nxt = {}
    for a, b in edges:
        nxt.setdefault(a, []).append(b)
        nxt.setdefault(b, []).append(a)
    start = min(nxt)
    ring, prev = [start], None
    while True:
        cur = ring[-1]
        step = next(v for v in nxt[cur] if v != prev)
        if step == start:
            return ring
        ring.append(step)
        prev = cur


@lru_cache(maxsize=1)
def _regions() -> tuple[list[int], list[list[int]]]:
    """(the face oval as an ordered loop, [left eye + brow, right eye + brow, lips] point sets)."""
    from mediapipe.python.solutions import face_mesh_connections as fmc

    def points(*sets):
        return sorted({i for s in sets for e in s for i in e})

    oval = _ring(fmc.FACEMESH_FACE_OVAL)
    features = [points(fmc.FACEMESH_LEFT_EYE, fmc.FACEMESH_LEFT_EYEBROW),
                points(fmc.FACEMESH_RIGHT_EYE, fmc.FACEMESH_RIGHT_EYEBROW), points(fmc.FACEMESH_LIPS)]
    return oval, features


def flat_skin_share(rgb: np.ndarray, lm: np.ndarray, size: int = 128) -> float:
    """Share of the face's skin (mesh oval minus eyes, brows, lips) with a luminance gradient below
    0.5 grey levels per pixel, measured at `size` px (module docstring for the figures)."""
    import cv2

    oval, features = _regions()
    s = size / rgb.shape[0]
    img = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    pts = np.asarray(lm, dtype=np.float64)[:, :2] * size                # mesh x, y are relative to the crop
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(pts[oval]).astype(np.int32)], 1)
    k = max(3, int(0.06 * np.ptp(pts[:, 0])) | 1)                       # margin: hair, background, outlines
    kernel = np.ones((k, k), np.uint8)
    mask = cv2.erode(mask, kernel)
    for f in features:
        hole = np.zeros_like(mask)
        cv2.fillPoly(hole, [cv2.convexHull(np.round(pts[f]).astype(np.int32))], 1)
        mask[cv2.dilate(hole, kernel) > 0] = 0
    if mask.sum() < 20:
        return float("nan")
    luma = cv2.GaussianBlur(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 1.0)
    grad = np.hypot(cv2.Sobel(luma, cv2.CV_32F, 1, 0), cv2.Sobel(luma, cv2.CV_32F, 0, 1)) / 8   # levels per px
    return float(np.mean(grad[mask > 0] < 0.5))


def inset_of(small: np.ndarray, box, faces_cfg: FacesConfig) -> tuple[float, float, float, float] | None:
    """insets.find_inset around the crop the clip rule gives this face on the small frame (RGB or luma)."""
    h, w = small.shape[:2]
    c = place_crop([box], w, h, faces_cfg)
    return find_inset(small, box, (c.x0 / w, c.y0 / h, (c.x0 + c.size) / w, (c.y0 + c.size) / h))


def unit_shape(lm: np.ndarray) -> np.ndarray:
    """The mesh's (x, y) centred and scaled to unit RMS distance from the centre (position and size removed)."""
    p = np.asarray(lm, np.float64)[:, :2]
    p = p - p.mean(0)
    return (p / max(np.sqrt((p ** 2).sum(1).mean()), 1e-12)).astype(np.float32)


def expression_change(shapes: list[np.ndarray]) -> float:
    """How much a face changes shape across a clip's samples once position, size and in-plane rotation
    are removed (generalised Procrustes on unit_shape meshes): the median RMS distance of each sample
    from the mean shape. A photo shown as a video (re-encoded, under the detector's and the mesh's
    jitter) scores 0.0002-0.0012; real talking heads 0.0067-0.10 (filters.min_expression: 0.003). nan
    with fewer than 2 shapes. A slow zoom and pan over a photo (Ken Burns) scores ~0.0055: not caught."""
    if len(shapes) < 2:
        return float("nan")
    s = np.asarray(shapes, np.float64)                    # (N, 478, 2)
    mean = s[0]
    for _ in range(3):
        aligned = []
        for x in s:                                        # the rotation that best maps x onto the mean
            u, _, vt = np.linalg.svd(x.T @ mean)
            aligned.append(x @ (u @ vt))
        mean = np.mean(aligned, 0)
        mean /= max(np.sqrt((mean ** 2).sum(1).mean()), 1e-12)
    return float(np.median([np.sqrt(((a - mean) ** 2).sum(1).mean()) for a in aligned]))


def tracked_mesh(faces: list[np.ndarray], box_px: tuple[float, float, float, float], size: int) -> np.ndarray | None:
    """The mesh face (landmarks relative to a size x size crop) that is the tracked face, whose box
    (x, y, w, h) is given in crop pixels; None if no mesh face is."""
    x, y, w, h = box_px
    for lm in faces:
        p = lm[:, :2] * size
        cx, cy = p.mean(0)
        width = np.ptp(p[:, 0])
        if x <= cx <= x + w and y <= cy <= y + h and 0.6 * w <= width <= 1.6 * w:
            return lm
    return None


# ---------------------------------------------------------------- the consumer

def sample_every(fps: float, stride: int, per_s: float) -> int:
    """Frames between samples: about fps / per_s, a multiple of the detection stride (samples sit on
    detection frames, whose boxes are known)."""
    stride = max(1, stride)
    return stride * max(1, int(round(fps / max(per_s, 1e-6) / stride)))


class FaceVerifier:
    """Consumer of the decode pass (decodepass.Consumer), after the face scanner: `update(frame)` on every
    frame, `finish(n)` -> {frame: Sample}, then `check(start, end, det_frames)` per clip."""

    name = "verify"

    def __init__(self, faces_cfg: FacesConfig, cfg: FiltersConfig, mesh, scanner, width: int, height: int,
                 fps: float):
        self.faces_cfg, self.cfg, self.mesh, self.scanner = faces_cfg, cfg, mesh, scanner
        self.width, self.height = width, height
        self.every = sample_every(fps, faces_cfg.stride, cfg.landmark_samples_per_s)
        self.samples: dict[int, Sample] = {}

    def update(self, frame) -> None:
        box = self.scanner.sampled_box(frame.index, self.every)
        if box is not None:
            sample = self.measure(frame.rgb(), box)
            grey = luma(frame.small)                 # one conversion for both looks at the small frame
            sample.inset = inset_of(grey, box, self.faces_cfg)
            sample.picture = active_area(grey)
            self.samples[frame.index] = sample

    def finish(self, num_frames: int) -> dict[int, Sample]:
        return self.samples

    def measure(self, rgb: np.ndarray, box) -> Sample:
        """Mesh on the crop the clip rule gives this face box; rgb is the full display frame."""
        from pipeline.video_io import crop_square

        h, w = rgb.shape[:2]
        c = place_crop([box], w, h, self.faces_cfg)
        n = self.cfg.verify_size
        crop = crop_square(rgb, c.x0, c.y0, c.size, n)
        s = n / c.size
        box_px = ((box[0] * w - c.x0) * s, (box[1] * h - c.y0) * s, box[2] * w * s, box[3] * h * s)
        lm = tracked_mesh(self.mesh.all(crop), box_px, n)
        if lm is None:
            return Sample(False, float("nan"), float("nan"))
        from pipeline.curate.landmarks import yaw_degrees

        return Sample(True, yaw_degrees(lm, n, n), flat_skin_share(crop, lm), shape=unit_shape(lm))

    def region(self, start: int, end: int) -> tuple[tuple[float, float, float, float] | None, bool]:
        """Where the crop of [start, end) must stay (relative x0, y0, x1, y1), and whether that is a
        picture-in-picture: the inset most samples agree on, else the picture inside black bars
        (letterbox, pillarbox), else (None, False): the whole frame."""
        got = self._within(start, end)
        inset = clip_inset([s.inset for s in got])
        if inset is not None:
            return inset, True
        return clip_picture([s.picture for s in got]), False

    def _within(self, start: int, end: int) -> list[Sample]:
        return [s for i, s in self.samples.items() if start <= i < end]

    def check(self, start: int, end: int, det_frames: list[int]) -> FaceCheck:
        got = self._within(start, end)
        found = [s for s in got if s.found]
        scores = [self.scanner.dets[k].score for k in det_frames if start <= k < end]
        def med(v):   # median of the finite values (a sample whose skin could not be measured is skipped)
            v = [x for x in v if np.isfinite(x)]
            return float(np.median(v)) if v else float("nan")

        return FaceCheck(len(got), len(found) / len(got) if got else 0.0, med([abs(s.yaw_deg) for s in found]),
                         med([s.flat_skin for s in found]), med(scores),
                         expression_change([s.shape for s in found if s.shape is not None]))


def check_image(rgb: np.ndarray, detector, mesh, faces_cfg: FacesConfig, cfg: FiltersConfig) -> tuple[str, FaceCheck]:
    """A still portrait through a clip's face checks (one sample; filters.face_reason): the largest
    detected face is the tracked one. Returns (reason or '', measures)."""
    from pipeline.curate.filters import face_reason

    found = detector(rgb)
    if not found:
        return "no_face", FaceCheck(0, 0.0, float("nan"), float("nan"), float("nan"))
    s = FaceVerifier(faces_cfg, cfg, mesh, None, rgb.shape[1], rgb.shape[0], 1.0).measure(rgb, found[0][:4])
    face = FaceCheck(1, float(s.found), abs(s.yaw_deg), s.flat_skin, float(found[0][4]))
    return face_reason(face, cfg), face
