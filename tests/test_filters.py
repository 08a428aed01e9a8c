"""Filters: long tracks split to the maximum duration; each bound rejects with its own reason."""
from __future__ import annotations

import math

import pytest

from pipeline.curate.filters import FiltersConfig, judge, split_long


def test_split_long_makes_equal_parts_within_the_maximum():
    parts = split_long(10, 310, 30.0, 4.0)               # 300 frames, at most 120 each -> 3 x 100
    assert parts == [(10, 110), (110, 210), (210, 310)]
    assert split_long(0, 100, 30.0, 8.5) == [(0, 100)]
    for s, e in split_long(3, 1000, 25.0, 8.5):
        assert (e - s) / 25.0 <= 8.5
    assert sum(e - s for s, e in split_long(3, 1000, 25.0, 8.5)) == 997


GOOD = dict(duration_s=3.0, resolution=300, quality=55.0, face_w_ratio=0.45, face_h_ratio=0.5, outside=0.0)


@pytest.mark.parametrize("change,reason", [
    ({}, ""),
    ({"duration_s": 0.5}, "too_short"),
    ({"resolution": 64}, "low_resolution"),
    ({"face_w_ratio": 0.7}, "face_ratio"),
    ({"face_h_ratio": 0.3}, "face_ratio"),
    ({"outside": 0.3}, "face_leaves_crop"),
    ({"quality": 12.0}, "low_quality"),
    ({"quality": math.nan}, "quality_unmeasured"),
])
def test_each_bound_rejects_with_its_reason(change, reason):
    assert judge(**{**GOOD, **change}, cfg=FiltersConfig()) == reason


def test_bounds_are_configurable():
    strict = FiltersConfig(min_quality=60.0, min_resolution=512, face_w_ratio=[0.44, 0.46])
    assert judge(**GOOD, cfg=strict) == "low_resolution"
    assert judge(**{**GOOD, "resolution": 600}, cfg=strict) == "low_quality"
    assert judge(**{**GOOD, "resolution": 600, "quality": 70.0}, cfg=strict) == ""
    assert judge(**{**GOOD, "resolution": 600, "quality": 70.0, "face_w_ratio": 0.43}, cfg=strict) == "face_ratio"
