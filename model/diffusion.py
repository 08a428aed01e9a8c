"""Gaussian diffusion with DiT/IDDPM semantics: linear betas, eps prediction, learned-range sigma,
loss = (weighted) eps-MSE + variational bound (vb uses a stop-gradient on the mean, so the vb term
trains only the variance), timestep respacing for sampling, and one reverse step (`p_sample`) shared
by the plain DDPM loop here and the anchored loop (model/anchored.py).

The model is called as model(x_t, t, cond): `cond` (model.sdit.Conditioning, or None) is passed
through untouched, as DiT passes its model_kwargs.

Tensors may carry any leading layout: x is (B, ..., C, h, w) and the model output (B, ..., 2C, h, w)
(channels at dim -3), so the same code serves one frame or an F-frame sequence.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def linear_betas(n: int = 1000) -> np.ndarray:
    """DDPM's linear schedule, rescaled so any step count spans the same noise range."""
    scale = 1000.0 / n
    return np.linspace(scale * 1e-4, scale * 0.02, n, dtype=np.float64)


def _take(arr: np.ndarray, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """arr[t] as float32, shaped (B, 1, ..., 1) to broadcast against an ndim tensor."""
    v = torch.from_numpy(arr).to(t.device)[t].float()
    return v.reshape(t.shape + (1,) * (ndim - t.dim()))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))


