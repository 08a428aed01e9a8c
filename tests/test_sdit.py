"""sDiT: shapes and parameter counts for every registered size, zero init, conditioning semantics."""
from __future__ import annotations

import pytest
import torch

from model.config import SIZES, ModelConfig
from model.sdit import Conditioning, SDiT, forward_flops, param_counts


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core box: threads only contend
    yield
    torch.set_num_threads(n)


def inputs(cfg: ModelConfig, B: int = 2, device="cpu", seed: int = 0):
    """(x, t, landmarks, offsets, clip_emb) for a batch of B sequences."""
    g = torch.Generator().manual_seed(seed)
    Fr, S = cfg.frames, cfg.latent_size
    if device == "meta":
        with torch.device("meta"):
            return (torch.zeros(B, Fr, 4, S, S), torch.zeros(B, dtype=torch.long), torch.zeros(B, Fr, 478, 3),
                    torch.zeros(B, Fr), torch.zeros(B, cfg.clip_dim))
    return (torch.randn(B, Fr, 4, S, S, generator=g), torch.randint(0, 1000, (B,), generator=g),
            torch.rand(B, Fr, 478, 3, generator=g), torch.randn(B, Fr, generator=g),
            torch.randn(B, cfg.clip_dim, generator=g))


def call(m, x, t, lm, off, clip, drop_landmarks=None, drop_clip=None):
    """The model on one Conditioning built from the pieces (the tests vary one piece at a time)."""
    return m(x, t, Conditioning(lm, off, clip, drop_landmarks, drop_clip))


@pytest.mark.parametrize("size", list(SIZES))
def test_every_size_shape_and_count(size):
    cfg = ModelConfig(size=size, frames=2)
    a = SIZES[size]
    with torch.device("meta"):
        m = SDiT(cfg)
        out = call(m, *inputs(cfg, device="meta"))
    assert out.shape == (2, 2, 8, 32, 32)
    c = param_counts(cfg)
    assert c["total"] == sum(p.numel() for p in m.parameters()) == c["trunk"] + c["conditioning"]
    D, L = a["hidden"], a["depth"]
    # each DiT block: qkv + proj (4 D^2) + MLP (8 D^2) + adaLN (6 D^2) + biases
    assert c["blocks"] == L * (18 * D * D + 3 * D + D + 4 * D + D + 6 * D)
    # the mapping network is 4 residual blocks of two D x D linears + a LayerNorm
    assert c["mapping"] == 4 * (2 * (D * D + D) + 2 * D)


def test_xl2_matches_dit_xl2():
    c = param_counts(ModelConfig(size="XL/2"))
    # DiT-XL/2's published parameter count: our trunk + its class table + its frozen position table
    assert c["dit_equivalent"] == 675_129_632
    assert 15e6 < c["conditioning"] < 20e6  # the whole difference, explained in model/sdit.py
    # DiT reports 118.6 GMACs for XL/2 (one image): F = 1 must be 2 x that in FLOPs
    assert forward_flops(ModelConfig(size="XL/2", frames=1)) == pytest.approx(2 * 118.6e9, rel=0.01)


def tiny(**kw) -> ModelConfig:
    return ModelConfig(size="tiny", frames=3, latent_size=8, clip_dim=16, **kw)


def test_zero_init_output_and_first_update():
    cfg = tiny()
    torch.manual_seed(0)
    m = SDiT(cfg)
    x = inputs(cfg)
    out = call(m, *x)
    assert out.shape == (2, 3, 8, 8, 8)
    assert torch.count_nonzero(out) == 0  # adaLN-Zero + zero final layer
    out.sub(torch.randn_like(out)).pow(2).mean().backward()
    assert m.final.linear.weight.grad.abs().sum() > 0      # the output layer learns first
    assert m.blocks[0].ada[-1].weight.grad.abs().sum() == 0  # nothing flows into modulation until it moves


def randomised(cfg, seed=0):
    torch.manual_seed(seed)
    m = SDiT(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05)  # leave the zero init so every path is active
    return m


def test_dropped_conditioning_uses_null_embeddings():
    cfg = tiny()
    m = randomised(cfg)
    x, t, lm, off, clip = inputs(cfg)
    lm2, clip2 = torch.rand_like(lm), torch.randn_like(clip)
    yes, no = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        assert not torch.allclose(call(m, x, t, lm, off, clip, no, no), call(m, x, t, lm2, off, clip, no, no))
        assert torch.equal(call(m, x, t, lm, off, clip, yes, no), call(m, x, t, lm2, off, clip, yes, no))
        assert not torch.allclose(call(m, x, t, lm, off, clip), call(m, x, t, lm, off, clip2))
        assert torch.equal(call(m, x, t, lm, off, clip, no, yes), call(m, x, t, lm, off, clip2, no, yes))
        # a frame without a face (landmarks NaN -> 0) is treated like a dropped frame: the null embedding
        lm0 = lm.clone()
        lm0[:, 1] = 0
        drop_all = call(m, x, t, lm, off, clip, yes, no)
        assert not torch.allclose(call(m, x, t, lm0, off, clip), drop_all)
        assert torch.allclose(call(m, x, t, torch.zeros_like(lm), off, clip), drop_all, atol=1e-6)
        # time offsets matter (temporal information is conditioning, not position)
        assert not torch.allclose(call(m, x, t, lm, off, clip), call(m, x, t, lm, off + 0.5, clip))


def test_attention_mixes_frames():
    cfg = tiny()
    m = randomised(cfg)
    x, t, lm, off, clip = inputs(cfg)
    x2 = x.clone()
    x2[:, 2] += 1.0  # change only the last frame's input
    with torch.no_grad():
        a, b = call(m, x, t, lm, off, clip), call(m, x2, t, lm, off, clip)
    assert not torch.allclose(a[:, 0], b[:, 0])  # frame 0's output sees frame 2 through attention


def test_activation_checkpointing_same_gradients():
    cfg = tiny()
    grads = []
    for gc in (False, True):
        cfg.grad_checkpoint = gc
        m = randomised(cfg).train()
        drop = torch.tensor([True, False])
        call(m, *inputs(cfg), drop_landmarks=drop, drop_clip=~drop).pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_conditioning_rows_cat_and_drops_cover_every_field():
    cfg = tiny()
    _, _, lm, off, clip = inputs(cfg, B=3)
    c = Conditioning(lm, off, clip)
    two = c.rows(torch.tensor([2, 0]))
    assert torch.equal(two.landmarks, lm[[2, 0]]) and torch.equal(two.offsets, off[[2, 0]]) and two.drop_clip is None
    d = c.dropped(True, False)
    assert d.drop_landmarks.tolist() == [True] * 3 and d.drop_clip.tolist() == [False] * 3
    both = Conditioning.cat([d, c.dropped(False, True)])
    assert both.clip_emb.shape == (6, cfg.clip_dim) and both.drop_landmarks.tolist() == [True] * 3 + [False] * 3
    assert torch.equal(Conditioning.from_batch({"landmarks": lm, "offsets": off, "clip_emb": clip, "key": ["k"]}).clip_emb,
                       clip)
