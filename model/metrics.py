"""The paper's three metrics (supplementary §4), usable on any pair of videos or frame arrays.

- LMSE: MSE between MediaPipe 478 XYZ landmarks of generated and driving frames.
  Normalisation (ours; the paper does not state one): every frame is resized to a 256x256
  square first and x, y, z are multiplied by 256, i.e. coordinates are in *pixels of a 256
  crop* (MediaPipe's z shares x's scale). The MSE is the mean over frames, points and the three
  coordinates of the squared difference, so a shift of d pixels along x alone gives d²/3.
  With this scale the paper's figures (≈ 10 good, ≈ 600 without landmarks) are plausible.
  Frames where either side has no face are left out and counted.
- CSIM: the *minimum* over generated frames of the cosine similarity between the CLIP embedding
  of the source image and of that frame (a scene/identity consistency floor). Computed with the tiny
  CLIP of `--models tiny` (random weights) it is meaningless; `similarity_note` labels every printed
  and stored figure with what computed it.
- FID: Fréchet distance between Inception-v3 pool features (2048-d) of two frame sets, using
  torchvision's `inception_v3` class with weights loaded from a local file only. When no weights
  file exists the result is the string "unavailable: <why>", never a made-up number.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

LMSE_SIZE = 256  # landmarks are compared in pixels of a 256x256 crop

# Where FID looks for Inception-v3 weights, in order (the first that exists wins):
# $REENACT_INCEPTION, <data>/models/inception/inception_v3.pth, torchvision's own cache file.
INCEPTION_ENV = "REENACT_INCEPTION"
TORCHVISION_INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"


# ----------------------------------------------------------------------------- frames

def load_frames(src, size: int | None = None, max_frames: int | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 from a video path or an array / list of RGB frames.

    `size` resizes every frame to size x size (the frames here are square face crops already).
    """
    import cv2

    if isinstance(src, (str, os.PathLike)):
        from pipeline.video_io import iter_frames

        frames = [f for i, f in iter_frames(src, 0, max_frames)]
    else:
        frames = list(src)[:max_frames] if max_frames else list(src)
    if not frames:
        raise ValueError("no frames")
    if size:
        frames = [f if f.shape[:2] == (size, size) else
                  cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA if f.shape[0] > size else cv2.INTER_LINEAR)
                  for f in frames]
    return np.stack([np.ascontiguousarray(f[..., :3]) for f in frames]).astype(np.uint8)


# ----------------------------------------------------------------------------- LMSE

def landmarks_of(frames, size: int = LMSE_SIZE, mesh=None) -> tuple[np.ndarray, np.ndarray]:
    """(T, 478, 3) landmarks in pixels of a size x size frame (NaN where no face), (T,) ok mask."""
    from pipeline.curate.landmarks import FaceMesh478

    arr = load_frames(frames, size=size)
    own = mesh is None
    mesh = mesh or FaceMesh478(static=True)
    try:
        lm, ok = mesh.batch(arr)
    finally:
        if own:
            mesh.close()
    return lm * float(size), ok


def lmse_landmarks(a: np.ndarray, b: np.ndarray, a_ok: np.ndarray | None = None,
                   b_ok: np.ndarray | None = None) -> dict:
    """LMSE of two landmark arrays already in the same units (T, 478, 3).

    Returns {"lmse": float | None, "frames_used", "frames_total", "reason"}.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    ok = np.isfinite(a).all(axis=(1, 2)) & np.isfinite(b).all(axis=(1, 2))
    if a_ok is not None:
        ok &= np.asarray(a_ok[:n], bool)
    if b_ok is not None:
        ok &= np.asarray(b_ok[:n], bool)
    out = {"frames_used": int(ok.sum()), "frames_total": int(n), "reason": ""}
    if not ok.any():
        return {**out, "lmse": None, "reason": "no frame with a face on both sides"}
    return {**out, "lmse": float(((a[ok] - b[ok]) ** 2).mean())}


def lmse(generated, driving, size: int = LMSE_SIZE, mesh=None) -> dict:
    """LMSE between two videos / frame arrays, frame by frame (see the module doc)."""
    ga, gok = landmarks_of(generated, size, mesh)
    da, dok = landmarks_of(driving, size, mesh)
    return lmse_landmarks(ga, da, gok, dok)


# ----------------------------------------------------------------------------- CSIM

def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def csim_embeddings(source_emb: np.ndarray, frame_embs: np.ndarray) -> float:
    """min_i cos(source, frame_i)."""
    return float(cosine(np.asarray(frame_embs), np.asarray(source_emb)[None]).min())


def csim(source_img: np.ndarray, frames, embed: Callable[[np.ndarray], np.ndarray]) -> float:
    """CSIM with `embed`: (T, H, W, 3) uint8 -> (T, D) (e.g. the CLIP encoder of pipeline.shards.encode)."""
    src = np.asarray(embed(np.asarray(source_img)[None]))[0]
    return csim_embeddings(src, np.asarray(embed(load_frames(frames))))


def similarity_note(metric: str, embedder: str, trained: bool | None, kind: str = "CLIP") -> dict:
    """How to print and store a similarity figure (CSIM, or a later identity score) so it is not read as more
    than it is. `embedder`: the model's label; `trained`: False for random weights, None when not known.
    -> {metric, embedder, embedder_trained, tag, caveat}: `tag` ("" when trained) goes right after the metric's
    name wherever the number is printed; `caveat` (one sentence, "" when trained) goes in notes and JSON."""
    if trained:
        return {"metric": metric, "embedder": embedder, "embedder_trained": True, "tag": "", "caveat": ""}
    if trained is False:
        tag = f"untrained local {kind}"
        caveat = (f"{metric} here is a cosine between embeddings of an untrained local {kind} ({embedder}, random "
                  f"weights): it is near 1 for almost any two images and says nothing about identity")
    else:
        tag = f"{kind} of unknown training"
        caveat = (f"{metric} here comes from a local {kind} ({embedder}) whose training is not recorded: read it "
                  f"only if you know those weights are a trained {kind}")
    return {"metric": metric, "embedder": embedder, "embedder_trained": trained, "tag": tag, "caveat": caveat}


def labelled(note: dict) -> str:
    """The metric's printed name: "CSIM" or "CSIM [untrained local CLIP]"."""
    return f"{note['metric']} [{note['tag']}]" if note["tag"] else note["metric"]


