"""Diffusion: schedule, learned-range variance, IDDPM loss semantics, expressive mask, respacing."""
from __future__ import annotations

import numpy as np
import torch

from model.diffusion import GaussianDiffusion, expressive_mask, linear_betas, respace
from pipeline.curate.landmarks import EXPRESSIVE, LIPS


def test_linear_schedule_matches_ddpm():
    b = linear_betas(1000)
    assert b[0] == 1e-4 and abs(b[-1] - 0.02) < 1e-15 and np.all(np.diff(b) > 0)
    d = GaussianDiffusion(b)
    assert d.alphas_cumprod[-1] < 1e-4  # t_max = 1000 reaches (almost) pure noise


def test_q_sample_is_the_closed_form():
    d = GaussianDiffusion(linear_betas(1000))
    x0, noise = torch.randn(3, 2, 4, 4, 4), torch.randn(3, 2, 4, 4, 4)
    t = torch.tensor([0, 500, 999])
    xt = d.q_sample(x0, t, noise)
    for i, ti in enumerate(t.tolist()):
        a = d.alphas_cumprod[ti]
        assert torch.allclose(xt[i], np.sqrt(a) * x0[i] + np.sqrt(1 - a) * noise[i], atol=1e-6)


def test_learned_range_variance_bounds():
    d = GaussianDiffusion(linear_betas(1000))
    x = torch.randn(2, 3, 4, 4, 4)
    t = torch.tensor([10, 700])
    lo = d.p_mean_variance(torch.cat([torch.zeros_like(x), -torch.ones_like(x)], 2), x, t)
    hi = d.p_mean_variance(torch.cat([torch.zeros_like(x), torch.ones_like(x)], 2), x, t)
    for i, ti in enumerate(t.tolist()):
        assert torch.allclose(lo["log_variance"][i], torch.tensor(d.posterior_log_variance_clipped[ti]).float())
        assert torch.allclose(hi["log_variance"][i], torch.tensor(np.log(d.betas[ti])).float())


class Oracle(torch.nn.Module):
    """Returns the true noise and v = -1 (log variance = the true posterior's): a perfect model."""

    def __init__(self, noise):
        super().__init__()
        self.noise, self.scale = noise, torch.nn.Parameter(torch.ones(()))

    def forward(self, x, t, cond=None):
        return torch.cat([self.noise * self.scale, -torch.ones_like(x) * self.scale], dim=2)


def test_training_loss_is_zero_for_a_perfect_model_and_vb_trains_only_sigma():
    d = GaussianDiffusion(linear_betas(1000))
    x0, noise = torch.randn(4, 2, 4, 4, 4), torch.randn(4, 2, 4, 4, 4)
    t = torch.tensor([1, 100, 500, 999])
    terms = d.training_losses(Oracle(noise), x0, t, noise=noise)
    assert terms["mse"].abs().max() < 1e-10
    assert terms["vb"].abs().max() < 1e-4          # KL(true posterior || perfect model) = 0
    # a wrong eps: the vb term must not send gradient into the eps channels (stop-grad on the mean)
    out = torch.cat([torch.zeros_like(x0), torch.zeros_like(x0)], 2).requires_grad_(True)
    vb = d.training_losses(lambda x, t, cond: out, x0, t, noise=noise)["vb"].sum()
    (g,) = torch.autograd.grad(vb, out)
    assert g[:, :, :4].abs().max() == 0 and g[:, :, 4:].abs().max() > 0


