"""Sample grids during training (`train.sample_every`): the EMA model samples the first sequence of
the current batch; rows [real frames | their driving landmarks | generated] go to a PNG and TensorBoard.
Decoding needs a local VAE (`train.vae_path`, <data>/models/vae or <data>/models/tiny/vae); without
one the grids are skipped with a note."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger("reenactfaces.train")


def landmark_images(landmarks: torch.Tensor, size: int) -> torch.Tensor:
    """(F, 478, 3) landmarks, x,y in [0, 1] of the crop -> (F, 3, size, size) white dots on black."""
    f = landmarks.shape[0]
    img = torch.zeros(f, 3, size, size)
    xy = (landmarks[..., :2].clamp(0, 1) * (size - 1)).round().long()         # (F, 478, 2)
    present = landmarks[..., :2].abs().sum(-1) > 0                              # all-zero = no face
    for i in range(f):
        pts = xy[i][present[i]]
        img[i, :, pts[:, 1], pts[:, 0]] = 1.0
    return img


def find_vae(vae_dirs: list[Path], device):
    """The first local diffusers VAE of `vae_dirs`, loaded; None (sample grids skipped) without one."""
    vae_dir = next((d for d in vae_dirs if (d / "config.json").is_file()), None)
    if vae_dir is None:
        log.info("sample grids skipped: no VAE in %s", ", ".join(map(str, vae_dirs)))
        return None
    from pipeline.shards.encode import load_vae

    return load_vae(str(vae_dir), device)


def sample_grid(ema, diffusion, batch, cfg, out: Path, device, scaling: float, vae):
    """Sample the first sequence of `batch` with the EMA model (plain DDPM, respaced, fully conditioned)
    and save the grid as a PNG decoded with `vae` (find_vae). Returns the grid (3, H, W) for TensorBoard."""
    from torchvision.utils import make_grid, save_image

    from model.diffusion import respace
    from model.sdit import Conditioning

    sampler = respace(diffusion, cfg.diffusion.sample_steps)
    cond = Conditioning.from_batch(batch).rows(slice(0, 1)).dropped(False, False).to(device)
    x = sampler.p_sample_loop(ema, batch["latents"][:1].shape, cond, device=device,
                              generator=torch.Generator(device).manual_seed(0))
    with torch.no_grad():
        lat = torch.cat([batch["latents"][0].to(device), x[0]]) / scaling          # (2F, 4, h, w)
        img = vae.decode(lat).sample.clamp(-1, 1).cpu() * 0.5 + 0.5                   # (2F, 3, H, W)
    f = cfg.model.frames
    marks = landmark_images(batch["landmarks"][0].cpu(), img.shape[-1])                # (F, 3, H, W)
    rows = torch.cat([img[:f], marks, img[f:]])                                        # (3F, 3, H, W)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(rows, str(out), nrow=f)
    return make_grid(rows, nrow=f)


class SampleGrids:
    """Saves a grid every `train.sample_every` steps; the VAE is looked for (and loaded) at the first."""

    def __init__(self, cfg, diffusion, run_dir: Path, data_root, device, scaling: float, writer):
        self.cfg, self.diffusion, self.run_dir, self.device = cfg, diffusion, run_dir, device
        self.scaling, self.writer = scaling, writer
        self.vae_path, self.data_root = cfg.train.vae_path, data_root
        self.vae = None   # None = not looked for yet, False = none found

    def __call__(self, step: int, ema, batch) -> None:
        if self.vae is None:
            # on an object-store root the encoders' folders are mirrored to local scratch, once
            root = self.data_root
            dirs = [Path(self.vae_path)] if self.vae_path else [root.mirror("models/vae"),
                                                                root.mirror("models/tiny") / "vae"]
            self.vae = find_vae(dirs, self.device) or False
        if self.vae:
            grid = sample_grid(ema, self.diffusion, batch, self.cfg, self.run_dir / "samples" / f"step_{step:07d}.png",
                               self.device, self.scaling, self.vae)
            self.writer.add_image("samples/real_landmarks_generated", grid, step)
