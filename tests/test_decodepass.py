"""The analysis consumers' protocol and its sequential runner, driven with one or two consumers on a
corpus video whose cuts, face boxes and frame times are known (pipeline/synth/corpus.py)."""
from __future__ import annotations

import pytest

from pipeline.curate.decodepass import FrameTimes, run_consumers
from pipeline.curate.faces import FacesConfig, make_detector
from pipeline.curate.scenes import Boundary, ScenesConfig, ShotDetector
from pipeline.curate.tracking import FaceScanner
from pipeline.synth.corpus import Scene, VideoSpec, generate_video

W, H = 320, 180


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """face | no face | another face, joined by hard cuts (frames 24 and 40)."""
    spec = VideoSpec("decodepass", W, H, 25, [Scene(24, ("astronaut",), "brick", face_h=0.5), Scene(16, (), "gravel"),
                                              Scene(24, ("hopper",), "sunset", face_h=0.5)])
    return generate_video(spec, tmp_path_factory.mktemp("decodepass"), seed=3)


def test_scenes_alone_finds_the_true_cuts_and_accounts_its_time(video):
    times: dict[str, float] = {}
    shots = ShotDetector(ScenesConfig(detector="content"), video["fps"])   # no network needed
    run = run_consumers(video["path"], 256, [shots], times)
    assert run.num_frames == video["num_frames"] == 64 and run.message == ""
    assert video["cuts"] == [24, 40]
    assert run.results["scenes"] == [Boundary(c, c, "cut") for c in video["cuts"]]
    assert set(times) == {"decode", "scenes"} and all(t >= 0 for t in times.values())


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_faces_with_frame_times_match_the_true_boxes_and_timestamps(video):
    cfg = FacesConfig(stride=8)
    faces = FaceScanner(cfg, make_detector(cfg), W)
    run = run_consumers(video["path"], 256, [faces, FrameTimes()])
    n = run.num_frames
    assert n == video["num_frames"]
    # a constant-rate file: frame i shows at i / fps (one timestamp tick of slack: the container's time base)
    stamps = run.results["timestamps"]
    assert len(stamps) == n and all(abs(t - i / video["fps"]) < 1e-3 for i, t in enumerate(stamps))
    dets = run.results["faces"]
    assert dets and set(dets) <= set(range(n)) and dets is faces.dets
    truth = video["face_box"]
    checked = 0
    for i, d in dets.items():
        if truth[i] is None:     # the no-face shot: nothing found there
            assert d.state == "none", (i, d.state)
            continue
        assert d.state == "ok", (i, d.state)
        x, y, w, h = d.box       # normalised (x, y, w, h) vs the mesh extent in display pixels: same face
        assert _iou((x * W, y * H, (x + w) * W, (y + h) * H), truth[i]) > 0.4, i
        checked += 1
    assert checked >= 4


def test_consumer_names_must_differ(video):
    with pytest.raises(ValueError, match="share a name"):
        run_consumers(video["path"], 256, [FrameTimes(), FrameTimes()])


@pytest.mark.parametrize("good", [0, 5, 8, 13])
def test_a_decode_that_breaks_mid_burst_keeps_every_good_frame_in_order(video, monkeypatch, good):
    """scan decodes a few frames ahead of the consumers: when the decoder fails after `good` frames,
    the consumers still see exactly frames 0..good-1, each once and in order, and the run says where
    it broke (none good: the file is refused)."""
    import pipeline.video_io as video_io
    from pipeline.video_io import VideoError

    real_open = video_io._open

    class Breaking:               # the real container, whose decoder raises after `good` frames
        def __init__(self, path):
            self.c = real_open(path)
            self.streams = self.c.streams

        def decode(self, stream):
            for i, frame in enumerate(self.c.decode(stream)):
                if i == good:
                    raise RuntimeError("bitstream damaged")
                yield frame

        def close(self):
            self.c.close()

    monkeypatch.setattr(video_io, "_open", Breaking)
    times = FrameTimes()
    if good == 0:
        with pytest.raises(VideoError, match="decode failed"):
            run_consumers(video["path"], 256, [times])
        return
    run = run_consumers(video["path"], 256, [times])
    assert run.num_frames == good and len(run.results["timestamps"]) == good
    assert run.results["timestamps"] == sorted(set(run.results["timestamps"]))
    assert f"after frame {good}" in run.message