def test_expressive_mask_and_weighted_mse():
    lm = torch.full((2, 478, 3), 0.05)            # everything in the top-left cell ...
    lm[:, LIPS, 0], lm[:, LIPS, 1] = 0.55, 0.80   # ... except the lips at cell (row 6, col 4) of 8x8
    ok = torch.tensor([True, False])
    m = expressive_mask(lm, ok, 8, 8)
    assert m.shape == (2, 8, 8)
    assert m[0, 6, 4] == 1 and m[0, 0, 0] == 1    # eyes/irises sit at (0, 0)
    assert m[0].sum() == 2 and m[1].sum() == 0    # no face on frame 1: nothing weighted
    lm[0, EXPRESSIVE] = float("nan")
    assert expressive_mask(lm, ok, 8, 8).sum() == 0
    # a weight of 2 on the masked cells doubles exactly their squared error
    d = GaussianDiffusion(linear_betas(1000))
    x0, noise = torch.zeros(1, 1, 4, 8, 8), torch.ones(1, 1, 4, 8, 8)
    zero = lambda x, t, cond: torch.zeros(1, 1, 8, 8, 8)  # noqa: E731
    lm1 = torch.full((1, 1, 478, 3), 0.05)
    lm1[..., LIPS, 0], lm1[..., LIPS, 1] = 0.55, 0.80
    w = 1 + expressive_mask(lm1, torch.ones(1, 1, dtype=torch.bool), 8, 8)[:, :, None]  # (1, 1, 1, 8, 8)
    plain = d.training_losses(zero, x0, torch.tensor([5]), noise=noise)["mse"]
    weighted = d.training_losses(zero, x0, torch.tensor([5]), noise=noise, weight=w)["mse"]
    assert torch.allclose(plain, torch.ones(1)) and torch.allclose(weighted, plain * (1 + 2 / 64))


def test_respace_to_full_length_is_the_original_chain():
    d = GaussianDiffusion(linear_betas(1000))
    r = respace(d, 1000)
    assert np.array_equal(r.betas, d.betas) and torch.equal(r.timestep_map, torch.arange(1000))
    model = lambda x, t, cond: torch.cat([x * 0.1, torch.tanh(x)], 1)  # noqa: E731
    a = d.p_sample_loop(model, (1, 4, 2, 2), generator=torch.Generator().manual_seed(3))
    b = r.p_sample_loop(model, (1, 4, 2, 2), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_respace_keeps_the_marginals():
    d = GaussianDiffusion(linear_betas(1000))
    r = respace(d, 50)
    keep = r.timestep_map.numpy()
    assert len(keep) == 50 and keep[0] == 0 and keep[-1] == 999
    # the respaced chain reaches the same noise levels at the kept steps
    assert np.allclose(r.alphas_cumprod, d.alphas_cumprod[keep], rtol=1e-12)
    seen = []
    r.p_sample_loop(lambda x, t, cond: seen.append(int(t[0])) or torch.zeros(1, 8, 2, 2), (1, 4, 2, 2))
    assert seen == list(keep[::-1])  # the model is fed ORIGINAL timesteps
    r2 = respace(r, 10)  # respacing a respaced chain composes the maps
    assert set(r2.timestep_map.tolist()) <= set(keep.tolist())


def test_p_sample_is_mean_plus_sigma_noise_and_no_noise_at_t0():
    """The one reverse step both loops use: x_{t-1} = posterior mean + sigma * z, with z ignored at t = 0;
    per-row t broadcast over frames (B, F, C, h, w) equals the frames flattened into the batch."""
    d = respace(GaussianDiffusion(linear_betas(1000)), 10)
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(2, 3, 4, 2, 2, generator=g), torch.randn(2, 3, 8, 2, 2, generator=g)
    z = torch.randn(x.shape, generator=g)
    t = torch.tensor([5, 0])
    step = d.p_sample(out, x, t, z)
    p = d.p_mean_variance(out.flatten(0, 1), x.flatten(0, 1), t.repeat_interleave(3))
    want = p["mean"] + torch.exp(0.5 * p["log_variance"]) * z.flatten(0, 1)
    assert torch.allclose(step[0], want[:3].reshape(3, 4, 2, 2), atol=1e-6)
    assert torch.equal(step[1], p["mean"][3:].reshape(3, 4, 2, 2))        # t = 0: the mean, no noise
