"""Still portraits as pseudo-clips (supplementary §3, artistic reenactment).

Each image becomes a short clip by a smooth random geometric motion over time: scale, in-plane
rotation, translation and a mild perspective tilt, each a sum of two slow sinusoids with random
frequency and phase (so the motion has no jumps and never repeats exactly). The face is centred
first so that, at rest, it fills the crop like the video clips (face width ~0.45 of the crop).
Landmarks are NOT warped from the still: the encoder detects them on every transformed frame,
exactly as for a video clip. Ids come from the image bytes, so the same file always gets the
same clip id wherever it lives.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
FACE_W = 0.45      # face width / crop side at rest (paper's clips: 0.45)
CONTEXT = 1.25     # base image keeps this much more than the crop, so motion never shows borders early


@dataclass
class Motion:
    scale: float = 0.08          # +- relative zoom
    rotate_deg: float = 8.0      # +- in-plane rotation
    shift: float = 0.06          # +- translation, fraction of the crop side
    perspective: float = 0.12    # +- tilt: homography row-3 terms times the crop side


def still_items(folder: Path, fps: float, frames: int) -> list[dict]:
    """One work item per image in the folder (sorted), with a content-hash clip id."""
    items = []
    for p in sorted(Path(folder).iterdir()):
        if p.suffix.lower() not in EXTS or not p.is_file():
            continue
        cid = hashlib.sha1(p.read_bytes()).hexdigest()[:16]
        items.append({"clip_id": cid, "video_id": f"still-{cid}", "url": p.name, "origin": "still",
                      "media_path": str(p.resolve()), "start_frame": 0, "end_frame": int(frames), "fps": float(fps)})
    return items


class StillChecker:
    """Face checks for still portraits: one detector and one mesh for a run (built on first use)."""

    def __init__(self):
        self._models = None

    def __call__(self, path: Path) -> str:
        """'' when the image passes, else the reason (a clip's face reasons, or `no_face`)."""
        from pipeline.curate.faces import FacesConfig, make_detector
        from pipeline.curate.filters import FiltersConfig
        from pipeline.curate.landmarks import FaceMesh478
        from pipeline.curate.verify import check_image

        if self._models is None:
            faces = FacesConfig()
            self._models = (faces, FiltersConfig(), make_detector(faces), FaceMesh478(static=True, max_faces=2))
        faces, filters, detector, mesh = self._models
        try:
            img = read_rgb(path)
        except ValueError:
            return ""   # not an image: the pseudo-clip decode reports it as a failed item, with its reason
        return check_image(img, detector, mesh, faces, filters)[0]


def read_rgb(path: Path) -> np.ndarray:
    import cv2

    data = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ValueError(f"not a readable image: {Path(path).name}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def face_base(img: np.ndarray, size: int) -> np.ndarray:
    """Face-centred square of side CONTEXT * size (face width FACE_W * size), edge-padded."""
    from pipeline.curate.landmarks import FaceMesh478
    from pipeline.video_io import crop_square

    h, w = img.shape[:2]
    with FaceMesh478(static=True) as mesh:
        lm = mesh(img)
    if lm is not None:
        xs, ys = lm[:, 0] * w, lm[:, 1] * h
        cx, cy, fw = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2, max(xs.max() - xs.min(), 8.0)
        side = fw / FACE_W
    else:   # no face found: centre square; the per-frame landmarks will say "no face" where true
        cx, cy, side = w / 2, h / 2, 0.8 * min(h, w)
    base_side = int(round(side * CONTEXT))
    return crop_square(img, int(round(cx - base_side / 2)), int(round(cy - base_side / 2)), base_side,
                       int(round(size * CONTEXT)))


def _curve(rng: np.random.Generator, u: np.ndarray) -> np.ndarray:
    """Smooth curve in [-1, 1]: two slow sinusoids (0.3..1.2 cycles per clip), random phases."""
    f = rng.uniform(0.3, 1.2, 2)
    ph = rng.uniform(0, 2 * np.pi, 2)
    return 0.5 * (np.sin(2 * np.pi * f[0] * u + ph[0]) + np.sin(2 * np.pi * f[1] * u + ph[1]))


def homographies(n: int, size: int, base: int, seed: int, motion: Motion = Motion()) -> np.ndarray:
    """(n, 3, 3) maps from base-image pixels to output pixels."""
    rng = np.random.default_rng(seed)
    u = np.linspace(0.0, 1.0, n)
    s = 1.0 + motion.scale * _curve(rng, u)
    th = np.deg2rad(motion.rotate_deg) * _curve(rng, u)
    tx, ty = (motion.shift * size * _curve(rng, u) for _ in range(2))
    px, py = ((motion.perspective / size) * _curve(rng, u) for _ in range(2))
    c, cb = size / 2.0, base / 2.0
    out = np.empty((n, 3, 3))
    for i in range(n):
        to_origin = np.array([[1, 0, -cb], [0, 1, -cb], [0, 0, 1.0]])
        rs = np.array([[s[i] * np.cos(th[i]), -s[i] * np.sin(th[i]), 0],
                       [s[i] * np.sin(th[i]), s[i] * np.cos(th[i]), 0], [0, 0, 1.0]])
        tilt = np.array([[1, 0, 0], [0, 1, 0], [px[i], py[i], 1.0]])
        to_out = np.array([[1, 0, c + tx[i]], [0, 1, c + ty[i]], [0, 0, 1.0]])
        out[i] = to_out @ tilt @ rs @ to_origin
    return out


def pseudo_clip(path: Path, n_frames: int, size: int, fps: float, seed: int, motion: Motion = Motion()):
    """(frames uint8 (T,S,S,3), frame_index int64 (T,), time_s float32 (T,)) like decode_clip."""
    import cv2

    base = face_base(read_rgb(path), size)
    frames = np.stack([cv2.warpPerspective(base, H, (size, size), flags=cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_REFLECT101)
                       for H in homographies(n_frames, size, base.shape[0], seed, motion)])
    idx = np.arange(n_frames, dtype=np.int64)
    return frames, idx, (idx / float(fps)).astype(np.float32)
