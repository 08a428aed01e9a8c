"""Test corpus parts: real face photos made into animatable heads, and backgrounds.

Photos: `skimage.data.astronaut()` (Eileen Collins) and matplotlib's `grace_hopper.jpg`; more
"identities" are mirrored, colour-shifted variants of them (same person, different look).
`head(identity)` cuts the face out with a soft elliptical mask and prepares the expression
fields (mouth opens, eyes blink) around MediaPipe face-mesh points found once per photo;
`expressed` / `expressed_mesh` apply them to the pixels / the mesh. pipeline/synth/corpus.py
places these heads on `background`s, moves them and writes the videos and ground truth.
Turned heads (`<person>_yaw<deg>`) and face-like non-faces (a drawn cartoon, a cat) come from
pipeline/synth/lookalikes.py through the same `head`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np


# ---------------------------------------------------------------- source photos
@lru_cache(maxsize=None)
def _photo(person: str) -> np.ndarray:
    if person == "astronaut":
        import skimage.data

        return skimage.data.astronaut()[..., :3].copy()
    if person == "hopper":
        import matplotlib.cbook
        from PIL import Image

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            return np.asarray(Image.open(f).convert("RGB")).copy()
    raise KeyError(person)


@dataclass
class Head:
    """A face cut-out in its own (patch) coordinates, with the warp fields it needs."""
    rgb: np.ndarray                 # float32 (P, P, 3)
    alpha: np.ndarray               # float32 (P, P)
    box: np.ndarray                 # face box (x0, y0, x1, y1) in patch coords
    mesh: np.ndarray                # (478, 2) mesh points in patch coords
    fields: dict = field(default_factory=dict)


@lru_cache(maxsize=None)
def _mesh3(person: str) -> np.ndarray:
    """(478, 3) mesh of a photo in pixels: x, y and MediaPipe's depth z scaled by the width (as x is)."""
    from pipeline.curate.landmarks import FaceMesh478

    img = _photo(person)
    with FaceMesh478(static=True) as fm:
        lm = fm(img)
    if lm is None:
        raise RuntimeError(f"face mesh found no face on bundled photo {person!r}")
    # Round so that the ground truth never depends on the last float bits of the mesh model.
    return np.round(lm * [img.shape[1], img.shape[0], img.shape[1]] * 2) / 2


def _mesh_points(person: str) -> np.ndarray:
    """(478, 2) mesh of a photo in pixels (x, y of _mesh3: one mesh run per photo)."""
    return _mesh3(person)[:, :2]


@lru_cache(maxsize=None)
def head(identity: str) -> Head:
    """Identity name = person[_warm|_cool] (the colour variants are also mirrored), person_yaw<deg>
    (the face turned by that many degrees, pipeline/synth/lookalikes.turned_face), or a face-like
    non-face of lookalikes.LOOKALIKES."""
    from pipeline.synth.lookalikes import is_lookalike, turned_face, yaw_of

    if is_lookalike(identity):
        return _lookalike_head(identity)
    person, _, variant = identity.partition("_")
    img = _photo(person).astype(np.float32)
    pts = _mesh_points(person).copy()
    cover = None
    if variant.startswith("yaw"):
        img, cover, pts = turned_face(img, _mesh3(person), yaw_of(identity))
        pts = np.round(pts * 2) / 2
    elif variant:
        img = img[:, ::-1].copy()
        pts[:, 0] = img.shape[1] - 1 - pts[:, 0]
        tint = {"warm": (1.12, 1.0, 0.85), "cool": (0.88, 0.97, 1.15)}[variant]
        img = np.clip(img * np.float32(tint), 0, 255)
    return _cutout(img, pts, cover)


def _lookalike_head(name: str) -> Head:
    """A face-like non-face as a Head: its 'mesh' is the corners of its face-like region (so the corpus
    places and boxes it like a face) and it has no expression (zero fields)."""
    from pipeline.synth.lookalikes import lookalike_picture

    rgb, alpha, (x0, y0, x1, y1) = lookalike_picture(name)
    side = rgb.shape[0]
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    h = Head(rgb, alpha, np.array([x0, y0, x1, y1], np.float32),
             np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], np.float32))
    h.fields.update(mouth=np.zeros_like(xx), eyes=np.zeros_like(xx), grid=(xx, yy), roi=(0, 0, 1, 1))
    return h


