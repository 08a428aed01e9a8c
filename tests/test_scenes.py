"""Shot boundaries: PySceneDetect's detectors (the fast option) on frames of our single decode pass,
fades through black from brightness, and the interval algebra clips are cut from."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.curate.probe import scan
from pipeline.curate.scenes import (
    Boundary,
    SceneCutter,
    ScenesConfig,
    ShotDetector,
    dark_fades,
    merge_boundaries,
    shot_spans,
    transition_intervals,
)
from pipeline.video_io import write_mp4


def _shots(tmp_path, lengths=(30, 22, 41, 27)):
    """Shots of different real photos, each panning slowly (motion inside a shot is not a cut)."""
    import cv2
    import skimage.data as d

    photos = [d.astronaut(), d.coffee(), d.chelsea(), np.repeat(d.camera()[..., None], 3, 2)]
    frames = []
    for k, n in enumerate(lengths):
        img = cv2.resize(photos[k % len(photos)], (400, 300))
        for i in range(n):
            frames.append(img[20 + i // 3: 260 + i // 3, 30 + i: 350 + i])
    p = tmp_path / "shots.mp4"
    write_mp4(p, frames, 25)
    return p, list(np.cumsum(lengths)[:-1]), sum(lengths)


@pytest.mark.parametrize("detector,threshold", [("content", 27.0), ("adaptive", 3.0)])
def test_cuts_are_found_on_the_exact_frame(tmp_path, detector, threshold):
    p, truth, n = _shots(tmp_path)
    cutter = SceneCutter(ScenesConfig(detector=detector, threshold=threshold), fps=25)
    assert scan(p, 256, {"scenes": lambda f: cutter.update(f.index, f.small)}) == n
    assert cutter.finish() == truth


def test_pyscenedetect_option_gives_cut_boundaries_and_spans(tmp_path):
    p, truth, n = _shots(tmp_path)
    det = ShotDetector(ScenesConfig(detector="content"), fps=25)     # no network needed
    assert scan(p, 256, {"scenes": det.update}) == n
    bounds = det.finish(n)
    assert bounds == [Boundary(c, c, "cut") for c in truth] and det.net_seconds == 0.0
    assert shot_spans(bounds, n, margin=2) == list(zip([0, *truth], [*truth, n]))


def test_min_scene_len_merges_a_flash(tmp_path):
    import skimage.data as d

    img = d.astronaut()[:240, :320]
    frames = [img] * 20 + [255 - img] * 2 + [img] * 20   # a 2-frame flash is not two scenes
    p = tmp_path / "flash.mp4"
    write_mp4(p, frames, 25)
    cutter = SceneCutter(ScenesConfig(detector="content", min_scene_len=8), fps=25)
    scan(p, 256, {"scenes": lambda f: cutter.update(f.index, f.small)})
    assert len(cutter.finish()) <= 1


def test_a_fade_through_black_is_one_gradual_boundary_with_its_ramps():
    fps, cfg = 25.0, ScenesConfig()
    # shot (bright ~120, drifting a little) | 6 frames darkening | 3 black | 5 brightening | shot
    shot_a = 120 + np.sin(np.arange(40) / 3)
    out = 120 * (1 - np.arange(1, 7) / 7)
    inn = 90 * np.arange(1, 6) / 6
    shot_b = 90 + np.cos(np.arange(40) / 4)
    luma = np.concatenate([shot_a, out, [2, 1, 3], inn, shot_b])
    assert dark_fades(luma, fps, cfg) == [Boundary(40, 54, "gradual")]
    # a long dark stretch is content (a night scene), not a transition
    night = np.concatenate([shot_a, np.full(int(3 * fps), 8.0), shot_b])
    assert dark_fades(night, fps, cfg) == []
    # a dark shot at the very start is a fade-in from black
    assert dark_fades(np.concatenate([[0, 0], inn, shot_b]), fps, cfg) == [Boundary(0, 7, "gradual")]


def test_boundaries_merge_and_transition_frames_never_reach_a_span():
    n = 100
    raw = [Boundary(30, 30, "cut"), Boundary(31, 31, "cut"),        # a flash: two cuts a frame apart
           Boundary(60, 70, "gradual"), Boundary(72, 75, "gradual"),  # a fade split at its black middle
           Boundary(0, 0, "cut"), Boundary(90, 90, "cut"), Boundary(90, 90, "cut")]
    merged = merge_boundaries(raw, n, gap=3)
    assert merged == [Boundary(30, 31, "gradual"), Boundary(60, 75, "gradual"), Boundary(90, 90, "cut")]
    gaps = transition_intervals(merged, n, margin=2)
    assert gaps == [(28, 33), (58, 77)]
    spans = shot_spans(merged, n, margin=2)
    assert spans == [(0, 28), (33, 58), (77, 90), (90, 100)]
    # every frame is in exactly one span or one transition interval
    cover = sorted([*spans, *gaps])
    assert cover[0][0] == 0 and cover[-1][1] == n and all(a[1] == b[0] for a, b in zip(cover, cover[1:]))
    # a boundary at the video's edge is clipped, a cut on frame 0 cuts nothing
    assert transition_intervals([Boundary(95, 104, "gradual")], n, 2) == [(93, 100)]
    assert shot_spans([Boundary(0, 0, "cut")], 10, 2) == [(0, 10)]


def test_bad_scenes_config_is_named():
    with pytest.raises(ValueError, match="detector"):
        ScenesConfig(detector="transnet")
    with pytest.raises(ValueError, match="transnet_frames"):
        ScenesConfig(transnet_frames="some")
    with pytest.raises(ValueError, match="network"):
        ShotDetector(ScenesConfig(), fps=25, net=None)
