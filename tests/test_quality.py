"""Quality: the weight-free sharpness scorer separates sharp from blurred crops at any crop size;
HyperIQA loads through pyiqa from a local file (a randomly initialised net of the real class)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from pipeline.curate.faces import FacesConfig, make_detector
from pipeline.curate.probe import scan
from pipeline.curate.quality import (
    HyperIQAScorer,
    QualityConfig,
    QualitySampler,
    SharpnessScorer,
    make_scorer,
)
from pipeline.curate.tracking import FaceScanner
from pipeline.video_io import write_mp4

FACE = astronaut()[20:260, 100:340]   # a 240 px head-and-shoulders crop of a real photo


def _jpeg(img, q=85):
    ok, enc = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(enc, cv2.IMREAD_COLOR)[..., ::-1]


def test_sharpness_separates_sharp_from_blurred_at_every_crop_size():
    sc = SharpnessScorer(QualityConfig())
    from pipeline.curate.filters import FiltersConfig

    bound = FiltersConfig().min_quality
    sharp, blurred = [], []
    for side in (100, 200, 400):
        img = cv2.resize(FACE, (side, side), interpolation=cv2.INTER_AREA if side < 240 else cv2.INTER_CUBIC)
        sharp.append(sc([_jpeg(img)])[0])
        for sigma in (0.01, 0.02):   # blur relative to the crop side, as the corpus blurs relative to the frame
            blurred.append(sc([_jpeg(cv2.GaussianBlur(img, (0, 0), sigma * side))])[0])
    assert min(sharp) > bound > max(blurred), (sharp, blurred)
    assert all(0 <= s <= 100 for s in sharp + blurred)


def test_sharpness_ignores_contrast_and_accepts_gray():
    sc = SharpnessScorer(QualityConfig())
    img = _jpeg(cv2.resize(FACE, (160, 160), interpolation=cv2.INTER_AREA))
    dim = (img.astype(np.float32) * 0.5 + 30).astype(np.uint8)
    a, b = sc([img, dim])
    assert abs(a - b) < 8, (a, b)
    assert sc([cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)])[0] == pytest.approx(a, abs=0.5)


def test_sampler_scores_clip_spans_from_the_decode_pass(tmp_path):
    """First half sharp, second half blurred: the per-clip score follows, from one decode."""
    W, H = 320, 240
    head = cv2.resize(FACE, (150, 150), interpolation=cv2.INTER_AREA)
    frames = []
    for i in range(48):
        f = np.full((H, W, 3), 90, np.uint8)
        f[40:190, 80 + i // 8:230 + i // 8] = head
        frames.append(f if i < 24 else cv2.GaussianBlur(f, (0, 0), 3.0))
    p = tmp_path / "halfblur.mp4"
    write_mp4(p, frames, 24)
    fcfg, qcfg = FacesConfig(stride=4), QualityConfig(every=6)
    faces = FaceScanner(fcfg, make_detector(fcfg), W)
    sampler = QualitySampler(qcfg, make_scorer(qcfg), faces, 0.45, 0.53)
    scan(p, 256, {"faces": faces.update, "quality": sampler.update})
    assert sampler.every == 8                                 # rounded up to the detection stride
    assert sorted(sampler.samples) == [0, 8, 16, 24, 32, 40]
    assert sampler.clip_score(0, 24) > 30 > sampler.clip_score(24, 48)
    assert np.isnan(sampler.clip_score(1, 8))                 # no sample inside: unmeasured, not invented


class _NotATensor:
    pass


@pytest.fixture(scope="module")
def hyperiqa_files(tmp_path_factory):
    """A HyperIQA checkpoint (pyiqa's HyperNet, random weights) in pyiqa's {'params': ...} layout, the
    score that very net gives a crop, and a checkpoint that smuggles a pickled object."""
    import torch
    import torch.nn.functional as F
    from pyiqa.archs.hypernet_arch import HyperNet

    from pipeline.curate.quality import _no_backbone_download

    d = tmp_path_factory.mktemp("hyperiqa")
    torch.manual_seed(0)
    with _no_backbone_download():
        net = HyperNet(pretrained=False, num_crop=1).eval()
    p = d / "hyperiqa.pth"
    torch.save({"params": net.state_dict()}, p)
    crop = cv2.resize(FACE, (180, 180))
    x = F.interpolate(torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255, size=(224, 224),
                      mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        want = 100 * float(net(x).clamp(0, 1))
    bad = d / "pickled.pth"
    torch.save({"params": {}, "extra": _NotATensor()}, bad)
    return p, crop, want, bad


def test_hyperiqa_loads_local_weights_through_pyiqa(hyperiqa_files):
    import torch

    path, crop, want, _ = hyperiqa_files
    sc = make_scorer(QualityConfig(scorer="hyperiqa", model_path=str(path)))
    assert isinstance(sc, HyperIQAScorer) and sc.name == "hyperiqa"
    saved = torch.load(path, weights_only=True)["params"]
    loaded = sc.metric.net.state_dict()
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)   # the file's weights, not another init
    got = sc([crop])          # HyperNet costs ~1 s per crop on a shared CPU: one crop
    assert got.shape == (1,) and 0 <= got[0] <= 100
    assert got[0] == pytest.approx(want, abs=1e-3)                  # the saved net's own verdict


def test_hyperiqa_missing_or_unsafe_weights_fail_clearly(tmp_path, hyperiqa_files):
    *_, bad = hyperiqa_files
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="HyperIQA weights not found at .*nope.pth"):
        make_scorer(QualityConfig(scorer="hyperiqa", model_path=str(missing)))
    with pytest.raises(ValueError, match="not a plain tensor checkpoint"):
        make_scorer(QualityConfig(scorer="hyperiqa", model_path=str(bad)))
    with pytest.raises(ValueError, match="scorer"):
        make_scorer(QualityConfig(scorer="brisque"))


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv420p10le"])
def test_full_size_luma_is_the_picture_for_8_and_10_bit_video(tmp_path, pix_fmt):
    """The sampler reads luma straight from the decoder's plane when it is 8-bit, converts otherwise."""
    import av

    img = np.ascontiguousarray(astronaut()[:240, :320])
    p = tmp_path / f"{pix_fmt}.mp4"
    with av.open(str(p), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 320, 240, pix_fmt
        for _ in range(3):
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    grays = []
    scan(p, 128, {"g": lambda f: grays.append(f.gray())})
    want = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
    assert len(grays) == 3 and grays[0].shape == (240, 320) and grays[0].dtype == np.uint8
    assert np.abs(grays[0].astype(np.float32) - want).mean() < 6
