"""Encoders: tiny models of the real classes load through the real paths; frame picking; VAE fit."""
from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from pipeline.shards.model_sets import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny"), seed=0, sample_size=64)


def _faces(n=6, size=64):
    import cv2
    from skimage.data import astronaut

    img = astronaut()[0:320, 90:410]
    return np.stack([cv2.resize(np.roll(img, 4 * k, axis=1), (size, size), interpolation=cv2.INTER_AREA)
                     for k in range(n)])


def test_tiny_models_load_through_real_loaders(tiny, tmp_path):
    import open_clip
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    from pipeline.shards.config import EncoderConfig
    from pipeline.shards.encode import Encoders
    from pipeline.shards.model_sets import build_tiny_models, resolve_models

    cfg = EncoderConfig(size=64, batch_frames=4)
    enc = Encoders(resolve_models(str(tiny), cfg), cfg, with_landmarks=False)
    assert isinstance(enc.vae, AutoencoderKL) and isinstance(enc.clip, open_clip.CLIP)
    saved = load_file(str(tiny / "clip" / "open_clip_model.safetensors"))
    loaded = enc.clip.state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)   # weights came from the file, not a fresh init
    frames = _faces()
    out = enc.encode(frames)
    assert out["latent_mean"].shape == (6, 4, 8, 8) and out["latent_mean"].dtype == np.float16   # 8x down, 4 ch
    assert out["clip_emb"].shape == (6, 32)
    assert np.allclose(np.linalg.norm(out["clip_emb"].astype(np.float32), axis=1), 1, atol=2e-3)
    # batching does not change results (batch 4 vs one forward of 6)
    cfg6 = EncoderConfig(size=64, batch_frames=6)
    out6 = Encoders(resolve_models(str(tiny), cfg6), cfg6, with_landmarks=False).encode(frames)
    assert np.allclose(out["latent_mean"].astype(np.float32), out6["latent_mean"].astype(np.float32), atol=2e-3)
    # the posterior mean is the VAE's own encode() of the same pixels
    with torch.no_grad():
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
        ref = enc.vae.encode(x).latent_dist
    assert np.allclose(out["latent_mean"].astype(np.float32), ref.mean.numpy(), atol=2e-2)
    assert np.allclose(out["latent_std"].astype(np.float32), ref.std.numpy(), rtol=2e-2)
    # a different seed gives different weights, so the meta label must differ too
    other = build_tiny_models(tmp_path / "other", seed=1, sample_size=64)
    assert json.loads((other / "models.json").read_text())["vae"] != enc.meta()["vae"]
    assert enc.meta()["vae_scaling_factor"] == float(enc.vae.config.scaling_factor)


def test_resolve_models_default_names_and_bad_dir(tmp_path):
    from pipeline.shards.config import DEFAULT_VAE, EncoderConfig
    from pipeline.shards.model_sets import resolve_models

    m = resolve_models("default", EncoderConfig())
    assert m.vae == DEFAULT_VAE and m.clip_label == "ViT-B-32/laion2b_s34b_b79k"
    with pytest.raises(FileNotFoundError, match="vae/ and clip/"):
        resolve_models(str(tmp_path), EncoderConfig())


def test_pick_indices_stride_and_max_frames():
    from pipeline.shards.decode import pick_indices

    assert pick_indices(10, 20, 1, 0).tolist() == list(range(10, 20))
    assert pick_indices(10, 20, 3, 0).tolist() == [10, 13, 16, 19]
    sub = pick_indices(0, 100, 1, 8)
    assert len(sub) == 8 and sub[0] == 0 and sub[-1] == 99 and (np.diff(sub) > 0).all()


