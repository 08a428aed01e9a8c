"""Metrics: LMSE with real MediaPipe, CSIM, FID with a locally saved random-weight Inception-v3."""
from __future__ import annotations

import numpy as np
import pytest

from model import metrics as M


@pytest.fixture(scope="module")
def face256():
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut()[20:276, 120:376])


def _shift(img, dx, dy=0.0):
    import cv2

    return cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, dy]]), (img.shape[1], img.shape[0]),
                          borderMode=cv2.BORDER_REPLICATE)


def test_lmse_landmarks_known_shift_is_exact():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 256, (5, 478, 3))
    assert M.lmse_landmarks(a, a)["lmse"] == 0.0
    for d in (1.0, 3.0, 6.0):
        b = a + np.array([d, 0, 0])
        assert M.lmse_landmarks(a, b)["lmse"] == pytest.approx(d * d / 3)
    # frames without a face on either side are left out and counted
    b = a.copy()
    b[1] = np.nan
    r = M.lmse_landmarks(a, b + np.array([2.0, 0, 0]))
    assert r["frames_used"] == 4 and r["lmse"] == pytest.approx(4 / 3)
    assert M.lmse_landmarks(a[:1], b[1:2])["lmse"] is None


def test_lmse_real_mediapipe_zero_on_self_and_grows_with_shift(face256):
    video = np.stack([face256, _shift(face256, 1, 1)])
    assert M.lmse(video, video)["lmse"] == 0.0
    errs = [M.lmse(np.stack([_shift(f, d) for f in video]), video)["lmse"] for d in (4, 8, 16)]
    assert errs[0] < errs[1] < errs[2]
    # a shift of d px along x in the 256 crop is d^2/3 in our normalisation (pixels of a 256 crop)
    for d, e in zip((4, 8, 16), errs):
        assert e == pytest.approx(d * d / 3, rel=0.25)
    # a frame with no face is not scored
    blank = np.zeros_like(face256)
    r = M.lmse(np.stack([face256, blank]), np.stack([face256, face256]))
    assert r["frames_used"] == 1 and r["frames_total"] == 2


def test_csim_identical_is_one_and_min_over_frames(face256):
    rng = np.random.default_rng(1)
    proj = rng.normal(size=(32 * 32 * 3, 64))

    def embed(frames):  # a fixed random projection of downsampled pixels
        small = M.load_frames(frames, size=32).reshape(len(frames), -1) / 255.0
        return small @ proj

    same = np.stack([face256] * 4)
    assert M.csim(face256, same, embed) == pytest.approx(1.0, abs=1e-9)
    other = np.stack([face256, face256, 255 - face256])
    assert M.csim(face256, other, embed) < 0.999
    # min, not mean
    e = rng.normal(size=(3, 8))
    assert M.csim_embeddings(e[0], e) == pytest.approx(min(M.cosine(e, e[0][None])))


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    import torch
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("inc") / "inception_v3.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=True).state_dict(), path)
    return path


def test_fid_zero_on_same_set_and_grows_with_shift(face256, inception_file):
    rng = np.random.default_rng(0)
    x = np.stack([np.clip(face256 + rng.normal(0, 8, face256.shape), 0, 255).astype(np.uint8)
                  for _ in range(6)])
    net = M.load_inception(inception_file)
    fx = M.inception_features(x, net, size=75)
    shifted = []
    for s in (0.15, 0.4, 0.8):
        y = np.clip(x * (1 - s) + rng.normal(0, 8, x.shape), 0, 255).astype(np.uint8)
        shifted.append(M.fid_from_features(fx, M.inception_features(y, net, size=75)))
    same = M.fid(x, x, weights=inception_file, size=75)
    assert isinstance(same, float) and same <= 1e-6 * shifted[0]
    assert shifted[0] < shifted[1] < shifted[2]


def test_fid_from_features_matches_scipy_when_well_conditioned():
    from scipy import linalg

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(200, 6)), rng.normal(0.5, 2.0, size=(150, 6))
    ma, mb = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((ma - mb) ** 2).sum() + np.trace(sa + sb - 2 * linalg.sqrtm(sa @ sb).real)
    assert M.fid_from_features(a, b) == pytest.approx(ref, rel=1e-6)


def test_fid_unavailable_without_weights(tmp_path, monkeypatch, face256):
    monkeypatch.delenv(M.INCEPTION_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    r = M.fid([face256] * 2, [face256] * 2, data_root=tmp_path)
    assert isinstance(r, str) and r.startswith("unavailable: ")
    r = M.fid([face256] * 2, [face256] * 2, weights=tmp_path / "missing.pth")
    assert r.startswith("unavailable: ")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert M.fid([face256] * 2, [face256] * 2, weights=bad).startswith("unavailable: cannot load")


def test_similarity_note_labels_what_computed_the_figure(tmp_path):
    from pipeline.shards.config import EncoderConfig
    from pipeline.shards.model_sets import build_tiny_models, resolve_models

    # the tiny models' CLIP is never trained (only the VAE is fitted): its CSIM is labelled untrained
    tiny = resolve_models(str(build_tiny_models(tmp_path / "tiny", seed=0, sample_size=64)), EncoderConfig(size=64))
    note = M.similarity_note("CSIM", tiny.clip_label, tiny.clip_trained)
    assert tiny.clip_trained is False and note["embedder_trained"] is False
    assert M.labelled(note) == "CSIM [untrained local CLIP]" and "random weights" in note["caveat"]
    # a hub name with a pretrained tag is trained: no label, no caveat
    hub = resolve_models("default", EncoderConfig())
    note = M.similarity_note("CSIM", hub.clip_label, hub.clip_trained)
    assert hub.clip_trained is True and M.labelled(note) == "CSIM" and note["caveat"] == ""
    # a local dir that does not say how it was trained: labelled as unknown, not as trained
    (tmp_path / "x" / "vae").mkdir(parents=True)
    (tmp_path / "x" / "clip").mkdir()
    local = resolve_models(str(tmp_path / "x"), EncoderConfig())
    note = M.similarity_note("CSIM", local.clip_label, local.clip_trained)
    assert local.clip_trained is None and M.labelled(note) == "CSIM [CLIP of unknown training]"
    # dirs built before clip_trained was recorded are known by the tiny label
    (tmp_path / "x" / "models.json").write_text('{"clip": "tiny-openclip-ViT(w64,l2,p8,d32)-seed0"}')
    assert resolve_models(str(tmp_path / "x"), EncoderConfig()).clip_trained is False
    # the same function labels another metric from another embedder (the identity work reuses it)
    assert M.labelled(M.similarity_note("ID", "arcface-test", False, kind="ArcFace")) == "ID [untrained local ArcFace]"
