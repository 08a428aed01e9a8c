"""The generated face-video corpus: deterministic, varied, and its ground truth is what a real
face detector (MediaPipe) sees in the decoded videos."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.synth import corpus as testmedia
from pipeline.synth.corpus import Scene, VideoSpec, generate_video
from pipeline.video_io import iter_frames, probe


def _frames_of(intervals) -> set[int]:
    return {i for a, b in intervals for i in range(a, b)}


def _sha(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    spec = VideoSpec("tiny", 320, 180, 25, [Scene(12, ("astronaut",), "brick"), Scene(6, (), "sunset"),
                                            Scene(8, ("hopper", "astronaut_warm"), "coffee", face_h=0.3)],
                     rotation=270, audio=True)
    a = generate_video(spec, tmp_path / "a", seed=3)
    b = generate_video(spec, tmp_path / "b", seed=3)
    generate_video(spec, tmp_path / "c", seed=4)
    assert (tmp_path / "a/tiny.json").read_bytes() == (tmp_path / "b/tiny.json").read_bytes()
    assert _sha(a["path"]) == _sha(b["path"])
    assert (tmp_path / "a/tiny.json").read_bytes() != (tmp_path / "c/tiny.json").read_bytes()
    assert a["cuts"] == [12, 18] and a["no_face"] == [[12, 18]] and a["multi_face"] == [[18, 26]]


def test_corpus_video_regenerates_identically(corpus_dir, tmp_path):
    """The cached session corpus was generated in another process (maybe another day)."""
    gt = testmedia.generate_corpus(tmp_path, seed=0, names=["rotated_phone_30"])[0]
    assert (tmp_path / "rotated_phone_30.json").read_bytes() == (corpus_dir / "rotated_phone_30.json").read_bytes()
    assert _sha(gt["path"]) == _sha(corpus_dir / "rotated_phone_30.mp4")


def test_unknown_name_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus video.*nope"):
        testmedia.generate_corpus(tmp_path, names=["nope"])


def test_corpus_variety_and_probe_agree_with_ground_truth(corpus):
    assert len(corpus) >= 8
    assert {24, 25, 30} <= {round(g["fps"]) for g in corpus}
    heights = {min(g["width"], g["height"]) for g in corpus}
    assert min(heights) <= 360 and max(heights) == 1080
    assert any(g["height"] > g["width"] for g in corpus) and any(g["width"] > g["height"] for g in corpus)
    assert any(g["rotation"] for g in corpus) and any(g["has_audio"] for g in corpus)
    for kind in ("no_face", "multi_face", "blur", "small_face"):
        assert any(g[kind] for g in corpus), kind
    assert sum(len(g["cuts"]) for g in corpus) >= 8
    for g in corpus:
        info = probe(g["path"])
        assert (info.width, info.height) == (g["width"], g["height"]), g["name"]
        assert info.num_frames == g["num_frames"] and abs(info.fps - g["fps"]) < 0.01, g["name"]
        assert info.rotation == g["rotation"] % 360 and info.has_audio == g["has_audio"], g["name"]
        # Internal consistency of the per-frame ground truth.
        none, multi = _frames_of(g["no_face"]), _frames_of(g["multi_face"])
        assert len(g["face_box"]) == len(g["face_boxes"]) == g["num_frames"]
        for i, (box, boxes) in enumerate(zip(g["face_box"], g["face_boxes"])):
            assert (box is None) == (i in none)
            assert (len(boxes) >= 2) == (i in multi)
            if box:
                x0, y0, x1, y1 = box
                assert 0 <= x0 < x1 <= g["width"] and 0 <= y0 < y1 <= g["height"], (g["name"], i, box)
        # scenes are the pure frames of each shot: a hard cut starts one where the last ended, a
        # transition window fills the gap between them
        gaps = [(a["end"], b["start"]) for a, b in zip(g["scenes"], g["scenes"][1:])]
        assert g["cuts"] == [s for e, s in gaps if e == s]
        assert [(t["start"], t["end"]) for t in g.get("transitions", [])] == [(e, s) for e, s in gaps if s > e]


def test_rotated_video_decodes_in_display_orientation(corpus_by_name):
    """Stored landscape with a display matrix; iter_frames must give the portrait we rendered."""
    gt = corpus_by_name["rotated_phone_30"]
    spec = next(s for s in testmedia.default_specs() if s.name == "rotated_phone_30")
    rendered = next(testmedia._render(spec, gt["seed"]))[0].astype(np.float32)
    _, decoded = next(iter_frames(gt["path"]))
    assert decoded.shape == rendered.shape == (640, 360, 3)
    err = np.abs(decoded.astype(np.float32) - rendered).mean()
    flipped = np.abs(decoded[::-1, ::-1].astype(np.float32) - rendered).mean()
    assert err < 6 and flipped > 4 * err, (err, flipped)


def test_video_io_rotation_matches_ffmpeg_autorotate(corpus_by_name):
    """Independent of our generator: what the ffmpeg CLI shows (autorotate) is what iter_frames gives."""
    import imageio_ffmpeg

    gt = corpus_by_name["rotated_phone_30"]
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", gt["path"], "-frames:v", "1",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    assert len(raw) == gt["width"] * gt["height"] * 3
    shown = np.frombuffer(raw, np.uint8).reshape(gt["height"], gt["width"], 3).astype(np.float32)
    _, ours = next(iter_frames(gt["path"]))
    assert np.abs(ours.astype(np.float32) - shown).mean() < 3


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix)


def test_mediapipe_sees_what_the_ground_truth_says(corpus):
    import mediapipe as mp

    counts = {"single": [0, 0], "none": [0, 0], "multi": [0, 0]}
    ious = []
    with mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as fd:
        for g in corpus:
            none, multi = _frames_of(g["no_face"]), _frames_of(g["multi_face"])
            mixed = _frames_of((t["start"], t["end"]) for t in g.get("transitions", []))
            for i, img in iter_frames(g["path"], stride=2, max_side=640):
                if i in mixed:       # half-faded or blended faces: what a detector sees there is moot
                    continue
                dets = fd.process(img).detections or []
                kind = "none" if i in none else "multi" if i in multi else "single"
                counts[kind][0] += 1
                counts[kind][1] += (len(dets) >= 2) if kind == "multi" else bool(dets)
                if kind == "single" and dets:
                    h, w = img.shape[:2]
                    s = g["width"] / w
                    bb = dets[0].location_data.relative_bounding_box
                    det = [bb.xmin * w * s, bb.ymin * h * s, (bb.xmin + bb.width) * w * s,
                           (bb.ymin + bb.height) * h * s]
                    ious.append(_iou(det, g["face_box"][i]))
    rate = {k: n / max(t, 1) for k, (t, n) in counts.items()}
    print("detection rates", rate, "median IoU", float(np.median(ious)), counts)
    assert counts["none"][0] > 0 and counts["none"][1] == 0          # never a face where there is none
    assert rate["single"] >= 0.95
    assert rate["multi"] >= 0.9
    assert np.median(ious) > 0.6                                     # the boxes are where the faces are


def test_expression_really_moves_landmarks(corpus_by_name):
    from pipeline.curate.landmarks import FaceMesh478

    gt = corpus_by_name["talk_360p30"]
    mouth, eyes, idx = [], [], []
    with FaceMesh478(static=True) as fm:
        for i, img in iter_frames(gt["path"], end=60, stride=2):
            lm = fm(img)
            assert lm is not None, i
            p = lm[:, :2] * [img.shape[1], img.shape[0]]
            face_h = np.linalg.norm(p[10] - p[152])          # forehead to chin: pose-invariant scale
            mouth.append(np.linalg.norm(p[0] - p[17]) / face_h)
            eyes.append((np.linalg.norm(p[159] - p[145]) + np.linalg.norm(p[386] - p[374])) / face_h)
            idx.append(i)
    m_true = np.array(gt["expression"]["mouth"])[idx]
    e_true = np.array(gt["expression"]["eyes"])[idx]
    assert np.ptp(m_true) > 0.5 and np.ptp(e_true) > 0.5
    assert np.corrcoef(mouth, m_true)[0, 1] > 0.6        # mouth opens when the field says so
    assert np.corrcoef(eyes, e_true)[0, 1] < -0.6        # eyes narrow during a blink
    assert np.ptp(mouth) > 0.03                          # landmark motion well above jitter


def test_portraits_are_distinct_faces(portraits):
    import cv2
    import mediapipe as mp

    assert len(portraits) == 6 and len({_sha(p) for p in portraits}) == 6
    with mp.solutions.face_detection.FaceDetection(model_selection=1) as fd:
        for p in portraits:
            img = cv2.imread(str(p))[..., ::-1]
            assert img.shape == (256, 256, 3)
            assert fd.process(np.ascontiguousarray(img)).detections, p.name


def test_cli_help_is_light_and_bad_names_fail_cleanly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipeline.synth.corpus", "--help"], capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 0 and "--out" in out.stdout
    # --help must not pull the heavy stack in.
    probe_imports = "import sys, pipeline.synth.corpus; print(sorted(m for m in ('cv2','mediapipe','av','torch') if m in sys.modules))"
    mods = subprocess.run([sys.executable, "-c", probe_imports], capture_output=True, text=True, timeout=20)
    assert mods.stdout.strip() == "[]"
    bad = subprocess.run([sys.executable, "-m", "pipeline.synth.corpus", "--out", str(tmp_path), "--only", "x"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown corpus video" in bad.stderr and "Traceback" not in bad.stderr
