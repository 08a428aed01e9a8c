"""Scene cuts from PySceneDetect's detectors on frames of our single decode pass."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.curate.probe import scan
from pipeline.curate.scenes import SceneCutter, ScenesConfig, scene_spans
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


def test_min_scene_len_merges_a_flash(tmp_path):
    import skimage.data as d

    img = d.astronaut()[:240, :320]
    frames = [img] * 20 + [255 - img] * 2 + [img] * 20   # a 2-frame flash is not two scenes
    p = tmp_path / "flash.mp4"
    write_mp4(p, frames, 25)
    cutter = SceneCutter(ScenesConfig(min_scene_len=8), fps=25)
    scan(p, 256, {"scenes": lambda f: cutter.update(f.index, f.small)})
    assert len(cutter.finish()) <= 1


def test_scene_spans_cover_the_video_and_bad_detector_is_named():
    assert scene_spans([40, 10, 40, 0, 99], 60) == [(0, 10), (10, 40), (40, 60)]
    assert scene_spans([], 5) == [(0, 5)]
    with pytest.raises(ValueError, match="detector"):
        SceneCutter(ScenesConfig(detector="transnet"), fps=25)
