"""Per-clip features for the shards: VAE posterior, CLIP image embedding, 478x3 landmarks (`Encoders`).

Real weights load by their usual names for users online (diffusers / open_clip hub ids) or from
local directories offline (model_sets.py says which). On a GPU the VAE and CLIP run in half precision
(autocast; a batch whose output is not finite is redone in fp32) on batches of `gpu_batch_frames`,
fed from pinned memory, while decoding (decode.py) stays on CPU workers (pipeline/shards/writer.py);
on a CPU they run in fp32. `encoder_identity` fingerprints the set that made a run's latents.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.shards.config import EncoderConfig
from pipeline.shards.model_sets import ModelSet, weights_digest

IDENTITY_KEYS = ("vae", "vae_scaling_factor", "clip_model", "size", "weights")


def encoder_identity(meta: dict) -> dict:
    """The encoder set that produced (or would produce) latents: labels, size, scaling factor, weights
    digest, and a 12-hex fingerprint of them (the scaling factor to 6 significant digits, so the same
    VAE read in two processes gives one fingerprint)."""
    import hashlib

    ident = {k: meta.get(k, "") for k in IDENTITY_KEYS}
    ident["vae_scaling_factor"] = float(f"{float(ident['vae_scaling_factor'] or 0):.6g}")
    ident["size"] = int(ident["size"] or 0)
    ident["fingerprint"] = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return ident


def load_vae(name_or_dir: str, device="cpu"):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(name_or_dir).to(device).eval()


def load_clip(name_or_dir: str, pretrained: str | None, device="cpu"):
    import open_clip

    if Path(name_or_dir).is_dir():
        model = open_clip.create_model("local-dir:" + str(Path(name_or_dir).resolve()))
    else:
        model = open_clip.create_model(name_or_dir, pretrained=pretrained)
    return model.to(device).eval()


def pick_device(want: str) -> str:
    import torch

    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return want


def pick_dtype(precision: str, device: str):
    """The autocast dtype for `precision` on `device` (float32 = no autocast)."""
    import torch

    if precision == "auto":
        precision = "fp16" if device.startswith("cuda") else "fp32"
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise ValueError(f"encoder precision must be auto|fp32|fp16|bf16, got {precision!r}")
    return dtypes[precision]


class Encoders:
    """The three models; `encode(frames)` returns the per-frame feature arrays of one clip."""

    def __init__(self, models: ModelSet, cfg: EncoderConfig, with_landmarks: bool = True):
        import torch

        from pipeline.curate.landmarks import FaceMesh478

        self.cfg, self.models = cfg, models
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.precision, self.device)
        self.batch_frames = cfg.gpu_batch_frames if self.device.startswith("cuda") else cfg.batch_frames
        self.fp32_redone = 0          # half-precision batches whose output was not finite, redone in fp32
        torch.manual_seed(0)
        self.vae = load_vae(models.vae, self.device)
        self.clip = load_clip(models.clip_model, models.clip_pretrained, self.device)
        pp = getattr(self.clip.visual, "preprocess_cfg", {}) or {}
        isz = getattr(self.clip.visual, "image_size", 224)
        self.clip_size = int(isz[0] if isinstance(isz, (tuple, list)) else isz)
        self.clip_mean = torch.tensor(pp.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(1, 3, 1, 1)
        self.clip_std = torch.tensor(pp.get("std", (0.26862954, 0.26130258, 0.27577711))).view(1, 3, 1, 1)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.weights = weights_digest(models)
        # static mode: every frame on its own, so a frame's landmarks never depend on its neighbours
        self.mesh = FaceMesh478(static=True) if with_landmarks else None

    def meta(self) -> dict:
        return {"vae": self.models.vae_label, "vae_scaling_factor": self.scaling_factor,
                "clip_model": self.models.clip_label, "size": self.cfg.size, "weights": self.weights}

    def identity(self) -> dict:
        """encoder_identity of this set (what a checkpoint trained on its latents records)."""
        return encoder_identity(self.meta())

    def _batches(self, frames: np.ndarray):
        """uint8 frames (T,S,S,3) -> float (B,3,S,S) in [0, 1] on the device, `batch_frames` at a time.
        To a GPU the uint8 frames go from pinned memory, asynchronously (4x fewer bytes than floats)."""
        import torch

        gpu = self.device.startswith("cuda")
        for s in range(0, len(frames), self.batch_frames):
            x = torch.from_numpy(np.ascontiguousarray(frames[s:s + self.batch_frames]))
            x = x.pin_memory().to(self.device, non_blocking=True) if gpu else x.to(self.device)
            yield x.permute(0, 3, 1, 2).float() / 255.0

    def _autocast(self, dtype):
        import torch

        return torch.autocast(self.device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)

    def _run(self, fn, x):
        """fn(x) -> tensors, under this set's precision; all redone in fp32 if any output is not finite
        (fp16 overflows in a VAE's activations show up as inf/NaN, never as slightly wrong numbers)."""
        import torch

        with self._autocast(self.dtype):
            out = fn(x)
        if self.dtype != torch.float32 and not all(bool(torch.isfinite(o).all()) for o in out):
            self.fp32_redone += 1
            out = fn(x)
        return out

    def _clip(self, x):
        """(B,3,S,S) in [0, 1] -> (B, D) float16 L2-normalised CLIP image embeddings (cpu)."""
        import torch.nn.functional as F

        def embed(x):
            c = F.interpolate(x, size=(self.clip_size, self.clip_size), mode="bicubic",
                              align_corners=False, antialias=True).clamp(0, 1)
            c = (c - self.clip_mean.to(c)) / self.clip_std.to(c)
            return (F.normalize(self.clip.encode_image(c).float(), dim=-1),)

        return self._run(embed, x)[0].half().cpu()

    def _vae(self, x):
        """(B,3,S,S) in [0, 1] -> posterior (mean, std), each (B, C, S/8, S/8) float32 on the device."""
        def encode(x):
            post = self.vae.encode(x * 2 - 1).latent_dist
            return post.mean.float(), post.std.float()

        return self._run(encode, x)

    def forward_models(self, frames: np.ndarray) -> dict:
        """VAE + CLIP on uint8 frames (T,S,S,3), in batches of `batch_frames`."""
        import torch

        means, stds, embs = [], [], []
        with torch.inference_mode():
            for x in self._batches(frames):
                mean, std = self._vae(x)
                means.append(mean.half().cpu())
                stds.append(std.half().cpu())
                embs.append(self._clip(x))
        return {"latent_mean": torch.cat(means).numpy(), "latent_std": torch.cat(stds).numpy(),
                "clip_emb": torch.cat(embs).numpy()}

    def clip_embed(self, frames: np.ndarray) -> np.ndarray:
        """CLIP alone (no VAE pass), exactly as forward_models computes it: (T, D) float16."""
        import torch

        with torch.inference_mode():
            return torch.cat([self._clip(x) for x in self._batches(frames)]).numpy()

    def encode(self, frames: np.ndarray) -> dict:
        import time

        t0 = time.perf_counter()
        out = self.forward_models(frames)
        self.last_vae_clip_s = time.perf_counter() - t0   # the GPU's part (the .cpu() copies synchronise)
        if self.mesh is not None:
            out["landmarks"], out["landmarks_ok"] = self.mesh.batch(frames)
        self.last_s = time.perf_counter() - t0   # pure model time: the stage's overhead is measured against it
        return out

    def close(self):
        if self.mesh is not None:
            self.mesh.close()

