"""Anchored Diffusion: sequence plans, the synchronisation rule, chunking, guidance flags, respacing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model import anchored as A

LATENT = (4, 8, 8)


# ------------------------------------------------------------------ plans

@pytest.mark.parametrize("n,F", [(4, 4), (5, 4), (17, 4), (30, 8), (9, 2), (23, 8)])
def test_anchored_plan_covers_every_frame_once(n, F):
    p = A.plan_anchored(n, F, anchor=0, seed=3)
    S = p.num_sequences
    assert S == int(np.ceil((n - 1) / (F - 1))) and p.frames.shape == (S, F)
    assert (p.frames[:, 0] == 0).all()                       # the anchor is slot 0 of every sequence
    owned = p.frames[p.owner]
    assert sorted(owned.tolist()) == list(range(n))          # every frame written exactly once
    assert p.owner[:, 0].sum() == 1                          # the anchor from one sequence only
    non_anchor_owned = p.frames[:, 1:][p.owner[:, 1:]]
    assert len(non_anchor_owned) == n - 1 and 0 not in non_anchor_owned
    for row in p.frames:
        assert len(set(row.tolist())) == F                   # no frame twice in a sequence
        assert (np.diff(row[1:]) > 0).all()                  # in time order


def test_anchored_plan_spans_video_non_uniformly_and_is_seeded():
    p = A.plan_anchored(64, 8, seed=0)
    # one frame per temporal stratum: every sequence reaches the last part of the video
    assert (p.frames[:, -1] >= 64 - 64 // 7 - 2).all()
    gaps = np.diff(p.frames[:, 1:], axis=1)
    assert len(np.unique(gaps)) > 3                          # non-uniform spacing
    assert np.array_equal(p.frames, A.plan_anchored(64, 8, seed=0).frames)
    assert not np.array_equal(p.frames, A.plan_anchored(64, 8, seed=1).frames)
    mid = A.plan_anchored(20, 4, anchor=10)
    assert (mid.frames[:, 0] == 10).all() and sorted(mid.frames[mid.owner].tolist()) == list(range(20))


@pytest.mark.parametrize("n,F", [(4, 4), (10, 4), (17, 8)])
def test_naive_plan_consecutive_chunks(n, F):
    p = A.plan_naive(n, F)
    assert p.anchor is None and p.num_sequences == int(np.ceil(n / F))
    assert sorted(p.frames[p.owner].tolist()) == list(range(n))
    assert (np.diff(p.frames, axis=1) == 1).all()


def test_video_shorter_than_F_is_an_error():
    with pytest.raises(ValueError, match="fewer than the sequence length F=8"):
        A.plan_anchored(5, 8)
    with pytest.raises(ValueError, match="fewer than the sequence length"):
        A.plan_naive(3, 4)


# ------------------------------------------------------------------ sampling with a tiny sDiT

@pytest.fixture(scope="module")
def tiny(tiny_sdit):
    return tiny_sdit


def _cond(n, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return A.VideoConditioning(landmarks=torch.rand((n, 478, 3), generator=g), times=torch.arange(n) / 25.0,
                               clip_emb=torch.randn((D,), generator=g))


class Spy(torch.nn.Module):
    """Records what the model is called with (anchor inputs, drop flags, timesteps)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x, t, cond):
        c = cond.map(torch.clone)
        self.calls.append(dict(x=x.clone(), t=t.clone(), cond=c, lm=c.landmarks, clip=c.clip_emb,
                               dl=c.drop_landmarks, dc=c.drop_clip, offsets=c.offsets))
        return self.model(x, t, cond)


