"""Fitting the tiny VAE on a CPU (`--models tiny`): the loop, its progress and what it will cost.

A step's cost grows with the crop's area, so the same 300 steps that take minutes at 64 px take hours at
256 px. `FitProgress` times the first few steps, says once what the whole fit will cost (a WARNING when
it is over a few minutes, with what to do about it), then prints steps/s and the time left as it goes.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

# Seconds per fit step (batch 8, one thread) on the shared 2-core development box, (least, most) seen under
# load averages 2-20 (2026-11-30; at 256 px the least is a user's run: step 60 after 9.5 min). A step costs
# ~4x per doubling of the side (the crop's area); FitProgress measures the real figure on every fit.
FIT_S_PER_STEP = {64: (1.1, 2.1), 128: (4.7, 8.7), 256: (9.5, 44.0)}
WARN_S = 300.0      # "more than a few minutes": the demo's 64 px fit usually stays under it


def fit_cost_help() -> str:
    """One line for --help: what a 300-step tiny-VAE fit costs at each crop size on a CPU."""
    parts = [f"{s} px ~{lo:g}-{hi:g} s/step ({_human(300 * lo)}-{_human(300 * hi)})"
             for s, (lo, hi) in FIT_S_PER_STEP.items()]
    return "300 steps on a busy 2-core CPU take " + ", ".join(parts)


def _human(s: float) -> str:
    s = max(0, int(round(s)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@dataclass
class FitProgress:
    """Progress of a loop of `total` steps. After `probe` timed steps (the first step, which pays for
    allocations, is not counted), or as soon as `every_s` seconds have passed when steps are slow, it logs one
    estimate of the whole, a WARNING plus `hint` when that is over `warn_s`; then a line every `every_s`
    seconds and one at the end, each with steps/s and the time left."""
    total: int
    log: Callable[[str], None] = print
    what: str = "fit_vae"
    probe: int = 3
    warn_s: float = WARN_S
    every_s: float = 30.0
    hint: str = ""
    clock: Callable[[], float] = time.monotonic
    estimate_s: float | None = None     # the whole loop, as estimated after the probe steps
    t_start: float | None = None
    t_first: float | None = None        # end of step 1: the rate is timed from here
    t_line: float = 0.0                 # when the last line was logged

    def start(self) -> None:
        self.t_start = self.clock()

    def step(self, done: int, loss: float) -> None:
        """Call after step `done` (1-based) with its loss."""
        now = self.clock()
        if self.t_start is None:
            self.t_start = now
        if done == 1:
            self.t_first = self.t_line = now
        timed = done - 1
        slow = now - self.t_start >= self.every_s    # steps this slow: estimate now rather than after `probe`
        if timed > 0 and now > self.t_first:
            rate = timed / (now - self.t_first)
        else:                                       # only the first step so far: its time, warm-up included
            rate = 1 / (now - self.t_start) if slow and now > self.t_start else None
        left = (self.total - done) / rate if rate else None
        if self.estimate_s is None and rate and (timed >= min(self.probe, self.total - 1) or slow):
            self.estimate_s = (now - self.t_start) + left
            over = f"{timed} timed steps" if timed else "the first step"
            self.log(f"{self.what}: {rate:.3g} steps/s over {over} -> about "
                     f"{_human(self.estimate_s)} for {self.total} steps")
            if self.estimate_s > self.warn_s:
                self.log(f"WARNING: {self.what} will take about {_human(self.estimate_s)}"
                         + (f"; {self.hint}" if self.hint else ""))
            self.t_line = now
        if done == self.total or now - self.t_line >= self.every_s:
            self.t_line = now
            speed = f"{rate:.3g} steps/s" if rate else "-- steps/s"
            tail = (f"done in {_human(now - self.t_start)}" if done == self.total
                    else f"{_human(left)} left" if left is not None else "")
            self.log(f"{self.what} step {done}/{self.total} loss {loss:.4f} | {speed} | {tail}")

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self.t_start if self.t_start is not None else 0.0


def fit_vae(vae, frames: np.ndarray, steps: int = 300, lr: float = 2e-3, kl_weight: float = 1e-6,
            batch: int = 16, seed: int = 0, progress: FitProgress | None = None) -> list[float]:
    """A few hundred CPU steps of reconstruction + small KL on uint8 crops (N,S,S,3). Returns losses."""
    from pipeline.threads import torch_threads

    # tiny kernels: thread hand-offs cost more than they save (4x slower with 2 threads on a busy 2-core box)
    with torch_threads(1):
        return _fit(vae, frames, steps, lr, kl_weight, batch, seed, progress)


def _fit(vae, frames, steps, lr, kl_weight, batch, seed, progress) -> list[float]:
    import torch

    g = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    vae.train()
    losses = []
    if progress:
        progress.start()
    for step in range(steps):
        x = data[torch.randint(len(data), (min(batch, len(data)),), generator=g)]
        if torch.rand((), generator=g) < 0.5:   # mirror: cheap augmentation on a small corpus
            x = x.flip(-1)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        loss = torch.nn.functional.mse_loss(rec, x) + kl_weight * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if progress:
            progress.step(step + 1, losses[-1])
    vae.eval()
    return losses


def latent_scaling_factor(vae, frames: np.ndarray, batch: int = 32) -> float:
    """1 / std of the posterior means of uint8 crops (N,S,S,3): makes scaled latents unit-variance."""
    import torch

    means = []
    with torch.no_grad():
        for i in range(0, len(frames), batch):
            x = torch.from_numpy(np.ascontiguousarray(frames[i:i + batch])).permute(0, 3, 1, 2).float() / 127.5 - 1
            means.append(vae.encode(x).latent_dist.mean)
    return float(1.0 / torch.cat(means).std().clamp_min(1e-6))


def fit_tiny_models(model_dir: Path, frames: np.ndarray, steps: int = 300, seed: int = 0, batch: int = 16,
                    log: Callable[[str], None] = print, hint: str = "", warn_s: float = WARN_S) -> dict:
    """Fit the VAE of a build_tiny_models dir on crops and save it back; records the fit in models.json."""
    from pipeline.shards.encode import load_vae

    vae = load_vae(str(model_dir / "vae"))
    progress = FitProgress(steps, log, f"fit_vae ({frames.shape[1]} px)", hint=hint, warn_s=warn_s)
    losses = fit_vae(vae, frames, steps=steps, batch=batch, seed=seed, progress=progress)
    fit_s = progress.elapsed_s
    # Diffusion assumes unit-variance latents: like Stable Diffusion's 0.18215, the scaling factor is
    # 1 / std of the fitted VAE's latents, measured here rather than borrowed from another VAE.
    scale = latent_scaling_factor(vae, frames[: min(len(frames), 256)])
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(model_dir / "vae", safe_serialization=True)
    info = json.loads((model_dir / "models.json").read_text())
    info.update(fitted=True, scaling_factor=scale, fit_steps=steps, fit_batch=batch, fit_frames=int(len(frames)),
                fit_loss_first=losses[0], fit_loss_last=float(np.mean(losses[-10:])), fit_s=round(fit_s, 2),
                fit_size=int(frames.shape[1]), fit_estimate_s=progress.estimate_s)
    info["vae"] = info["vae"].split("+fit")[0] + f"+fit{steps}"
    (model_dir / "models.json").write_text(json.dumps(info, indent=1))
    return info
