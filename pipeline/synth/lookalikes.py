"""Test corpus parts that curation must NOT accept as a frontal human face, each with its truth.

Face-like non-faces (`LOOKALIKES`), chosen by measurement with MediaPipe's short-range detector
and 478-point mesh (the curation pair), at the corpus's sizes:
  "cartoon"         a face drawn with cv2 primitives (skin oval, eyes, brows, nose, mouth, hair):
                    detector 0.83-0.91, the mesh fits it -> only its flat skin gives it away
  "cartoon_screen"  the same drawing shown on a monitor (a caricature on a screen)
  "cat"             scikit-image's chelsea (a real cat's face): detector 0.53-0.54, the mesh finds nothing
A drawn emoji (yellow disc, two dots, a smile) was tried too: the detector never fires on it, so it
tests nothing the no-face scenes do not.

Turned heads (`turned_face`): a real face seen from the side cannot be cut from a frontal photo, so
it is rendered: the photo's own 478-point mesh (x, y and MediaPipe's depth z) is rotated about the
vertical axis and each mesh triangle's texture is warped to its new place, far triangles first,
back-facing ones dropped. Only the mesh's surface is drawn (forehead to chin, no ears or hair).
Identity names `<person>_yaw<degrees>` (e.g. "astronaut_yaw60") ask pipeline.synth.heads.head for one.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

LOOKALIKES = ("cartoon", "cartoon_screen", "cat")


def is_lookalike(identity: str) -> bool:
    return identity in LOOKALIKES


def yaw_of(identity: str) -> float:
    """The rotation (degrees) a `<person>_yaw<deg>` identity was rendered with; 0 for the others."""
    _, _, variant = identity.partition("_")
    return float(variant[3:]) if variant.startswith("yaw") else 0.0


# ---------------------------------------------------------------- drawn and animal faces

def draw_cartoon(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8, alpha float32) of a drawn face filling a size x size patch: flat fills, dark outlines."""
    import cv2

    s = size / 256
    img = np.full((size, size, 3), 255, np.uint8)
    alpha = np.zeros((size, size), np.uint8)
    c = size // 2

    def P(x, y):
        return int(round(c + x * s)), int(round(c + y * s))

    def R(a, b):
        return int(round(a * s)), int(round(b * s))

    for target, fill in ((img, (240, 200, 170)), (alpha, 255)):
        cv2.ellipse(target, P(0, 10), R(84, 108), 0, 0, 360, fill, -1, cv2.LINE_AA)
    cv2.ellipse(img, P(0, 10), R(84, 108), 0, 0, 360, (60, 40, 30), max(1, int(2 * s)), cv2.LINE_AA)
    for target, fill in ((img, (80, 50, 20)), (alpha, 255)):                       # hair cap
        cv2.ellipse(target, P(0, -64), R(92, 51), 0, 180, 360, fill, -1, cv2.LINE_AA)
    for sx in (-1, 1):
        e = P(sx * 33, 0)
        cv2.ellipse(img, e, R(13, 9), 0, 0, 360, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.ellipse(img, e, R(13, 9), 0, 0, 360, (0, 0, 0), max(1, int(2 * s)), cv2.LINE_AA)
        cv2.circle(img, e, int(6 * s), (60, 90, 160), -1, cv2.LINE_AA)
        cv2.circle(img, e, int(3 * s), (0, 0, 0), -1, cv2.LINE_AA)
        cv2.line(img, P(sx * 33 - 15, -20), P(sx * 33 + 15, -23), (60, 40, 20), max(1, int(4 * s)), cv2.LINE_AA)
    cv2.line(img, P(0, 5), P(-8, 31), (150, 100, 80), max(1, int(2 * s)), cv2.LINE_AA)      # nose
    cv2.ellipse(img, P(0, 51), R(26, 10), 0, 0, 180, (180, 40, 40), -1, cv2.LINE_AA)          # mouth
    return img, alpha.astype(np.float32) / 255


def _on_screen(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The drawing on a monitor: a dark bezel around a slightly blue-tinted, brighter screen."""
    import cv2

    n = rgb.shape[0]
    b = n // 10
    out = np.full((n + 2 * b, n + 2 * b, 3), 35, np.uint8)
    screen = np.clip(rgb.astype(np.float32) * np.float32([0.92, 0.97, 1.08]) + 8, 0, 255).astype(np.uint8)
    out[b:b + n, b:b + n] = cv2.GaussianBlur(screen, (0, 0), 0.6)                 # the panel's softness
    return out, np.ones(out.shape[:2], np.float32)


@lru_cache(maxsize=None)
def lookalike_picture(name: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """(rgb float32 patch, alpha float32, face-like region x0, y0, x1, y1 in patch pixels)."""
    import cv2

    if name == "cartoon":
        rgb, alpha = draw_cartoon(256)
        return rgb.astype(np.float32), alpha, (44.0, 10.0, 212.0, 246.0)
    if name == "cartoon_screen":
        rgb, _ = draw_cartoon(256)
        rgb, alpha = _on_screen(rgb)
        return rgb.astype(np.float32), alpha, (44.0 + 25, 10.0 + 25, 212.0 + 25, 246.0 + 25)
    if name == "cat":
        import skimage.data

        cat = skimage.data.chelsea()[0:300, 60:360]                                   # the cat's head, 300 px
        yy, xx = np.mgrid[0:300, 0:300].astype(np.float32)
        alpha = cv2.GaussianBlur((((xx - 150) / 140) ** 2 + ((yy - 160) / 150) ** 2 <= 1).astype(np.float32),
                                 (0, 0), 8)
        return cat.astype(np.float32), alpha, (40.0, 40.0, 260.0, 280.0)
    raise KeyError(name)


# ---------------------------------------------------------------- turned heads

@lru_cache(maxsize=None)
def _triangles() -> np.ndarray:
    """(T, 3) vertex indices of the mesh's triangles, from MediaPipe's tessellation edges."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    adj: dict[int, set[int]] = {}
    for a, b in FACEMESH_TESSELATION:
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set()).add(a)
    tri = {tuple(sorted((a, b, c))) for a, b in FACEMESH_TESSELATION for c in adj[a] & adj[b]}
    return np.array(sorted(tri), dtype=np.int64)


def turned_face(img: np.ndarray, mesh3: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The face of `img` (rgb float32) turned by `degrees` about the vertical axis (positive: towards
    the image's right). mesh3: (478, 3) pixel coordinates x, y and depth z (MediaPipe's z times the
    width). Returns (rgb float32 of img's shape, coverage float32 in [0, 1], (478, 2) turned points)."""
    import cv2

    th = np.radians(degrees)
    c = mesh3[:468].mean(0)
    dx, dz = mesh3[:, 0] - c[0], mesh3[:, 2] - c[2]
    x = c[0] + dx * np.cos(th) - dz * np.sin(th)             # nearer points (z < 0) move towards +x
    z = c[2] + dx * np.sin(th) + dz * np.cos(th)
    turned = np.stack([x, mesh3[:, 1]], 1)
    tri = _triangles()
    src_xy = mesh3[:, :2]
    front = np.sign(np.cross(src_xy[tri[:, 1]] - src_xy[tri[:, 0]], src_xy[tri[:, 2]] - src_xy[tri[:, 0]]))
    out = np.zeros_like(img)
    cover = np.zeros(img.shape[:2], np.float32)
    H, W = img.shape[:2]
    for k in np.argsort(-z[tri].mean(1)):                     # far first: near triangles paint over them
        t = tri[k]
        dst = turned[t].astype(np.float32)
        area = float(np.cross(dst[1] - dst[0], dst[2] - dst[0]))
        if np.sign(area) != front[k] or abs(area) < 0.5:       # turned away from the camera, or edge-on
            continue
        x0, y0 = np.maximum(np.floor(dst.min(0)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(dst.max(0)).astype(int) + 1, [W, H])
        if x1 <= x0 or y1 <= y0:
            continue
        m = cv2.getAffineTransform(src_xy[t].astype(np.float32), dst - np.float32([x0, y0]))
        patch = cv2.warpAffine(img, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        inside = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillConvexPoly(inside, np.round((dst - [x0, y0]) * 4).astype(np.int32), 1, cv2.LINE_8, 2)
        sel = inside > 0
        out[y0:y1, x0:x1][sel] = patch[sel]
        cover[y0:y1, x0:x1][sel] = 1.0
    return out, cover, turned