def test_anchor_identical_every_step_and_chunked_equals_unchunked(tiny):
    model, diff = tiny
    n = 11                                   # F=4 -> S=4 sequences, 2 spare slots
    plan = A.plan_anchored(n, 4, seed=1)
    cond = _cond(n)
    runs = {}
    for mb in (0, 3):
        states = []
        spy = Spy(model)
        sc = A.SampleConfig(steps=5, seed=5, max_batch=mb)
        out = A.sample(spy, diff, plan, cond, LATENT, sc, callback=lambda k, x, st=states: st.append(x.clone()))
        assert len(states) == 5
        for x in states:                     # after every step, the anchor is one tensor in all sequences
            assert all(torch.equal(x[s, 0], x[0, 0]) for s in range(plan.num_sequences))
        # and the model sees identical anchor latents in every sequence at every step
        per_step = int(np.ceil(plan.num_sequences / mb)) if mb else 1
        assert len(spy.calls) == 5 * per_step
        for k in range(5):
            xs = torch.cat([c["x"] for c in spy.calls[k * per_step:(k + 1) * per_step]])
            assert xs.shape[0] == plan.num_sequences
            assert all(torch.equal(xs[s, 0], xs[0, 0]) for s in range(plan.num_sequences))
        if mb:
            assert max(len(c["x"]) for c in spy.calls) <= mb
        runs[mb] = (out, states)
    ref_out, ref_states = runs[0]
    # chunked == unchunked: same noise, same rule; only float32 rounding of batched GEMMs may differ
    # (CPU kernels block differently by batch size: ~1e-7 relative on one forward)
    for mb in (3,):
        out, states = runs[mb]
        assert (out - ref_out).abs().max() <= 1e-5 * ref_out.abs().max()
        for a, b in zip(states, ref_states):
            assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    assert ref_out.shape == (n, *LATENT) and torch.isfinite(ref_out).all()
    # same seed -> same video; another seed -> another video
    again = A.sample(model, diff, plan, cond, LATENT, A.SampleConfig(steps=5, seed=5))
    assert torch.equal(again, ref_out)
    other = A.sample(model, diff, plan, cond, LATENT, A.SampleConfig(steps=5, seed=6))
    assert not torch.allclose(other, ref_out)


def test_anchor_update_uses_mean_model_output_over_sequences(tiny):
    """Last step (t=0, no noise added): the anchor equals p_mean of the sequence-averaged output."""
    from model.diffusion import respace

    model, diff = tiny
    n = 7
    plan = A.plan_anchored(n, 4, seed=0)
    cond = _cond(n)
    spy = Spy(model)
    out = A.sample(spy, diff, plan, cond, LATENT, A.SampleConfig(steps=2, seed=2))
    call = spy.calls[-1]
    with torch.no_grad():
        eps = model(call["x"], call["t"], call["cond"])
    sp = respace(diff, 2)
    avg = eps[:, 0].mean(0, keepdim=True)
    want = sp.p_mean_variance(avg, call["x"][:1, 0], torch.zeros(1, dtype=torch.long))["mean"][0]
    assert torch.allclose(out[plan.anchor], want, atol=1e-6)
    assert not torch.allclose(eps[0, 0], eps[1, 0])      # the sequences disagree; the rule reconciles them
    # non-anchor frames come from their own sequence, unaveraged
    s, f = [(s, f) for s, f in zip(*np.nonzero(plan.owner)) if f > 0][0]
    own = sp.p_mean_variance(eps[s:s + 1, f], call["x"][s:s + 1, f], torch.zeros(1, dtype=torch.long))["mean"][0]
    assert torch.allclose(out[plan.frames[s, f]], own, atol=1e-6)


@pytest.mark.parametrize("mode,want", [("none", (True, True)), ("landmarks", (False, True)),
                                       ("clip", (True, False)), ("clip+landmarks", (False, False))])