# ----------------------------------------------------------------------------- FID

def find_inception_weights(data_root: str | Path | None = None) -> tuple[Path | None, str]:
    """(path, "") of the first local Inception-v3 weights file, or (None, why not)."""
    cands = []
    if os.environ.get(INCEPTION_ENV):
        cands.append(Path(os.environ[INCEPTION_ENV]))
    if data_root is not None:
        cands.append(Path(data_root) / "models" / "inception" / "inception_v3.pth")
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    cands.append(hub / "hub" / "checkpoints" / TORCHVISION_INCEPTION_FILE)
    for c in cands:
        if c.is_file():
            return c, ""
    return None, "no Inception-v3 weights file (looked at " + ", ".join(str(c) for c in cands) + ")"


def load_inception(path: str | Path):
    """torchvision Inception3 with the classifier removed (2048-d pool features), eval mode."""
    import torch
    from torchvision.models import inception_v3

    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    net.load_state_dict(sd)  # strict: a file of another architecture is an error, not silence
    net.fc = torch.nn.Identity()
    net.AuxLogits = None
    net.aux_logits = False
    return net.eval()


def inception_features(frames, net, size: int = 299, batch: int = 16) -> np.ndarray:
    """(T, 2048) float64 pool features; frames resized to size and ImageNet-normalised."""
    import torch
    import torch.nn.functional as F

    arr = load_frames(frames)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    feats = []
    with torch.inference_mode():
        for i in range(0, len(arr), batch):
            x = torch.from_numpy(arr[i:i + batch]).permute(0, 3, 1, 2).float() / 255.0
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            feats.append(net((x - mean) / std).double().numpy())
    return np.concatenate(feats)


def fid_from_features(fa: np.ndarray, fb: np.ndarray) -> float:
    """Fréchet distance of two Gaussians fitted to feature sets (n_a, D), (n_b, D).

    tr sqrt(Sa Sb) is computed exactly from the centred feature matrices: the non-zero
    eigenvalues of Sa Sb = A'A B'B / ((na-1)(nb-1)) are those of (A B')(A B')' / (...), so the
    trace of the square root is the nuclear norm of A B' / sqrt((na-1)(nb-1)). This stays exact
    when there are fewer frames than feature dimensions (where scipy's sqrtm is unstable).
    """
    fa, fb = np.asarray(fa, np.float64), np.asarray(fb, np.float64)
    if len(fa) < 2 or len(fb) < 2:
        raise ValueError("FID needs at least 2 frames per side")
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    A, B = fa - mu_a, fb - mu_b
    na, nb = len(fa) - 1, len(fb) - 1
    tr_a = (A * A).sum() / na
    tr_b = (B * B).sum() / nb
    cross = np.linalg.svd(A @ B.T, compute_uv=False).sum() / np.sqrt(na * nb)
    return float(max(((mu_a - mu_b) ** 2).sum() + tr_a + tr_b - 2.0 * cross, 0.0))


def fid(frames_a, frames_b, weights: str | Path | None = None, data_root: str | Path | None = None,
        size: int = 299) -> float | str:
    """FID of two frame sets, or "unavailable: <why>" when no local Inception weights exist."""
    if weights is None:
        weights, why = find_inception_weights(data_root)
        if weights is None:
            return f"unavailable: {why}"
    elif not Path(weights).is_file():
        return f"unavailable: no Inception-v3 weights at {weights}"
    try:
        net = load_inception(weights)
    except Exception as e:  # a corrupt or foreign file: say so instead of a number
        return f"unavailable: cannot load {Path(weights).name} ({type(e).__name__})"
    return fid_from_features(inception_features(frames_a, net, size), inception_features(frames_b, net, size))
