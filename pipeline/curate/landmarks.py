"""MediaPipe 478-point face mesh, bundled in the mediapipe 0.10.21 wheel (works offline).

One definition shared by shards, the trainer's loss mask, reenactment and the LMSE metric,
so that "landmarks" always means the same numbers.
Output: float32 (478, 3); x, y normalised to [0, 1] by the image width and height; z is
MediaPipe's relative depth (same scale as x, smaller = nearer the camera).
"""
from __future__ import annotations

import numpy as np

NUM_LANDMARKS = 478

# Mesh indices of the expressive regions the paper weights (1 + lambda_ex) in the loss.
LIPS = sorted({61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270,
               409, 78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311,
               310, 415})
LEFT_EYE = sorted({263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398})
RIGHT_EYE = sorted({33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173})
IRISES = list(range(468, 478))
EXPRESSIVE = sorted(set(LIPS) | set(LEFT_EYE) | set(RIGHT_EYE) | set(IRISES))


def warmup_face() -> np.ndarray:
    """A real face photo (scikit-image's astronaut, shipped in the package), 192 px: running a
    graph on it once initialises every subgraph (detector and mesh) before the caller's frames."""
    import cv2
    import skimage.data

    img = skimage.data.astronaut()[0:300, 100:400]
    return np.ascontiguousarray(cv2.resize(img, (192, 192), interpolation=cv2.INTER_AREA))


class FaceMesh478:
    """Callable: rgb uint8 (H, W, 3) -> (478, 3) float32, or None when no face is found.

    `static=True` treats every image independently (deterministic per frame); video mode
    tracks between calls and is faster but depends on the previous frames.
    """

    def __init__(self, static: bool = True, max_faces: int = 1, min_confidence: float = 0.5):
        import mediapipe as mp

        from pipeline.quiet import native_stderr_filtered

        with native_stderr_filtered():   # MediaPipe's start-up lines, written when its graphs first run
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=static, max_num_faces=max_faces, refine_landmarks=True,
                min_detection_confidence=min_confidence, min_tracking_confidence=min_confidence)
            if static:                   # (video mode carries state between calls: no warm-up frame there)
                self._mesh.process(warmup_face())

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        res = self._mesh.process(np.ascontiguousarray(rgb))
        if not res.multi_face_landmarks:
            return None
        lm = res.multi_face_landmarks[0].landmark
        return np.array([(p.x, p.y, p.z) for p in lm], dtype=np.float32)

    def batch(self, frames) -> tuple[np.ndarray, np.ndarray]:
        """(T, 478, 3) float32 with NaN where no face, and a (T,) bool validity mask."""
        out = np.full((len(frames), NUM_LANDMARKS, 3), np.nan, dtype=np.float32)
        ok = np.zeros(len(frames), dtype=bool)
        for i, f in enumerate(frames):
            lm = self(f)
            if lm is not None:
                out[i], ok[i] = lm, True
        return out, ok

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
