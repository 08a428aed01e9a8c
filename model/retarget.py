"""Landmark retargeting: the driver's expression and head motion on the SOURCE's face shape.

Raw driving landmarks carry the driver's face (its width, jaw, eye spacing): conditioning a
cross-identity reenactment on them asks the model to draw the driver's head (supplementary §1 names
this). `relative` retargeting (`--retarget relative`) keeps the source's shape and moves it only by
what changes in the driving video:

  1. Pose removal. Every face (source, driving frames) is fitted to a canonical face by a 3-D
     similarity (Umeyama: rotation, uniform scale, translation) on RIGID_POINTS only (forehead, nose,
     eye corners, cheeks: points an expression barely moves), so an open mouth does not tilt the fit.
     P_f maps canonical -> image for face f; can_f = P_f^-1(face f) is the face without its pose.
  2. Expression delta. can_src + (can_i - can_ref): the source's canonical face moved by how driving
     frame i differs from the driving reference frame (frame 0 by default), in canonical units, so a
     mouth that opens by 10% of the driver's face size opens by 10% of the source's.
  3. Pose back. out_i = P_src(P_ref^-1(P_i(...))): the source's own pose composed with the driver's
     pose change since the reference, expressed in canonical space (so it turns about the source's
     head, not about where the driver's head sits in its crop).
Retargeting a driving video onto its own reference frame is the identity map (step 2 adds zero at
the reference and P_src = P_ref); the tests check that, and that the source's eye spacing and face
outline survive while the mouth opening follows the driver.

Canonical face: the generalised-Procrustes mean (a few rounds of fitting every face to the running
mean) of the faces at hand: the source and the driving frames. Any similarity transform of the
canonical face gives exactly the same output (every P_f absorbs it), so only its shape matters, and
only through the fit's weighting of the rigid points; the faces at hand are the data there is at
reenactment time (no training shards needed).
Coordinates: (478, 3) as everywhere (x, y in [0, 1] of the crop, z in x's scale); the crop is square,
so the similarity is isotropic.
"""
from __future__ import annotations

import numpy as np

RETARGET_MODES = ("none", "relative")

# Points an expression barely moves: forehead and nose midline, the nose wings, the inner and outer eye
# corners (not the lids), the cheekbones. Lips, jaw, chin, lids, brows, irises and the contour are left out.
RIGID_POINTS = [10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 2,        # midline, forehead to nose tip
                33, 263, 133, 362,                                     # eye corners
                98, 327, 129, 358, 48, 278, 64, 294,                   # nose wings
                50, 280, 205, 425]                                     # cheekbones (not the contour: on a
                                                                       # turned head it slides to the silhouette)


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R, t) minimising sum ||s R src_k + t - dst_k||^2 over the points (K, 3) (Umeyama 1991, no
    reflection)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(a))                  # cross-covariance (3, 3)
    d = np.ones(3)
    d[-1] = np.sign(np.linalg.det(u @ vt)) or 1.0                 # a proper rotation, never a mirror
    R = u @ np.diag(d) @ vt
    s = float((sig * d).sum() / ((a ** 2).sum() / len(a)))
    return s, R, mu_d - s * R @ mu_s


def _apply(p: tuple[float, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    s, R, t = p
    return s * x @ R.T + t                                        # (..., 478, 3)


def _inverse(p: tuple[float, np.ndarray, np.ndarray]) -> tuple[float, np.ndarray, np.ndarray]:
    s, R, t = p
    return 1.0 / s, R.T, -(R.T @ t) / s


def canonical_face(faces: np.ndarray, rounds: int = 3) -> np.ndarray:
    """(478, 3) generalised-Procrustes mean of faces (M, 478, 3): fit all to the running mean, average."""
    faces = np.asarray(faces, np.float64)
    mean = faces[0]
    for _ in range(rounds):
        mean = np.mean([_apply(similarity_fit(f[RIGID_POINTS], mean[RIGID_POINTS]), f) for f in faces], axis=0)
    return mean


def retarget(source: np.ndarray, driving: np.ndarray, mode: str = "relative", ref: int = 0,
             canonical: np.ndarray | None = None) -> np.ndarray:
    """(T, 478, 3) landmarks to condition on: the driving landmarks (T, 478, 3) as they are (`none`),
    or moved onto the source's face (`relative`, see the module doc) with driving frame `ref` as the
    reference. `source` (478, 3). Non-finite input is an error (fill faceless frames first)."""
    if mode not in RETARGET_MODES:
        raise ValueError(f"unknown retarget mode {mode!r}; known: {', '.join(RETARGET_MODES)}")
    drv = np.asarray(driving, np.float64)
    if mode == "none":
        return drv.astype(np.float32)
    src = np.asarray(source, np.float64)
    if not (np.isfinite(src).all() and np.isfinite(drv).all()):
        raise ValueError("retarget: landmarks must be finite (fill faceless frames first)")
    if not 0 <= ref < len(drv):
        raise ValueError(f"retarget: reference frame {ref} outside the driving video (0..{len(drv) - 1})")
    canon = canonical_face(np.concatenate([src[None], drv])) if canonical is None else np.asarray(canonical, np.float64)
    to_canon = lambda f: similarity_fit(f[RIGID_POINTS], canon[RIGID_POINTS])  # noqa: E731  face -> canonical
    p_src, p_ref = _inverse(to_canon(src)), _inverse(to_canon(drv[ref]))          # canonical -> image
    can_src, can_ref = _apply(to_canon(src), src), _apply(to_canon(drv[ref]), drv[ref])
    back_to_ref = _inverse(p_ref)                                                    # image (ref) -> canonical
    out = np.empty_like(drv)
    for i, f in enumerate(drv):
        fit = to_canon(f)
        moved = can_src + (_apply(fit, f) - can_ref)                                 # step 2, canonical space
        pose_change = _apply(back_to_ref, _apply(_inverse(fit), moved))              # P_ref^-1 P_i (canonical)
        out[i] = _apply(p_src, pose_change)                                          # step 3
    return out.astype(np.float32)
