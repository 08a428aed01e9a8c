"""Reenactment that keeps the source: the source latent as the anchor (model/anchored.py), driving
landmarks retargeted onto the source's face (model/retarget.py), the clean-reference training option,
and the time-offset range training and sampling share."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model import anchored as A
from model.retarget import RIGID_POINTS, retarget, similarity_fit

LATENT = (4, 8, 8)
# MediaPipe's face oval, forehead round to the chin
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
MOUTH = np.linspace(0.0, 0.9, 6)      # the driver's mouth opening, synth heads' expression scale


# ------------------------------------------------------------------ real landmarks

def _render(identity: str, mouth: float) -> np.ndarray:
    """A bundled face photo cut out (pipeline/synth/heads.py) with its mouth opened by `mouth`, on grey, 256 px."""
    import cv2

    from pipeline.synth.heads import expressed, head

    rgb, alpha = expressed(head(identity), mouth, 0.0)
    img = rgb * alpha[..., None] + 128 * (1 - alpha[..., None])
    return cv2.resize(np.clip(img, 0, 255).astype(np.uint8), (256, 256), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def faces():
    """Real 478-point meshes (MediaPipe on real photos): the astronaut opening her mouth over 6 frames
    (the driver) and Grace Hopper with her mouth closed (the source)."""
    from pipeline.curate.landmarks import FaceMesh478

    with FaceMesh478(static=True) as mesh:
        drv = [mesh(_render("astronaut", m)) for m in MOUTH]
        src = mesh(_render("hopper", 0.0))
    assert src is not None and all(d is not None for d in drv)
    return np.stack(drv), src


def _iod(f):      # inter-ocular distance (outer eye corners), x-y plane
    return np.linalg.norm(f[..., 33, :2] - f[..., 263, :2], axis=-1)


def _mouth(f):    # inner-lip gap over the inter-ocular distance: the opening, independent of face size
    return np.linalg.norm(f[..., 13, :2] - f[..., 14, :2], axis=-1) / _iod(f)


def test_similarity_fit_recovers_a_known_pose(faces):
    _, src = faces
    th = np.radians(20)
    R = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    moved = 0.7 * src @ R.T + [0.1, -0.05, 0.02]
    s, R2, t = similarity_fit(src[RIGID_POINTS], moved[RIGID_POINTS])
    assert s == pytest.approx(0.7, abs=1e-5) and np.allclose(R2, R, atol=1e-5) and np.allclose(t, [0.1, -0.05, 0.02], atol=1e-5)


def test_relative_retargeting_onto_the_drivers_own_first_frame_is_the_identity(faces):
    drv, _ = faces
    out = retarget(drv[0], drv, "relative", ref=0)
    # pure float64 algebra on coordinates of size ~1 (Procrustes fits composed and inverted): 1e-5 is
    # thousands of times the rounding and a thousandth of a pixel of a 256 crop
    assert np.abs(out - drv).max() < 1e-5
    assert np.array_equal(retarget(None, drv, "none"), drv.astype(np.float32))


def test_retargeted_landmarks_keep_the_source_face_while_the_mouth_follows_the_driver(faces):
    drv, src = faces
    out = retarget(src, drv, "relative")
    raw_gap = np.abs(_iod(drv) - _iod(src)).max() / _iod(src)
    assert raw_gap > 0.03                                              # the two people's eye spacings differ
    assert np.abs(_iod(out) - _iod(src)).max() / _iod(src) < 0.01        # the source's is kept (to 1%)
    # face outline: mean point distance to the source's, in source inter-ocular units; the driver's raw
    # outline sits ~0.08 away, the retargeted one within the jaw's share of the mouth opening (<= 0.02)
    outline = lambda f: np.linalg.norm(f[..., FACE_OVAL, :2] - src[FACE_OVAL, :2], axis=-1).mean(-1) / _iod(src)  # noqa: E731
    assert outline(drv).min() > 0.06 and outline(out).max() < 0.03
    # the mouth opens as the driver's does: the same change of opening, relative to the first frame
    d_drv, d_out = _mouth(drv) - _mouth(drv[0]), _mouth(out) - _mouth(out[0])
    assert d_drv[-1] > 0.05                                            # the driver really opens its mouth
    assert np.abs(d_out - d_drv).max() < 0.15 * d_drv[-1]
    assert np.corrcoef(d_out, d_drv)[0, 1] > 0.98
    assert _mouth(out[0]) == pytest.approx(_mouth(src), abs=1e-4)       # frame 0 is the source itself


def test_the_drivers_head_rotation_turns_the_source_head_about_itself(faces):
    drv, src = faces
    th = np.radians(15)                               # the driver tilts its head by 15 degrees in the image
    R = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    centre = drv[0].mean(0)
    tilted = np.stack([drv[0], (drv[0] - centre) @ R.T + centre])
    out = retarget(src, tilted, "relative")
    angle = lambda f: np.degrees(np.arctan2(*(f[263, 1::-1] - f[33, 1::-1])))  # noqa: E731  eye line
    assert angle(out[1]) - angle(out[0]) == pytest.approx(15.0, abs=0.2)
    # turned about the source's own head (the driver turned about its face centre): the centre stays put
    assert np.linalg.norm(out[1].mean(0)[:2] - src.mean(0)[:2]) < 0.02 * _iod(src)
    assert _iod(out[1]) == pytest.approx(_iod(src), rel=1e-3)


def test_retarget_rejects_bad_modes_and_faceless_frames(faces):
    drv, src = faces
    with pytest.raises(ValueError, match="unknown retarget mode 'absolute'"):
        retarget(src, drv, "absolute")
    bad = drv.copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        retarget(src, bad, "relative")


# ------------------------------------------------------------------ the source as the anchor

@pytest.fixture(scope="module")
def tiny(tiny_sdit):
    return tiny_sdit


class Spy(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x, t, cond):
        self.calls.append((x.clone(), t.clone(), cond.offsets.clone()))
        return self.model(x, t, cond)


def _video(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return A.VideoConditioning(landmarks=torch.rand((n, 478, 3), generator=g), times=torch.arange(n) / 25.0,
                               clip_emb=torch.randn((16,), generator=g))


def test_source_anchor_slot_is_the_source_noised_to_every_step_with_one_draw_also_chunked(tiny):
    model, diff = tiny
    n, steps = 10, 6
    src = torch.randn(LATENT, generator=torch.Generator().manual_seed(9))
    video = _video(n).with_source_anchor(src, torch.rand((478, 3)), time_s=0.0)
    plan = A.plan_anchored(n + 1, 4, anchor=0, seed=2)                # source = frame 0, S = 4 sequences
    acp = torch.from_numpy(diff.alphas_cumprod)                      # the ORIGINAL chain's abar_t (float64)
    outs = {}
    for mb in (0, 3):
        spy, states = Spy(model), []
        out = A.sample(spy, diff, plan, video, LATENT, A.SampleConfig(steps=steps, seed=4, max_batch=mb),
                       callback=lambda k, x, st=states: st.append(x.clone()))
        per_step = -(-plan.num_sequences // mb) if mb else 1
        assert len(spy.calls) == steps * per_step
        eps = None
        for k in range(steps):
            x = torch.cat([c[0] for c in spy.calls[k * per_step:(k + 1) * per_step]])      # (S, F, C, h, w)
            t = int(spy.calls[k * per_step][1][0])                                         # original-chain step
            assert all(torch.equal(x[s, 0], x[0, 0]) for s in range(plan.num_sequences))   # one tensor everywhere
            # x_t = sqrt(abar_t) src + sqrt(1 - abar_t) eps with ONE eps: read it off the first step (t = 999,
            # where sqrt(1 - abar) ~ 1 determines it well), then every later step must match it
            if eps is None:
                eps = (x[0, 0].double() - acp[t].sqrt() * src.double()) / (1 - acp[t]).sqrt()
            want = acp[t].sqrt() * src.double() + (1 - acp[t]).sqrt() * eps
            # float32 arithmetic on values ~1, abar via respacing's float64 products: errors ~1e-7
            assert (x[0, 0].double() - want).abs().max() < 1e-5, (k, t)
        assert eps.std() > 0.5                                        # a real noise draw, not zeros
        for x in states:                                              # after every step too (callback)
            assert all(torch.equal(x[s, 0], x[0, 0]) for s in range(plan.num_sequences))
        assert torch.equal(states[-1][0, 0], src)                     # x_0 of the anchor is the source itself
        assert torch.equal(out[0], src) and out.shape == (n + 1, *LATENT)
        outs[mb] = out
    # chunked == unchunked up to float32 GEMM blocking by batch size (~1e-7 relative per forward)
    assert (outs[3] - outs[0]).abs().max() <= 1e-5 * outs[0].abs().max()


def test_clean_anchor_noise_gives_the_source_itself_at_every_step(tiny):
    model, diff = tiny
    src = torch.randn(LATENT, generator=torch.Generator().manual_seed(1))
    video = _video(7).with_source_anchor(src, torch.rand((478, 3)), time_s=0.0)
    spy = Spy(model)
    A.sample(spy, diff, A.plan_anchored(8, 4), video, LATENT, A.SampleConfig(steps=3, anchor_noise="clean"))
    assert all(torch.equal(x[s, 0], src) for x, _, _ in spy.calls for s in range(x.shape[0]))
    with pytest.raises(ValueError, match="anchor_noise"):
        A.SampleConfig(anchor_noise="loud")
    with pytest.raises(ValueError, match="needs the anchored sampler"):
        A.sample(model, diff, A.plan_naive(8, 4), video, LATENT, A.SampleConfig(steps=2, sampler="naive"))


def test_generated_anchor_sampling_is_unchanged_by_the_new_options(tiny):
    """Without a source latent and without a clamp the sampler draws the same numbers as before."""
    model, diff = tiny
    plan, video = A.plan_anchored(9, 4, seed=1), _video(9)
    a = A.sample(model, diff, plan, video, LATENT, A.SampleConfig(steps=3, seed=2))
    b = A.sample(model, diff, plan, video, LATENT, A.SampleConfig(steps=3, seed=2, max_offset_s=100.0))
    assert torch.equal(a, b)        # offsets of a 9-frame video are far inside 100 s: the clamp changes nothing


def test_sampling_clamps_offsets_to_the_trained_range(tiny):
    model, diff = tiny
    n = 31
    video = A.VideoConditioning(torch.rand((n, 478, 3)), torch.arange(n, dtype=torch.float32), torch.randn(16))  # 1 fps: 30 s
    spy = Spy(model)
    A.sample(spy, diff, A.plan_anchored(n, 4), video, LATENT, A.SampleConfig(steps=2, max_offset_s=8.5))
    off = spy.calls[0][2]
    assert off.abs().max() == pytest.approx(8.5) and (off[:, 0] == 0).all()
    near = off.abs() < 8.5
    assert near.any() and (off[near] == off[near].round()).all()   # offsets inside the range stay true seconds


# ------------------------------------------------------------------ training with a clean reference

def test_clean_reference_rows_get_slot_0_clean_and_out_of_the_loss():
    from model.diffusion import GaussianDiffusion, linear_betas

    diff = GaussianDiffusion(linear_betas(1000))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn((3, 4, *LATENT), generator=g), torch.randn((3, 4, *LATENT), generator=g)
    t = torch.tensor([900, 500, 100])
    seen = []

    def model(x, tt, cond):      # an eps guess that depends on slot 0 only through a separate output
        seen.append(x.clone())
        return torch.cat([x * 0.1, torch.zeros_like(x)], dim=2)

    clean = torch.tensor([True, False, True])
    base = diff.training_losses(model, x0, t, noise=noise)
    out = diff.training_losses(model, x0, t, noise=noise, clean_reference=clean)
    x_t = diff.q_sample(x0, t, noise)
    assert torch.equal(seen[1][0, 0], x0[0, 0]) and torch.equal(seen[1][2, 0], x0[2, 0])   # given clean
    assert torch.equal(seen[1][1], x_t[1]) and torch.equal(seen[1][0, 1:], x_t[0, 1:])      # the rest noised
    assert torch.equal(out["mse"][1], base["mse"][1])                                      # unflagged row as before
    # a flagged row's loss is the mean over slots 1..3 only: changing slot 0's target changes nothing
    noise2 = noise.clone()
    noise2[:, 0] += 5.0
    again = diff.training_losses(model, x0, t, noise=noise2, clean_reference=clean)
    assert torch.allclose(again["mse"][[0, 2]], out["mse"][[0, 2]]) and not torch.allclose(again["mse"][1], out["mse"][1])
    sq = (noise - seen[1] * 0.1) ** 2
    assert out["mse"][0] == pytest.approx(sq[0, 1:].mean().item(), rel=1e-5)


def test_data_draws_clean_reference_at_its_rate_and_clamps_offsets():
    from model.data import make_sequence

    T = 300                                   # a 12 s clip at 25 fps: longer than the 8.5 s range
    s = {"time_s.npy": np.arange(T) / 25.0, "latent_mean.npy": np.zeros((T, *LATENT), np.float16),
         "latent_std.npy": np.zeros((T, *LATENT), np.float16), "landmarks.npy": np.zeros((T, 478, 3), np.float32),
         "landmarks_ok.npy": np.ones(T, bool), "clip_emb.npy": np.zeros((T, 16), np.float16),
         "meta.json": {"vae_scaling_factor": 0.18215}, "__key__": "k"}
    rng = np.random.default_rng(0)
    seqs = [make_sequence(s, 4, rng, 0.0, "joint", clean_reference_p=0.3, max_offset_s=8.5) for _ in range(2000)]
    rate = np.mean([q["clean_reference"] for q in seqs])
    assert abs(rate - 0.3) < 0.04                              # binomial sd ~0.01 at n = 2000
    offs = np.concatenate([q["offsets"] for q in seqs])
    assert np.abs(offs).max() == pytest.approx(8.5) and (np.abs(offs) > 8.4).any()
    # p = 0 draws nothing extra: the stream of frames is the one an older run saw
    a = [make_sequence(s, 4, np.random.default_rng(1), 0.1, "joint")["frames"] for _ in range(1)]
    b = [make_sequence(s, 4, np.random.default_rng(1), 0.1, "joint", 0.0, 8.5)["frames"] for _ in range(1)]
    assert np.array_equal(a[0], b[0]) and not make_sequence(s, 4, rng, 0.1, "joint")["clean_reference"]


def test_checkpoints_from_before_the_offset_range_still_load_and_resume():
    """model.max_offset_s is a sampling/training rule, not architecture: an older checkpoint's config
    (without the key) stays compatible and samples with the default range."""
    from model.checkpoint import mismatched_keys
    from model.config import Config, from_dict

    old = Config().to_dict()
    del old["model"]["max_offset_s"], old["data"]["clean_reference_p"]
    assert mismatched_keys(old, Config()) == []
    assert from_dict(old).model.max_offset_s == 8.5 and from_dict(old).data.clean_reference_p == 0.0