def _cutout(img: np.ndarray, pts: np.ndarray, cover: np.ndarray | None = None) -> Head:
    """The face of a photo (rgb float32, its mesh points in pixels) as a Head; `cover` (a rendered
    face's coverage, same size as img) limits the alpha to what was drawn."""
    import cv2

    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    fw, fh = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = int(2.4 * max(fw, fh)) // 2 * 2
    ox, oy = int(round(cx - side / 2)), int(round(cy - side / 2))
    pad = max(0, -ox, -oy, ox + side - img.shape[1], oy + side - img.shape[0])
    big = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REFLECT) if pad else img
    rgb = np.ascontiguousarray(big[oy + pad: oy + pad + side, ox + pad: ox + pad + side])
    pts = pts - [ox, oy]
    # Soft ellipse: face, hair and a little neck; the photo's own background mostly goes.
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    ecx, ecy = cx - ox, cy - oy - 0.06 * fh
    r = ((xx - ecx) / (0.78 * fw)) ** 2 + ((yy - ecy) / (0.78 * fh)) ** 2
    inside = (r <= 1).astype(np.float32)
    if cover is not None:
        big_cover = cv2.copyMakeBorder(cover, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0) if pad else cover
        inside *= big_cover[oy + pad: oy + pad + side, ox + pad: ox + pad + side]
    alpha = cv2.GaussianBlur(inside, (0, 0), 0.06 * fw)
    h = Head(rgb, alpha, np.array([x0 - ox, y0 - oy, x1 - ox, y1 - oy], np.float32), pts.astype(np.float32))
    # Expression fields: Gaussian windows around the mouth and each eye (from mesh points).
    mw = float(np.linalg.norm(pts[61] - pts[291]))
    m = (pts[0] + pts[17]) / 2
    gm = np.exp(-0.5 * (((xx - m[0]) / (0.55 * mw)) ** 2 + ((yy - m[1]) / (0.45 * mw)) ** 2))
    h.fields["mouth"] = (-(yy - m[1]) * gm).astype(np.float32)          # magnify about the mouth
    eye = np.zeros_like(xx)
    for a, b, top, bot in ((33, 133, 159, 145), (263, 362, 386, 374)):
        c = (pts[a] + pts[b] + pts[top] + pts[bot]) / 4
        ew = float(np.linalg.norm(pts[a] - pts[b]))
        g = np.exp(-0.5 * (((xx - c[0]) / (0.7 * ew)) ** 2 + ((yy - c[1]) / (0.45 * ew)) ** 2))
        eye += (yy - c[1]) * g                                              # squash about each eye
    h.fields["eyes"] = eye.astype(np.float32)
    h.fields["grid"] = (xx, yy)
    ys, xs = np.nonzero(0.5 * np.abs(h.fields["mouth"]) + 1.6 * np.abs(h.fields["eyes"]) > 0.01)
    h.fields["roi"] = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return h


def expressed(h: Head, mouth: float, eyes: float) -> tuple[np.ndarray, np.ndarray]:
    """Backward warp: src_y = y - k_m*m*(y-my)*g_m + k_e*e*(y-ey)*g_e. k_m < 1, k_e < 2.2: no folds."""
    import cv2

    # The fields are ~0 outside their region of interest, so only that region is resampled.
    x0, y0, x1, y1 = h.fields["roi"]
    xx, yy = h.fields["grid"]
    mapy = yy[y0:y1, x0:x1] + 0.5 * mouth * h.fields["mouth"][y0:y1, x0:x1] \
        + 1.6 * eyes * h.fields["eyes"][y0:y1, x0:x1]
    rgb = h.rgb.copy()
    rgb[y0:y1, x0:x1] = cv2.remap(h.rgb, xx[y0:y1, x0:x1], mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return rgb, h.alpha


def expressed_mesh(h: Head, mouth: float, eyes: float) -> np.ndarray:
    """Where the mesh points land after the warp: solve q_y + d(q) = p_y by fixed-point iteration."""
    side = h.rgb.shape[0]
    q = h.mesh.copy()
    xi = np.clip(np.round(q[:, 0]).astype(int), 0, side - 1)
    for _ in range(6):
        yi = np.clip(np.round(q[:, 1]).astype(int), 0, side - 1)
        d = 0.5 * mouth * h.fields["mouth"][yi, xi] + 1.6 * eyes * h.fields["eyes"][yi, xi]
        q[:, 1] = h.mesh[:, 1] - d
    return q


# ---------------------------------------------------------------- backgrounds
BG_TINTS = {"brick": (1.0, 0.55, 0.4), "grass": (0.45, 1.0, 0.45), "gravel": (0.6, 0.7, 1.0)}


def background(kind: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A background 25% larger than the frame (so it can pan), uint8 RGB."""
    import cv2

    W, H = int(w * 1.25), int(h * 1.25)
    if kind in BG_TINTS:
        import skimage.data

        gray = getattr(skimage.data, kind)().astype(np.float32)
        img = gray[..., None] * np.float32(BG_TINTS[kind])
    elif kind == "coffee":
        import skimage.data

        img = skimage.data.coffee().astype(np.float32)
    elif kind == "sunset":
        t = np.linspace(0, 1, 64, dtype=np.float32)[:, None, None]
        img = np.repeat((1 - t) * np.float32([250, 170, 60]) + t * np.float32([40, 30, 110]), 64, axis=1)
    elif kind == "noise":
        img = cv2.GaussianBlur(rng.uniform(0, 255, (48, 48, 3)).astype(np.float32), (0, 0), 2.0)
    else:
        raise KeyError(kind)
    return cv2.convertScaleAbs(cv2.resize(img, (W, H), interpolation=cv2.INTER_CUBIC))   # uint8
