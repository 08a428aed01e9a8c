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

# ---------------------------------------------------------------- head yaw from the mesh
# A reference face for the pose fit: mesh points on the midline (x = 0) and left/right pairs (the
# higher index sits at +x, on the image's right in a frontal view), as (x, y, z) with the face width
# = 1, y down, z MediaPipe's depth (smaller = nearer). Measured with FaceMesh478 on the two bundled
# frontal photos (scikit-image's astronaut, matplotlib's Grace Hopper) and their mirror images,
# averaged and made exactly symmetric. Face-contour points are left out on purpose: on a turned head
# the mesh puts the far contour on the silhouette, which drags any fit towards frontal.
_REF_MIDLINE = {   # index: (y, z)
    10: (-0.5, -0.038), 151: (-0.401, -0.055), 9: (-0.3, -0.068), 8: (-0.244, -0.055), 168: (-0.191, -0.05),
    6: (-0.136, -0.079), 197: (-0.084, -0.113), 195: (-0.035, -0.15), 5: (0.019, -0.189), 4: (0.082, -0.203),
    1: (0.127, -0.185), 2: (0.159, -0.066), 0: (0.256, -0.05), 17: (0.387, -0.01), 199: (0.54, 0.041),
    175: (0.592, 0.069), 152: (0.625, 0.123)}
_REF_PAIRS = {     # (subject's right, subject's left): (x, y, z) of the left one; the right one is (-x, y, z)
    (33, 263): (0.327, -0.173, 0.112), (133, 362): (0.125, -0.159, 0.075), (159, 386): (0.246, -0.212, 0.051),
    (145, 374): (0.23, -0.146, 0.063), (70, 300): (0.412, -0.265, 0.109), (105, 334): (0.301, -0.32, -0.001),
    (98, 327): (0.141, 0.13, -0.009), (129, 358): (0.166, 0.081, 0.015), (48, 278): (0.151, 0.093, -0.07),
    (64, 294): (0.155, 0.107, -0.044), (61, 291): (0.213, 0.272, 0.108), (50, 280): (0.358, 0.041, 0.082),
    (205, 425): (0.302, 0.103, 0.048)}
POSE_POINTS = [*_REF_MIDLINE, *(a for a, _ in _REF_PAIRS), *(b for _, b in _REF_PAIRS)]
_REF = np.array([(0.0, *yz) for yz in _REF_MIDLINE.values()] + [(-x, y, z) for x, y, z in _REF_PAIRS.values()]
                + list(_REF_PAIRS.values()), dtype=np.float64)
# MediaPipe's landmarks lean frontal when the head turns: on faces re-rendered from the bundled photos'
# own 3D meshes at known angles, the fit below reads 0.84 of the true yaw from 15 to 45 degrees (0.62-0.84
# at 60: it saturates near 50). The reading is divided by that factor.
YAW_GAIN = 1.0 / 0.84


def yaw_degrees(lm: np.ndarray, width: float = 1.0, height: float = 1.0) -> float:
    """Head yaw in degrees from a (478, 3) mesh of a (width x height) picture: 0 = frontal, positive
    when the face turns towards the image's right (the subject's left), +-90 = profile.

    Weak-perspective fit of the reference face to the mesh's 2D points (least squares over 43
    points, so one bad landmark moves it little): the 2x3 linear map from reference to image,
    orthonormalised, gives the head's rotation; yaw is the angle of the face normal about the
    vertical axis. The mesh's own z is not used: it stays nearly frontal when the head turns.
    """
    pts = np.asarray(lm, dtype=np.float64)[POSE_POINTS, :2] * [width, height]
    pts -= pts.mean(0)
    ref = _REF - _REF.mean(0)
    m = np.linalg.lstsq(ref, pts, rcond=None)[0].T                  # (2, 3): reference -> image
    u, _, vt = np.linalg.svd(m, full_matrices=False)
    rows = u @ vt                                                    # the two nearest orthonormal rows
    normal = np.cross(rows[0], rows[1])                              # the reference's depth axis, in the image frame
    return float(np.degrees(np.arctan2(normal[0], normal[2])) * YAW_GAIN)


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

    def all(self, rgb: np.ndarray) -> list[np.ndarray]:
        """Every face the mesh finds (up to max_faces), each (478, 3) float32 like __call__."""
        res = self._mesh.process(np.ascontiguousarray(rgb))
        return [np.array([(p.x, p.y, p.z) for p in f.landmark], dtype=np.float32)
                for f in res.multi_face_landmarks or []]

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
