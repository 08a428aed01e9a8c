"""Filters: long tracks split to the maximum duration; each bound rejects with its own reason."""
from __future__ import annotations

import math

import pytest

from pipeline.curate.faces import Crop
from pipeline.curate.filters import FaceCheck, FiltersConfig, face_reason, judge, split_long


def test_split_long_makes_equal_parts_within_the_maximum():
    parts = split_long(10, 310, 30.0, 4.0)               # 300 frames, at most 120 each -> 3 x 100
    assert parts == [(10, 110), (110, 210), (210, 310)]
    assert split_long(0, 100, 30.0, 8.5) == [(0, 100)]
    for s, e in split_long(3, 1000, 25.0, 8.5):
        assert (e - s) / 25.0 <= 8.5
    assert sum(e - s for s, e in split_long(3, 1000, 25.0, 8.5)) == 997


CROP = dict(x0=0, y0=0, size=300, face_w_ratio=0.45, face_h_ratio=0.5, outside=0.0, pad_fraction=0.0, in_band=True)
FACE = dict(samples=6, landmark_rate=1.0, yaw_deg=8.0, flat_skin=0.02, confidence=0.92)
GOOD = dict(duration_s=3.0, resolution=300, quality=55.0)


def _judge(cfg=None, crop=None, face=None, **kw):
    return judge(**{**GOOD, **kw}, crop=Crop(**{**CROP, **(crop or {})}), face=FaceCheck(**{**FACE, **(face or {})}),
                 cfg=cfg or FiltersConfig())


@pytest.mark.parametrize("change,reason", [
    ({}, ""),
    ({"duration_s": 0.5}, "too_short"),
    ({"resolution": 64}, "low_resolution"),
    ({"crop": {"in_band": False}}, "face_ratio"),
    ({"crop": {"pad_fraction": 0.08}}, "padding"),
    ({"crop": {"outside": 0.3}}, "face_leaves_crop"),
    ({"face": {"confidence": 0.55}}, "low_confidence"),
    ({"face": {"landmark_rate": 0.8}}, "no_landmarks"),
    ({"face": {"samples": 0, "landmark_rate": 0.0}}, "no_landmarks"),      # nothing sampled: not verified
    ({"face": {"yaw_deg": 60.0}}, "profile"),
    ({"face": {"flat_skin": 0.5}}, "drawn_face"),
    ({"quality": 12.0}, "low_quality"),
    ({"quality": math.nan}, "quality_unmeasured"),
])
def test_each_bound_rejects_with_its_reason(change, reason):
    assert _judge(**change) == reason


def test_face_checks_fail_closed_on_unmeasured_values():
    """A measure that could not be taken (NaN) never passes: an unverified face is not accepted."""
    cfg = FiltersConfig()
    assert face_reason(FaceCheck(**FACE), cfg) == ""
    assert face_reason(FaceCheck(**{**FACE, "confidence": math.nan}), cfg) == "low_confidence"
    assert face_reason(FaceCheck(**{**FACE, "yaw_deg": math.nan}), cfg) == "profile"
    assert face_reason(FaceCheck(**{**FACE, "flat_skin": math.nan}), cfg) == "drawn_face"
    # the bounds are inclusive at the limits: exactly 90% of the samples, 45 degrees, 0.7 pass
    edge = FaceCheck(10, 0.9, 45.0, 0.12, 0.7)
    assert face_reason(edge, cfg) == ""


def test_bounds_are_configurable():
    strict = FiltersConfig(min_quality=60.0, min_resolution=512, max_pad_fraction=0.0, max_yaw_deg=20.0)
    assert _judge(strict) == "low_resolution"
    assert _judge(strict, resolution=600) == "low_quality"
    assert _judge(strict, resolution=600, quality=70.0) == ""
    assert _judge(strict, resolution=600, quality=70.0, crop={"pad_fraction": 0.01}) == "padding"
    assert _judge(strict, resolution=600, quality=70.0, face={"yaw_deg": 25.0}) == "profile"
    assert _judge(resolution=600, quality=70.0, face={"yaw_deg": 25.0}) == ""
