"""Geometry and time from the container: frames in display pixels (sample aspect ratio applied, checked
against the ffmpeg CLI), times from the frames' timestamps (variable frame rate, an AVI whose header says
50 fps for frames at 25), the same in curation's decode pass and in the shard writer's."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.curate.probe import scan
from pipeline.video_io import FrameClock, end_time, iter_timed_frames, measured_fps, probe


class _Frame:
    def __init__(self, t):
        self.time = t


class _Stream:
    average_rate = 25
    guessed_rate = None


def test_frame_clock_uses_timestamps_and_repairs_broken_ones():
    clock = FrameClock(_Stream())
    # the first stamp is time 0 (an edit list may start a video at 0.5 s); a missing stamp and one that
    # goes backwards take the header's interval after the previous frame: times always move forward
    got = [clock(_Frame(t)) for t in (0.5, 0.54, None, 0.62, 0.60, 0.70)]
    assert got == pytest.approx([0.0, 0.04, 0.08, 0.12, 0.16, 0.20])
    assert clock.repaired == 2
    vfr = [0.0, 1 / 30, 2 / 30, 4 / 30, 5 / 30]
    # the last frame shows for the mean interval
    assert measured_fps(vfr, 25) == pytest.approx(4 / (5 / 30)) and end_time(vfr, 25) == pytest.approx(5 / 30 + 5 / 30 / 4)
    assert measured_fps([0.0], 25) == 25 and end_time([0.0], 25) == pytest.approx(0.04)


@pytest.mark.parametrize("name", ["vfr_phone_60", "avi_header50_25"])
def test_decoded_times_are_the_ground_truth_not_the_header(corpus_by_name, name):
    g = corpus_by_name[name]
    info = probe(g["path"])
    times = [t for _, _, t in iter_timed_frames(g["path"], max_side=64)]
    assert len(times) == g["num_frames"]
    # stored in 1/60 s (MP4) or 1/50 s (AVI) ticks: 1 ms is far below a frame
    np.testing.assert_allclose(times, g["frame_times"], atol=1e-3)
    assert measured_fps(times, info.fps) == pytest.approx(g["fps"], abs=1e-3)
    scanned = []
    scan(g["path"], 64, {"t": lambda f: scanned.append(f.time)})
    assert scanned == times                                     # curation's pass: the very same seconds
    if name == "avi_header50_25":
        assert info.fps == 50 and g["fps"] == 25                # the header lies; the timestamps do not
    else:
        assert len({round(b - a, 4) for a, b in zip(times, times[1:])}) == 2   # 1/30 s and 1/15 s frames


@pytest.mark.parametrize("name,sar", [("sar16x11_25", (16, 11)), ("sar15x16_30", (15, 16))])
def test_non_square_pixels_decode_as_ffmpeg_displays_them(corpus_by_name, name, sar):
    import imageio_ffmpeg

    from pipeline.video_io import iter_frames

    g = corpus_by_name[name]
    info = probe(g["path"])
    assert info.sar == pytest.approx(sar[0] / sar[1]) and (info.width, info.height) == (g["width"], g["height"])
    assert g["coded_width"] != g["width"]
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", g["path"], "-frames:v", "1",
                          "-vf", "scale=iw*sar:ih,setsar=1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    shown = np.frombuffer(raw, np.uint8).reshape(g["height"], g["width"], 3).astype(np.float32)
    _, ours = next(iter_frames(g["path"]))
    assert ours.shape == shown.shape
    assert np.abs(ours.astype(np.float32) - shown).mean() < 3        # scalers differ by a little, not a stretch
    small = []
    scan(g["path"], 128, {"s": lambda f: small.append(f.small.shape[:2])}, max_frames=1)
    h, w = small[0]
    assert w / h == pytest.approx(g["width"] / g["height"], rel=0.02)     # what the detector sees is undistorted


def test_shard_times_come_from_timestamps(corpus_by_name):
    from pipeline.shards.config import EncoderConfig
    from pipeline.shards.decode import decode_clip

    g = corpus_by_name["vfr_phone_60"]
    row = {"start_frame": 10, "end_frame": 40, "crop_x0": 100, "crop_y0": 20, "crop_size": 200, "fps": g["fps"]}
    frames, idx, t = decode_clip(row, Path(g["path"]), EncoderConfig(size=32, stride=2, max_frames=0))
    assert idx.tolist() == list(range(10, 40, 2)) and frames.shape == (15, 32, 32, 3)
    want = np.array(g["frame_times"])[idx] - g["frame_times"][10]
    np.testing.assert_allclose(t, want, atol=1e-3)
    assert not np.allclose(t, (idx - 10) / g["fps"], atol=0.01)         # index / mean rate would be wrong