def masked_mean_flat(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """mean_flat over the elements where `keep` (broadcastable to x, 0/1) is 1; keep None = mean_flat."""
    if keep is None:
        return mean_flat(x)
    keep = keep.to(x.dtype).expand_as(x)
    dims = tuple(range(1, x.dim()))
    return (x * keep).sum(dim=dims) / keep.sum(dim=dims).clamp(min=1.0)


def normal_kl(m1, logv1, m2, logv2):
    """KL(N(m1, e^logv1) || N(m2, e^logv2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logv2 - logv1 + torch.exp(logv1 - logv2) + (m1 - m2) ** 2 * torch.exp(-logv2))


def _std_normal_cdf(x):
    # tanh approximation of the standard normal CDF (as in IDDPM/DiT)
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_loglik(x, mean, log_scale):
    """log P(x) for x on a 256-level grid in [-1, 1] under N(mean, scale); DiT keeps this decoder
    term for t = 0 even on latents, and so do we (its semantics are the reference)."""
    centered, inv = x - mean, torch.exp(-log_scale)
    cdf_plus = _std_normal_cdf(inv * (centered + 1.0 / 255))
    cdf_min = _std_normal_cdf(inv * (centered - 1.0 / 255))
    log_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_1m_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_plus, torch.where(x > 0.999, log_1m_min, log_delta))


class GaussianDiffusion:
    def __init__(self, betas, timestep_map=None):
        b = np.asarray(betas, dtype=np.float64)
        assert b.ndim == 1 and (b > 0).all() and (b <= 1).all(), "betas must be in (0, 1]"
        self.betas, self.num_timesteps = b, len(b)
        # respaced t -> t the model was trained on (identity for the original chain)
        self.timestep_map = torch.arange(len(b)) if timestep_map is None else torch.as_tensor(timestep_map).long()
        alphas = 1.0 - b
        self.alphas_cumprod = acp = np.cumprod(alphas)
        acp_prev = np.append(1.0, acp[:-1])
        self.sqrt_acp, self.sqrt_1m_acp = np.sqrt(acp), np.sqrt(1.0 - acp)
        self.sqrt_recip_acp, self.sqrt_recipm1_acp = np.sqrt(1.0 / acp), np.sqrt(1.0 / acp - 1.0)
        self.posterior_variance = pv = b * (1.0 - acp_prev) / (1.0 - acp)
        # pv[0] is 0: clip its log to pv[1] (the t = 0 step is scored by the decoder term anyway)
        self.posterior_log_variance_clipped = np.log(np.append(pv[1], pv[1:]))
        self.posterior_mean_coef1 = b * np.sqrt(acp_prev) / (1.0 - acp)
        self.posterior_mean_coef2 = (1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp)
        self.log_betas = np.log(b)

    # ---- forward process ----
    def q_sample(self, x0, t, noise=None):
        noise = torch.randn_like(x0) if noise is None else noise
        return _take(self.sqrt_acp, t, x0.dim()) * x0 + _take(self.sqrt_1m_acp, t, x0.dim()) * noise

    def q_posterior(self, x0, x_t, t):
        n = x0.dim()
        mean = _take(self.posterior_mean_coef1, t, n) * x0 + _take(self.posterior_mean_coef2, t, n) * x_t
        return mean, _take(self.posterior_variance, t, n), _take(self.posterior_log_variance_clipped, t, n)

    # ---- reverse process ----
    def p_mean_variance(self, model_output, x_t, t, clip_x0: float = 0.0) -> dict:
        """`clip_x0` > 0 clamps the predicted x_0 to [-clip_x0, clip_x0] before the posterior mean
        (static thresholding); 0 = off, as DiT samples latents."""
        n, C = x_t.dim(), x_t.shape[-3]
        if model_output.shape[-3] == 2 * C:
            eps, v = model_output.split(C, dim=-3)
            lo, hi = _take(self.posterior_log_variance_clipped, t, n), _take(self.log_betas, t, n)
            frac = (v + 1) / 2                       # v in [-1, 1] interpolates log sigma^2 in [beta~, beta]
            log_var = frac * hi + (1 - frac) * lo
        else:                                        # fixed small variance when sigma is not learned
            eps = model_output
            log_var = _take(self.posterior_log_variance_clipped, t, n).expand_as(x_t)
        x0 = _take(self.sqrt_recip_acp, t, n) * x_t - _take(self.sqrt_recipm1_acp, t, n) * eps
        if clip_x0 > 0:
            x0 = x0.clamp(-clip_x0, clip_x0)
        mean, _, _ = self.q_posterior(x0, x_t, t)
        return dict(mean=mean, variance=torch.exp(log_var), log_variance=log_var, pred_xstart=x0)

    def _vb_bits(self, model_output, x0, x_t, t, keep=None):
        """Per-sample variational-bound term in bits/dim: KL for t > 0, decoder NLL at t = 0 (averaged
        over the elements `keep` marks, all when None)."""
        true_mean, _, true_logv = self.q_posterior(x0, x_t, t)
        p = self.p_mean_variance(model_output, x_t, t)
        kl = masked_mean_flat(normal_kl(true_mean, true_logv, p["mean"], p["log_variance"]), keep) / math.log(2.0)
        nll = -masked_mean_flat(discretized_gaussian_loglik(x0, p["mean"], 0.5 * p["log_variance"]), keep) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model, x0, t, cond=None, noise=None, weight=None, clean_reference=None) -> dict:
        """-> dict(loss, mse, vb), each (B,). `weight` (broadcastable to x0) scales the squared error
        per latent pixel: 1 + lambda_ex under expressive landmarks (see `expressive_mask`).
        `clean_reference` (B,) bool, for sequences x0 (B, F, C, h, w): in the flagged rows frame 0 goes to
        the model clean (x0 itself, not x_t) and is left out of both loss terms, so the model learns to
        copy appearance from a known reference frame (data.clean_reference_p)."""
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        keep = None
        if clean_reference is not None and bool(clean_reference.any()):
            if x0.dim() != 5:
                raise ValueError("clean_reference needs frame sequences (B, F, C, h, w)")
            rows = clean_reference.bool()
            x_t = x_t.clone()
            x_t[rows, 0] = x0[rows, 0]
            keep = torch.ones(x0.shape[:2], device=x0.device)          # (B, F): 0 = not scored
            keep[rows, 0] = 0.0
            keep = keep[..., None, None, None]                        # (B, F, 1, 1, 1)
        out = model(x_t, self.timestep_map.to(t.device)[t], cond)
        C = x0.shape[-3]
        eps = out[..., :C, :, :]
        sq = (noise - eps.float()) ** 2
        mse = masked_mean_flat(sq if weight is None else sq * weight, keep)
        terms = dict(mse=mse)
        if out.shape[-3] == 2 * C:
            # stop-grad on the mean: the vb term trains only the variance channels (IDDPM "hybrid")
            frozen = torch.cat([eps.detach(), out[..., C:, :, :]], dim=-3).float()
            terms["vb"] = self._vb_bits(frozen, x0, x_t, t, keep)
        else:
            terms["vb"] = torch.zeros_like(mse)
        terms["loss"] = terms["mse"] + terms["vb"]
        return terms

    def p_sample(self, model_output, x_t, t, noise, clip_x0: float = 0.0) -> torch.Tensor:
        """One reverse step: x_{t-1} = mean + sigma * noise from the model output at x_t (no noise where
        t == 0). t (B,) indexes THIS chain; x_t may carry frames (B, F, C, h, w): t broadcasts over them."""
        p = self.p_mean_variance(model_output.float(), x_t, t, clip_x0)
        nonzero = (t != 0).float().reshape(t.shape + (1,) * (x_t.dim() - t.dim()))   # (B, 1, ..., 1)
        return p["mean"] + nonzero * torch.exp(0.5 * p["log_variance"]) * noise

    @torch.no_grad()
    def p_sample_loop(self, model, shape, cond=None, noise=None, generator=None, device="cpu", progress=False):
        """Plain DDPM ancestral sampling of `shape` under `cond`. The model gets the ORIGINAL-chain
        timestep (through timestep_map)."""
        x = noise if noise is not None else torch.randn(shape, generator=generator, device=device)
        steps = range(self.num_timesteps - 1, -1, -1)
        if progress:
            from tqdm import tqdm
            steps = tqdm(steps, desc="sampling")
        for i in steps:
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            out = model(x, self.timestep_map.to(x.device)[t], cond)
            x = self.p_sample(out, x, t, torch.randn(x.shape, generator=generator, device=x.device))
        return x


def respace(diffusion: GaussianDiffusion, num_steps: int) -> GaussianDiffusion:
    """A shorter chain over `num_steps` evenly spread timesteps of `diffusion` (first and last kept).
    Consecutive kept steps keep their beta bit-for-bit, so respacing to the full length is the original."""
    T = diffusion.num_timesteps
    if not 2 <= num_steps <= T:
        raise ValueError(f"respace: num_steps must be in [2, {T}], got {num_steps}")
    keep = sorted({int(round(x)) for x in np.linspace(0, T - 1, num_steps)})
    acp, betas, last_acp, prev = diffusion.alphas_cumprod, [], 1.0, -1
    for k in keep:
        betas.append(diffusion.betas[k] if k == prev + 1 else 1.0 - acp[k] / last_acp)
        last_acp, prev = acp[k], k
    return GaussianDiffusion(np.array(betas), timestep_map=diffusion.timestep_map[torch.tensor(keep)])


def expressive_mask(landmarks: torch.Tensor, ok: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(..., 478, 3) landmarks with x, y in [0, 1] of the crop + (...,) validity -> (..., h, w) 0/1 mask of
    the latent cells that contain a mouth, eye or iris landmark (pipeline.curate.landmarks.EXPRESSIVE).
    Frames without a face, non-finite points and points outside the crop mark nothing."""
    from pipeline.curate.landmarks import EXPRESSIVE

    idx = torch.as_tensor(EXPRESSIVE, device=landmarks.device)
    pts = landmarks[..., idx, :2].float()                                   # (..., K, 2)
    lead, K = pts.shape[:-2], len(EXPRESSIVE)
    valid = ok.bool()[..., None] & torch.isfinite(pts).all(-1) & ((pts >= 0) & (pts <= 1)).all(-1)  # (..., K)
    pts = torch.nan_to_num(pts, nan=0.0).clamp(0, 1)
    col = (pts[..., 0] * w).long().clamp(max=w - 1)                         # x=1.0 falls in the last cell
    row = (pts[..., 1] * h).long().clamp(max=h - 1)
    cells = (row * w + col).reshape(-1, K)                                   # (M, K) flat cell index
    mask = torch.zeros(cells.shape[0], h * w, device=landmarks.device)
    mask.scatter_reduce_(1, cells, valid.reshape(-1, K).float(), reduce="amax")
    return mask.reshape(*lead, h, w)                                         # (..., h, w)