def test_decode_clip_is_the_crop_of_the_decoded_frames(tmp_path):
    from pipeline.shards.config import EncoderConfig
    from pipeline.shards.decode import decode_clip
    from pipeline.video_io import crop_square, read_frames, write_mp4

    frames = [np.roll(_faces(1, 96)[0], 3 * k, axis=0) for k in range(12)]
    write_mp4(tmp_path / "v.mp4", frames, fps=20)
    row = {"start_frame": 2, "end_frame": 11, "fps": 20.0, "crop_x0": -10, "crop_y0": 8, "crop_size": 80}
    got, idx, t = decode_clip(row, tmp_path / "v.mp4", EncoderConfig(size=32, stride=2, max_frames=3))
    assert idx.tolist() == [2, 6, 10] and np.allclose(t, [0, 0.2, 0.4])
    ref = read_frames(tmp_path / "v.mp4", idx)
    for k, i in enumerate(idx):
        assert np.array_equal(got[k], crop_square(ref[int(i)], -10, 8, 80, 32))
    # several clips of one video in one pass: same crops as one by one; a span past the end is an error
    from pipeline.shards.decode import decode_clips
    from pipeline.video_io import VideoError

    rows = [{**row, "start_frame": 6, "end_frame": 12, "crop_x0": 5}, row,
            {**row, "start_frame": 30, "end_frame": 40}]
    out = list(decode_clips(rows, tmp_path / "v.mp4", EncoderConfig(size=32, stride=2, max_frames=3)))
    assert [r["start_frame"] for r, _ in out] == [2, 6, 30]        # yielded as each clip's span ends
    assert np.array_equal(out[0][1][0], got)
    alone = decode_clip(rows[0], tmp_path / "v.mp4", EncoderConfig(size=32, stride=2, max_frames=3))
    assert np.array_equal(out[1][1][0], alone[0]) and out[1][1][1].tolist() == [6, 8, 10]
    assert isinstance(out[2][1], VideoError) and "no frames in span 30:40" in str(out[2][1])


def test_fit_vae_lowers_reconstruction_loss(tiny):
    import torch

    from pipeline.shards.encode import load_vae
    from pipeline.shards.vaefit import fit_vae

    vae = load_vae(str(tiny / "vae"))
    threads = torch.get_num_threads()
    losses = fit_vae(vae, _faces(8), steps=15, lr=3e-3, batch=4, seed=0)
    assert torch.get_num_threads() == threads   # fit_vae runs single-threaded, then restores
    assert len(losses) == 15
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])


def test_fitted_tiny_vae_gets_a_unit_variance_scaling_factor(tmp_path):
    import torch

    from pipeline.shards.encode import load_vae
    from pipeline.shards.model_sets import build_tiny_models
    from pipeline.shards.vaefit import fit_tiny_models

    d = build_tiny_models(tmp_path / "m", seed=1, sample_size=64)
    frames = _faces(8)
    lines = []
    info = fit_tiny_models(d, frames, steps=3, batch=4, log=lines.append)
    # a real (unfaked) clock: the fit says how fast it went and records it
    assert any("steps/s" in m and "3/3" in m and "done in" in m for m in lines), lines
    assert info["fit_s"] > 0 and info["fit_size"] == 64 and info["fit_estimate_s"] > 0
    vae = load_vae(str(d / "vae"))   # the factor must survive save/load: shards read it from the config
    assert vae.config.scaling_factor == pytest.approx(info["scaling_factor"]) and info["scaling_factor"] != 0.18215
    with torch.no_grad():
        z = vae.encode(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1).latent_dist.mean
    assert float((z * vae.config.scaling_factor).std()) == pytest.approx(1.0, rel=1e-3)


class _Clock:
    """A fake monotonic clock: every read advances `dt` seconds, so rates and estimates are exact."""

    def __init__(self, dt: float):
        self.t, self.dt = 100.0, dt

    def __call__(self) -> float:
        self.t += self.dt
        return self.t