def test_guidance_modes_drop_what_they_name(tiny, mode, want):
    model, diff = tiny
    n = 5
    plan = A.plan_anchored(n, 4)
    spy = Spy(model)
    A.sample(spy, diff, plan, _cond(n), LATENT, A.SampleConfig(steps=2, guidance=mode, cfg_scale=1.0))
    assert len(spy.calls) == 2                               # cfg = 1: no unconditional pass
    for c in spy.calls:
        assert c["dl"].tolist() == [want[0]] * plan.num_sequences
        assert c["dc"].tolist() == [want[1]] * plan.num_sequences
    # with CFG != 1 an unconditional pass (both dropped) is added, except when nothing is conditioned
    spy = Spy(model)
    A.sample(spy, diff, plan, _cond(n), LATENT, A.SampleConfig(steps=2, guidance=mode, cfg_scale=3.0))
    (c0, c1) = spy.calls
    S = plan.num_sequences
    if mode == "none":
        assert len(c0["dl"]) == S
    else:
        assert c0["dl"].tolist() == [want[0]] * S + [True] * S
        assert c0["dc"].tolist() == [want[1]] * S + [True] * S


def test_dropped_conditioning_does_not_change_the_output(tiny):
    """What a mode drops really has no effect: changing the dropped input leaves the result unchanged."""
    model, diff = tiny
    n = 5
    plan = A.plan_anchored(n, 4)
    base = _cond(n, seed=0)
    moved = A.VideoConditioning(landmarks=base.landmarks + 0.3, times=base.times, clip_emb=base.clip_emb)
    reclip = A.VideoConditioning(landmarks=base.landmarks, times=base.times, clip_emb=-base.clip_emb)

    def run(c, mode):
        return A.sample(model, diff, plan, c, LATENT, A.SampleConfig(steps=3, guidance=mode))

    assert torch.equal(run(base, "clip"), run(moved, "clip"))          # landmarks dropped
    assert not torch.equal(run(base, "clip+landmarks"), run(moved, "clip+landmarks"))
    assert torch.equal(run(base, "landmarks"), run(reclip, "landmarks"))  # CLIP dropped
    assert not torch.equal(run(base, "clip+landmarks"), run(reclip, "clip+landmarks"))


def test_respaced_1000_is_the_full_schedule_and_model_gets_original_timesteps(tiny):
    from model.diffusion import respace

    model, diff = tiny
    full = respace(diff, 1000)
    assert full.timestep_map.tolist() == list(range(1000))
    for name in ("betas", "alphas_cumprod", "posterior_variance"):
        a, b = getattr(full, name, None), getattr(diff, name, None)
        if a is not None:
            assert np.allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=0)
    sp = respace(diff, 50)
    assert len(sp.timestep_map) == 50 and sp.timestep_map[-1] <= 999
    spy = Spy(model)
    plan = A.plan_anchored(4, 4)
    A.sample(spy, diff, plan, _cond(4), LATENT, A.SampleConfig(steps=50))
    seen = [int(c["t"][0]) for c in spy.calls]
    assert seen == sp.timestep_map.tolist()[::-1]      # original t, from high to low


def test_naive_sampler_shares_nothing(tiny):
    model, diff = tiny
    n = 8
    cond = _cond(n)
    spy = Spy(model)
    sc = A.SampleConfig(steps=2, sampler="naive")
    A.sample(spy, diff, sc.plan(n, 4), cond, LATENT, sc)
    assert spy.calls[0]["x"].shape[0] == 2
    assert torch.allclose(spy.calls[0]["offsets"][1], torch.arange(4) / 25.0)   # relative to the chunk start
    x = spy.calls[-1]["x"]
    assert not torch.equal(x[0, 0], x[1, 0])


def test_clip_x0_bounds_the_output_and_keeps_the_anchor_in_sync(tiny):
    model, diff = tiny
    n = 7
    plan = A.plan_anchored(n, 4)
    states = []
    free = A.sample(model, diff, plan, _cond(n), LATENT, A.SampleConfig(steps=4, seed=1))
    out = A.sample(model, diff, plan, _cond(n), LATENT, A.SampleConfig(steps=4, seed=1, clip_x0=1.0),
                   callback=lambda k, x: states.append(x.clone()))
    assert free.abs().max() > 1.0          # this random model drifts far without the clamp
    assert out.abs().max() <= 1.0 + 1e-5   # the last step's mean is the clamped x_0 (posterior at t=0)
    for x in states:
        assert all(torch.equal(x[s, 0], x[0, 0]) for s in range(plan.num_sequences))