def test_fit_progress_estimates_the_whole_fit_and_warns_when_slow():
    from pipeline.shards.vaefit import FitProgress

    # 300 steps at 10 s each (one clock read per step): 0.1 steps/s, the whole fit ~50 min -> a WARNING
    lines = []
    p = FitProgress(300, lines.append, "fit_vae (256 px)", probe=3, every_s=600, hint="try --size 64",
                    clock=_Clock(10.0))
    p.start()
    for k in range(1, 301):
        p.step(k, 0.5)
    assert lines[0] == "fit_vae (256 px): 0.1 steps/s over 3 timed steps -> about 50m00s for 300 steps"
    assert lines[1] == "WARNING: fit_vae (256 px) will take about 50m00s; try --size 64"
    assert p.estimate_s == pytest.approx(3000.0)
    # then a line every 600 s (60 steps) with the rate and the time left, and one at the end
    assert lines[2] == "fit_vae (256 px) step 64/300 loss 0.5000 | 0.1 steps/s | 39m20s left"
    assert lines[-1] == "fit_vae (256 px) step 300/300 loss 0.5000 | 0.1 steps/s | done in 50m00s"
    assert len(lines) == 2 + 4 + 1
    # a fast fit is estimated but not warned about
    quiet = []
    p = FitProgress(300, quiet.append, probe=3, warn_s=180, every_s=30, clock=_Clock(0.1))
    p.start()
    for k in range(1, 301):
        p.step(k, 0.5)
    assert not any("WARNING" in m for m in quiet) and "about 30s for 300 steps" in quiet[0]
    # a step slower than a progress interval: estimated (and warned about) after the first step already
    slow = []
    p = FitProgress(300, slow.append, probe=3, every_s=30, clock=_Clock(60.0))
    p.start()
    p.step(1, 0.5)
    assert slow == ["fit_vae: 0.0167 steps/s over the first step -> about 5h00m for 300 steps",
                    "WARNING: fit_vae will take about 5h00m"]


def test_shards_help_says_what_each_size_costs():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pipeline.shards", "--help"], capture_output=True, text=True)
    text = " ".join(out.stdout.split())
    assert out.returncode == 0
    for size in (64, 128, 256):
        assert f"{size} px ~" in text
    assert "time left" in text and "warns" in text


def test_half_precision_encode_tracks_fp32_and_redoes_overflow_in_fp32(tiny):
    """The GPU path's autocast (fp16, the GPU default, and bf16; CPU autocast runs the same code) stays
    close to fp32; 'auto' on a CPU is fp32 with no autocast (CPU results unchanged); a half-precision
    batch with a non-finite output is redone in fp32 and counted."""
    import torch

    from pipeline.shards.config import EncoderConfig
    from pipeline.shards.encode import Encoders
    from pipeline.shards.model_sets import resolve_models

    frames = _faces()
    outs = {}
    for precision in ("auto", "fp16", "bf16"):
        cfg = EncoderConfig(size=64, batch_frames=4, precision=precision)
        enc = Encoders(resolve_models(str(tiny), cfg), cfg, with_landmarks=False)
        outs[precision] = {k: v.astype(np.float32) for k, v in enc.forward_models(frames).items()}
        assert enc.fp32_redone == 0
    assert enc.dtype == torch.bfloat16

    def rms_rel(a, b):
        return float(np.sqrt(((a - b) ** 2).mean() / (b ** 2).mean()))

    # relative RMS error vs fp32; measured here: fp16 0.15% (latent mean), 0.09% (CLIP); bf16 (8 mantissa
    # bits, 8x coarser) 1.1% and 0.7%. The bounds leave ~4x room for other CPUs' kernels.
    for precision, bound in (("fp16", 0.006), ("bf16", 0.05)):
        for key in ("latent_mean", "latent_std", "clip_emb"):
            err = rms_rel(outs[precision][key], outs["auto"][key])
            assert 0 < err < bound, (precision, key, err)     # > 0: autocast really ran
    # an overflow under autocast (inf) is redone without it
    calls = []

    def overflowing(x):
        calls.append(torch.is_autocast_enabled("cpu"))
        return (x * float("inf") if calls[-1] else x,)

    x = torch.ones(2, 3)
    assert torch.equal(enc._run(overflowing, x)[0], x) and calls == [True, False] and enc.fp32_redone == 1
