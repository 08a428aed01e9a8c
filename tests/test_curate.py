"""`make curate` end to end: the real CLI on real Ray, real yt-dlp against the loopback server, the
generated corpus's ground truth; resume after a kill; bad input of every kind.

One Ray run over the corpus is shared by the ground-truth tests (module fixture)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.curate.manifest import frame_accounting_by_video
from pipeline.curate.stages import load_dag
from pipeline.ids import clip_id
from pipeline.schema import CLIPS

REPO = Path(__file__).resolve().parents[1]
DAG = REPO / "dags" / "curate.yaml"


def _env():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # embedded Ray, never a stray cluster
    return {**env, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pipeline.curate", *map(str, args)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _overlaps(s, e, intervals):
    return any(s < b and a < e for a, b in intervals)


@pytest.fixture(scope="module")
def run(_server, corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("curate")
    # the corpus, plus one dead link: on Ray too, one bad video must not abort the run
    dead = _server.url("talk_360p30", fault="404")
    (d / "sources.csv").write_text(_server.sources_csv() + f"{dead},dead_link,cc,gone\n")
    r = _cli("--data", d / "data", "--sources", d / "sources.csv", "--dag", DAG)
    assert r.returncode == 0, r.stderr[-3000:]
    cur = d / "data" / "curate"
    return {"dir": d, "root": d / "data", "stdout": r.stdout, "stderr": r.stderr,
            "clips": pd.read_parquet(cur / "clips.parquet"), "videos": pd.read_parquet(cur / "videos.parquet"),
            "rejections": pd.read_parquet(cur / "rejections.parquet"),
            "stats": json.loads((cur / "stats.json").read_text()),
            "gt": {g["name"]: g for g in corpus}}


# ---------------------------------------------------------------- the shared Ray run

def test_outputs_are_complete_and_consistent(run):
    clips, videos, st = run["clips"], run["videos"], run["stats"]
    assert set(videos["video_id"]) == set(run["gt"]) | {"dead_link"}
    assert (videos.loc[videos.video_id != "dead_link", "status"] == "ok").all()
    dead = videos.set_index("video_id").loc["dead_link"]
    assert (dead.status, dead.error_class) == ("failed", "permanent") and "404" in dead.message
    assert pq.read_schema(run["root"] / "curate" / "clips.parquet").remove_metadata().equals(CLIPS)
    assert all(r.clip_id == clip_id(r.video_id, r.start_frame, r.end_frame) for r in clips.itertuples())
    assert clips["clip_id"].is_unique and set(clips["quality_scorer"]) == {"sharpness-v1"}
    assert st["accepted"] == (clips["status"] == "accepted").sum() > 0
    assert st["rejections_by_reason"] == run["rejections"]["reason"].value_counts().to_dict()
    assert st["engine"] == "ray" and set(st["cpu_s_per_stage"]) >= {"decode", "scenes", "faces", "quality"}
    total = len(run["gt"]) + 1
    assert "accepted clips" in run["stdout"] and f"[{total}/{total}]" in run["stderr"]   # summary + progress
    assert len(list((run["root"] / "curate" / "state").glob("*.json"))) == len(run["gt"]) + 1
    for r in clips.itertuples():
        # media.keep: accepted_clips (the DAG's default): each accepted clip's own file, no download left
        assert not (run["root"] / r.media_path).exists() and (r.clip_path != "") == (r.status == "accepted")
        assert r.status != "accepted" or (run["root"] / r.clip_path).is_file()
        assert r.end_frame > r.start_frame and r.duration_s == pytest.approx(r.end_s - r.start_s)
        if run["gt"][r.video_id].get("header_fps", 0) is not None:     # constant rate: times are frame / fps
            assert r.end_s == pytest.approx(r.end_frame / r.fps)
    rej = clips[clips["status"] == "rejected"]
    assert (rej["reason"] != "").all() and (clips.loc[clips["status"] == "accepted", "reason"] == "").all()


def test_a_clean_ray_run_prints_only_its_own_lines(run):
    """Ray's deprecation/token/progress chatter, its core worker's E line and MediaPipe's TFLite/absl
    start-up lines are silenced where they are written: stderr holds our progress lines. (A worker's
    genuine diagnostics still pass: absl prints a 'Lock blocking' stack when a starved worker waits on a
    lock, seen once under a load average of 20; such lines are not asserted away.)"""
    from pipeline.quiet import is_native_noise

    lines = [ln for ln in run["stderr"].splitlines() if ln.strip()]
    assert not [ln for ln in lines if is_native_noise(ln)]
    chatter = ("logging_progress", "deprecated", "Token authentication", "core_worker.cc", "streaming_executor",
               "Started a local Ray instance", "Progress bars", "Running Dataset")
    assert not [ln for ln in lines if any(c in ln for c in chatter)]
    n = len(run["gt"]) + 1
    ours = [ln for ln in lines if ln.startswith("curate: ")]
    assert sum(f"/{n}] " in ln for ln in ours) == n and len(ours) <= n + 6


def test_scene_cuts_match_ground_truth_within_one_frame(run):
    # PySceneDetect's frame-difference detectors take a handheld jerk (the picture snaps 0.1 of the frame in
    # two frames, motion-blurred) for a cut: measured, one false cut in handheld_selfie_30. TransNetV2, the
    # issue-19 default, finds none there (many-hot peak 0.11). With those detectors the shaking videos are
    # left out of this count; the tracking tests show the false cut costs them no accepted time.
    shaky = load_dag(DAG).scenes.detector in ("content", "adaptive")
    tp = fp = fn = 0
    for v in run["videos"][run["videos"].status == "ok"].itertuples():
        if shaky and run["gt"][v.video_id].get("camera"):
            continue
        truth, found = list(run["gt"][v.video_id]["cuts"]), list(v.cut_frames)
        for c in found:
            hit = [t for t in truth if abs(t - c) <= 1]
            if hit:
                truth.remove(hit[0])
                tp += 1
            else:
                fp += 1
        fn += len(truth)
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    assert tp > 0 and precision >= 0.95 and recall >= 0.95, (tp, fp, fn)


def test_no_accepted_clip_spans_a_cut_a_faceless_or_a_multiface_stretch(run):
    acc = run["clips"][run["clips"]["status"] == "accepted"]
    assert len(acc) >= len(run["gt"])
    for r in acc.itertuples():
        g = run["gt"][r.video_id]
        assert not any(r.start_frame < c < r.end_frame for c in g["cuts"]), r
        # inside one shot's pure frames: no dissolve or fade frame, no second shot
        assert any(sc["start"] <= r.start_frame and r.end_frame <= sc["end"] for sc in g["scenes"]), r
        for kind in ("no_face", "multi_face", "small_face"):
            assert not _overlaps(r.start_frame, r.end_frame, g[kind]), (kind, r)
        assert all(b is not None for b in g["face_box"][r.start_frame:r.end_frame])
    rej = run["rejections"]
    # the faceless and the multi-face stretches are rejected with their reason (small faces are below
    # the short-range detector's reach: they are rejected as faceless)
    assert _overlaps(*run["gt"]["cuts_360p25"]["no_face"][0], rej.loc[rej.reason == "no_face", ["start_frame", "end_frame"]].values.tolist())
    assert _overlaps(*run["gt"]["multi_360p24"]["multi_face"][0], rej.loc[rej.reason == "multi_face", ["start_frame", "end_frame"]].values.tolist())


def test_transitions_are_boundaries_their_frames_rejected_and_the_shots_kept(run):
    """Dissolves and fades (the corpus edits): recorded in videos.parquet as gradual boundaries, every
    frame of them a `transition` rejection, and the face shots either side still give clips."""
    videos, rej, clips = run["videos"].set_index("video_id"), run["rejections"], run["clips"]
    edits = {v: g for v, g in run["gt"].items() if g.get("transitions")}
    assert len(edits) >= 3
    kept = total = 0
    for vid, g in edits.items():
        bounds = list(videos.loc[vid, "boundaries"])
        assert list(videos.loc[vid, "cut_frames"]) == g["cuts"]
        mine = rej[(rej.video_id == vid) & (rej.reason == "transition")]
        assert (mine["stage"] == "scenes").all()
        covered = {i for r in mine.itertuples() for i in range(r.start_frame, r.end_frame)}
        for t in g["transitions"]:
            assert sum(b["kind"] == "gradual" and b["start"] < t["end"] and t["start"] < b["end"] for b in bounds) == 1
            assert set(range(t["start"], t["end"])) <= covered, (vid, t)
        assert len(covered) <= sum(t["end"] - t["start"] + 2 * 3 + 2 for t in g["transitions"])   # margin 3, <= 1 off
        for sc in g["scenes"]:
            if len(sc["faces"]) == 1:
                total += sc["end"] - sc["start"]
                acc = clips[(clips.video_id == vid) & (clips.status == "accepted") & (clips.start_frame >= sc["start"])
                            & (clips.end_frame <= sc["end"])]
                kept += int((acc.end_frame - acc.start_frame).sum())
    assert kept >= 0.8 * total, (kept, total)


def test_blurred_stretches_are_rejected_by_the_offline_scorer(run):
    clips = run["clips"]
    blurred = [(v, iv) for v, g in run["gt"].items() for iv in g["blur"]]
    assert blurred
    for vid, (a, b) in blurred:
        mine = clips[(clips.video_id == vid) & (clips.start_frame < b) & (clips.end_frame > a)]
        assert len(mine) and (mine["status"] == "rejected").all() and (mine["reason"] == "low_quality").all()
        sharp = clips[(clips.video_id == vid) & ~((clips.start_frame < b) & (clips.end_frame > a))]
        assert (sharp["quality"] > mine["quality"].max()).all()


def test_accepted_face_ratios_lie_in_the_band(run):
    f = load_dag(DAG).faces
    acc = run["clips"][run["clips"]["status"] == "accepted"]
    eps = 1e-3      # a side is whole pixels
    assert acc["face_w_ratio"].between(f.face_w_band[0] - eps, f.face_w_band[1] + eps).all()
    assert acc["face_h_ratio"].between(f.face_h_band[0] - eps, f.face_h_band[1] + eps).all()
    for r in acc.itertuples():   # and by the ground truth's own face boxes (mesh extent), not only ours
        b = np.array([x for x in run["gt"][r.video_id]["face_box"][r.start_frame:r.end_frame]])
        assert f.face_w_band[0] - 0.05 <= np.median(b[:, 2] - b[:, 0]) / r.crop_size <= f.face_w_band[1] + 0.05, r
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        assert ((cx > r.crop_x0) & (cx < r.crop_x0 + r.crop_size) & (cy > r.crop_y0)
                & (cy < r.crop_y0 + r.crop_size)).all(), r


def test_no_accepted_clip_shows_a_face_like_non_face_or_a_turned_head(run):
    """0 accepted clips without a real frontal face: the drawn faces, the cat and the heads turned 60
    degrees are all rejected, each with a face reason, while the real faces beside them are kept."""
    clips = run["clips"]
    acc = clips[clips["status"] == "accepted"]
    for r in acc.itertuples():
        g = run["gt"][r.video_id]
        assert not _overlaps(r.start_frame, r.end_frame, g["lookalike"]), r
        assert not _overlaps(r.start_frame, r.end_frame, g["profile"]), r
        assert all(b is not None for b in g["face_box"][r.start_frame:r.end_frame]), r
        assert r.landmark_rate >= 0.9 and r.yaw_deg <= 45 and r.face_confidence >= 0.7 and r.flat_skin <= 0.12
    face_reasons = {"low_confidence", "no_landmarks", "profile", "drawn_face"}
    rej = clips[clips["status"] == "rejected"]
    for vid, kind in (("lookalikes_360p25", "lookalike"), ("turned_360p30", "profile")):
        for a, b in run["gt"][vid][kind]:
            mine = rej[(rej.video_id == vid) & (rej.start_frame < b) & (rej.end_frame > a)]
            assert len(mine) and set(mine["reason"]) <= face_reasons, (vid, a, b, mine["reason"].tolist())
    lk = rej[rej.video_id == "lookalikes_360p25"]
    assert {"drawn_face", "low_confidence"} <= set(lk["reason"])            # the drawings; the cat
    assert "profile" in set(rej.loc[rej.video_id == "turned_360p30", "reason"])
    for vid, scene in (("lookalikes_360p25", 1), ("turned_360p30", 1)):     # the real faces in between
        s = run["gt"][vid]["scenes"][scene]
        kept = acc[(acc.video_id == vid) & (acc.start_frame < s["end"]) & (acc.end_frame > s["start"])]
        assert (kept.end_frame - kept.start_frame).sum() >= 0.8 * (s["end"] - s["start"]), (vid, s)


def test_no_accepted_crop_pads_more_than_5_percent(run):
    clips, videos = run["clips"], run["videos"].set_index("video_id")
    acc = clips[clips["status"] == "accepted"]
    for r in acc.itertuples():
        w, h = videos.loc[r.video_id, ["width", "height"]]
        inside = (max(0, min(r.crop_x0 + r.crop_size, w) - max(r.crop_x0, 0))
                  * max(0, min(r.crop_y0 + r.crop_size, h) - max(r.crop_y0, 0)))
        assert 1 - inside / r.crop_size ** 2 == pytest.approx(r.pad_fraction, abs=1e-9), r
        assert r.pad_fraction <= 0.05, r
    padded = clips[clips.reason == "padding"]
    assert len(padded) and (padded["pad_fraction"] > 0.05).all()
    # no corpus video shows a picture-in-picture: none of its straight edges (brick joints, posters,
    # monitors, gravel) may be taken for one (tests/test_insets.py has the insets)
    assert "inset" not in set(clips.reason)


def test_tight_talking_heads_are_kept_with_a_side_inside_the_band(run):
    """Face ~half of a 1:1 frame: the paper's fixed 0.45 side would overhang the frame; a side inside
    the band fits it, so the clips are kept unpadded. Framed tighter than the band allows: rejected."""
    f = load_dag(DAG).faces
    g = run["gt"]["tight_512p25"]
    clips = run["clips"][run["clips"].video_id == "tight_512p25"]
    first, second = g["scenes"]
    kept = clips[(clips.status == "accepted") & (clips.start_frame < first["end"])]
    assert (kept.end_frame - kept.start_frame).sum() >= 0.8 * (first["end"] - first["start"])
    for r in kept.itertuples():
        assert r.crop_size <= 512 and r.pad_fraction == 0
        assert r.face_w_ratio * r.crop_size / f.face_w_ratio > 512 * 1.05       # the old rule would have padded
    late = clips[clips.start_frame >= second["start"]]
    assert len(late) and (late.status == "rejected").all() and set(late.reason) == {"padding"}


def test_rotated_video_is_curated_in_display_coordinates(run):
    v = run["videos"].set_index("video_id").loc["rotated_phone_30"]
    assert (v.width, v.height) == (360, 640) and v.rotation != 0
    acc = run["clips"][(run["clips"].video_id == "rotated_phone_30") & (run["clips"].status == "accepted")]
    assert len(acc) == 2
    for r in acc.itertuples():
        assert 0 <= r.crop_x0 and r.crop_x0 + r.crop_size <= 360 and 0 <= r.crop_y0 <= 640 - r.crop_size


def _frames(intervals) -> set[int]:
    return {i for a, b in intervals for i in range(a, b)}


def _accepted_frames(run, vid: str) -> set[int]:
    acc = run["clips"][(run["clips"].video_id == vid) & (run["clips"].status == "accepted")]
    return _frames(acc[["start_frame", "end_frame"]].values.tolist())


def test_every_frame_is_in_exactly_one_clip_or_rejection(run):
    videos = run["videos"][run["videos"].status != "failed"]
    assert len(videos) == len(run["gt"])
    for v in videos.itertuples():            # every frame of the file was decoded and accounted for
        assert v.num_frames == run["gt"][v.video_id]["num_frames"], v.video_id
    problems = frame_accounting_by_video(run["clips"].to_dict("records"), run["rejections"].to_dict("records"),
                                         videos.to_dict("records"))
    assert problems == {} and run["stats"]["frame_accounting"] == {}
    # and every clip says why it starts and ends
    assert (run["clips"]["start_split"] != "").all() and (run["clips"]["end_split"] != "").all()


def test_handheld_talking_heads_keep_their_time_and_the_camera_splits_nothing(run):
    """A phone selfie shaking 0.06-0.15 of the frame in 2 frames, and a handheld shot with a faint face
    on the wall: the one person's time is kept (>= 80%), and no split blames the camera."""
    for vid, scene in (("handheld_selfie_30", 0), ("handheld_poster_25", 0)):
        g = run["gt"][vid]
        sc = g["scenes"][scene]
        assert len(sc["faces"]) == 1
        person = set(range(sc["start"], sc["end"]))
        kept = len(_accepted_frames(run, vid) & person) / len(person)
        assert kept >= 0.8, (vid, kept)
        mine = run["clips"][run["clips"].video_id == vid]
        splits = set(mine["start_split"]) | set(mine["end_split"])
        assert not splits & {"jump", "scale", "identity", "no_face"}, (vid, splits)   # the face never "changed"
        rej = run["rejections"]
        multi = _frames(rej[(rej.video_id == vid) & (rej.reason == "multi_face")][["start_frame", "end_frame"]]
                        .values.tolist()) & person
        # the weak background face is not a second person (by area alone, 14% of the poster scene was
        # multi_face; 2% leaves room for a detector whose scores differ a little on another CPU)
        assert len(multi) <= 0.02 * len(person), (vid, sorted(multi))
    moves = np.array([b for b in run["gt"]["handheld_selfie_30"]["face_box"]])
    cx = (moves[:, 0] + moves[:, 2]) / 2 / run["gt"]["handheld_selfie_30"]["width"]
    assert (np.abs(cx[2:] - cx[:-2]) > 0.06).sum() >= 3      # (the ground truth really shakes that much)


def test_a_comparable_second_face_still_rejects_as_multi_face(run):
    g = run["gt"]["handheld_poster_25"]
    (a, b), = g["multi_face"]
    assert a > 0
    rej = run["rejections"]
    multi = _frames(rej[(rej.video_id == "handheld_poster_25") & (rej.reason == "multi_face")]
                    [["start_frame", "end_frame"]].values.tolist())
    assert len(multi & set(range(a, b))) >= 0.9 * (b - a)
    assert not _accepted_frames(run, "handheld_poster_25") & set(range(a, b))


def test_clip_times_come_from_frame_timestamps(run):
    """Variable frame rate (1/30 s and 1/15 s frames) and an AVI whose header says 50 fps for frames at
    25: clip and rejection times are the frames' real times, and fps is the measured rate."""
    videos = run["videos"].set_index("video_id")
    for vid in ("vfr_phone_60", "avi_header50_25"):
        g = run["gt"][vid]
        t = g["frame_times"] + [g["duration_s"]]
        v = videos.loc[vid]
        assert v.fps == pytest.approx(g["fps"], abs=0.01)
        assert v.duration_s == pytest.approx(g["duration_s"], abs=0.05)
        rows = pd.concat([run["clips"][run["clips"].video_id == vid], run["rejections"][run["rejections"].video_id == vid]])
        assert len(rows) >= 2
        for r in rows.itertuples():
            # timestamps are stored in 1/90000 s (MP4) or 1/50 s (AVI): 1 ms is far below a frame
            assert r.start_s == pytest.approx(t[r.start_frame], abs=1e-3), (vid, r)
            if r.end_frame < g["num_frames"]:
                assert r.end_s == pytest.approx(t[r.end_frame], abs=1e-3), (vid, r)
            else:   # the last frame lasts the mean interval
                assert r.end_s == pytest.approx(t[-2] + (t[-2] - t[0]) / (g["num_frames"] - 1), abs=1e-3)
    assert videos.loc["avi_header50_25"].header_fps == 50 and videos.loc["avi_header50_25"].fps == pytest.approx(25)
    vfr = run["clips"][run["clips"].video_id == "vfr_phone_60"]
    assert not np.allclose(vfr.start_s, vfr.start_frame / vfr.fps, atol=0.01)    # index / fps would be wrong


def test_crops_of_non_square_pixel_videos_are_square_on_screen(run, tmp_path):
    """Read the kept crop files (media.keep: accepted_clips, what shards are rebuilt from) of the SAR 16:11
    and 15:16 videos and measure the face's aspect (mesh extent) in them against the same crop of the
    renderer's own display-pixel frames: equal within 2.5% (ignoring the SAR would be off by 45% and 6.7%)."""
    from pipeline.curate.landmarks import FaceMesh478
    from pipeline.synth.corpus import _render, default_specs
    from pipeline.video_io import crop_square, iter_frames

    def aspect(img):
        lm = fm(img)
        return None if lm is None else np.ptp(lm[:, 0]) / np.ptp(lm[:, 1])

    videos = run["videos"].set_index("video_id")
    with FaceMesh478(static=True) as fm:
        for vid, sar in (("sar16x11_25", 16 / 11), ("sar15x16_30", 15 / 16)):
            g = run["gt"][vid]
            v = videos.loc[vid]
            assert v.sar == pytest.approx(sar) and (v.width, v.height) == (g["width"], g["height"])
            spec = next(s for s in default_specs() if s.name == vid)
            shown = [f for f, *_ in _render(spec, g["seed"])]        # what the video shows, in display pixels
            acc = run["clips"][(run["clips"].video_id == vid) & (run["clips"].status == "accepted")]
            assert len(acc) >= 1
            ratios = []
            for r in acc.to_dict("records"):
                assert r["resolution"] == round(r["crop_size"] / max(sar, 1.0))
                kept = list(iter_frames(run["root"] / r["clip_path"]))          # frame k = clip frame start + k
                assert len(kept) == r["end_frame"] - r["start_frame"]
                for k in np.linspace(0, len(kept) - 1, 8).round().astype(int):
                    img = kept[k][1]
                    a = aspect(img)
                    b = aspect(crop_square(shown[r["start_frame"] + k], r["crop_x0"], r["crop_y0"], r["crop_size"],
                                           img.shape[0]))
                    if a and b:
                        ratios.append(a / b)
            assert len(ratios) >= 6 and abs(np.mean(ratios) - 1) < 0.025, (vid, ratios)


def test_recall_of_clean_single_face_time(run):
    """Of all frames where the ground truth shows one sharp, large enough, real frontal face that a crop
    inside the face-ratio band can frame without padding, >= 90% are in accepted clips."""
    from pipeline.curate.faces import FacesConfig

    too_tight = FacesConfig().face_h_band[1]        # a face taller than this share of the frame must pad
    clean = kept = 0
    for vid, g in run["gt"].items():
        bad = _frames(g["no_face"]) | _frames(g["multi_face"]) | _frames(g["small_face"]) | _frames(g["blur"])
        bad |= _frames(g.get("lookalike", [])) | _frames(g.get("profile", []))
        bad |= _frames([(sc["start"], sc["end"]) for sc in g["scenes"] if sc["face_h"] > too_tight])
        good = set(range(g["num_frames"])) - bad
        clean += len(good)
        kept += len(_accepted_frames(run, vid) & good)
    assert clean > 1000 and kept / clean >= 0.9, (kept, clean)


def test_rerun_skips_finished_videos(run, _server):
    before = _server.hits()
    r = _cli("--data", run["root"], "--sources", run["dir"] / "sources.csv", "--dag", DAG, "--engine", "sequential")
    assert r.returncode == 0, r.stderr[-2000:]
    st = json.loads((run["root"] / "curate" / "stats.json").read_text())
    assert (st["processed"], st["skipped"]) == (0, len(run["gt"]) + 1)       # a 404 is final too
    assert _server.hits() == before                                   # nothing downloaded again
    assert pd.read_parquet(run["root"] / "curate" / "clips.parquet").equals(run["clips"])


def test_killed_run_resumes_to_the_same_clips(run, tmp_path):
    """Three of the corpus videos (time), killed after the first finishes, resumed: the same rows
    as the uninterrupted Ray run wrote for those videos."""
    root, sources = tmp_path / "data", tmp_path / "sources.csv"
    lines = (run["dir"] / "sources.csv").read_text().splitlines()
    sources.write_text("\n".join(lines[:4]) + "\n")
    ids = [ln.split(",")[1] for ln in lines[1:4]]
    cmd = [sys.executable, "-m", "pipeline.curate", "--data", str(root), "--sources", str(sources),
           "--dag", str(DAG), "--engine", "sequential"]
    p = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = root / "curate" / "state"
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not list(state.glob("*.json")):
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    done = len(list(state.glob("*.json")))
    assert 1 <= done < len(ids), done                                 # killed mid-way, after a video finished
    assert not (root / "curate" / "clips.parquet").exists()
    r = _cli("--data", root, "--sources", sources, "--dag", DAG, "--engine", "sequential")
    assert r.returncode == 0, r.stderr[-2000:]
    st = json.loads((root / "curate" / "stats.json").read_text())
    assert st["skipped"] == done and st["processed"] == len(ids) - done
    want = run["clips"][run["clips"]["video_id"].isin(ids)].reset_index(drop=True)
    assert len(want) >= 3
    pd.testing.assert_frame_equal(pd.read_parquet(root / "curate" / "clips.parquet"), want)


# ---------------------------------------------------------------- bad input

def _write_bad_media(d: Path, good: Path) -> None:
    import cv2
    from skimage.data import astronaut

    from pipeline.video_io import write_mp4

    shutil.copy(good, d / "good.mp4")
    data = bytearray(good.read_bytes())
    data[: len(data) // 2] = bytes(len(data) // 2)                  # container header wiped
    (d / "corrupt.mp4").write_bytes(bytes(data))
    data = bytearray(good.read_bytes())
    mid = len(data) // 3
    data[mid: mid + len(data) // 3] = np.random.default_rng(0).integers(0, 256, len(data) // 3, np.uint8).tobytes()
    (d / "damaged.mp4").write_bytes(bytes(data))                     # frames garbled, container intact
    write_mp4(d / "noface.mp4", [np.full((240, 320, 3), 40 + i, np.uint8) for i in range(40)], 25)
    face = cv2.resize(astronaut()[30:250, 110:330], (1600, 1600))
    big = np.full((2160, 3840, 3), 60, np.uint8)
    big[280:1880, 1120:2720] = face
    write_mp4(d / "big4k.mp4", [big] * 6, 25)


@pytest.fixture(scope="module")
def bad(corpus_dir, tmp_path_factory):
    from pipeline.curate.runner import curate
    from pipeline.paths import DataRoot
    from pipeline.synth.server import SourceServer

    media = tmp_path_factory.mktemp("badmedia")
    _write_bad_media(media, corpus_dir / "talk_360p30.mp4")
    work = tmp_path_factory.mktemp("badrun")
    root = DataRoot.of(work / "data")
    cfg = load_dag(DAG)
    cfg.download.params.update(max_attempts=2, backoff_base_s=0.05, socket_timeout_s=1.0)
    with SourceServer(media) as srv:
        items = {
            "http_404": srv.url("good", fault="404"), "http_429_once": srv.url("good", fault="429-1"),
            "http_500": srv.url("good", fault="500"), "truncated": srv.url("good", fault="truncate"),
            "slow": srv.url("good", fault="slow"), "not_video": srv.url("good", fault="notvideo"),
            "empty": srv.url("good", fault="empty"), "corrupt": srv.url("corrupt"),
            "damaged": srv.url("damaged"), "noface": srv.url("noface"), "big4k": srv.url("big4k"),
            "../../escape": srv.url("good"), "a;rm -rf ~;`id`$(x)|&>": srv.url("good", "page"),
            "long" * 120: srv.url("good"), "file_url": "file:///etc/passwd",
            "dotdot_url": srv.base_url + "/v/../../../../etc/passwd",
        }
        sources = [{"video_id": k, "url": u, "opted_out": False} for k, u in items.items()]
        opted = srv.url("big4k", "page")      # a path no other item asks for
        sources.append({"video_id": "opted", "url": opted, "opted_out": True})
        stats = curate(root, sources, cfg, engine="sequential", log=lambda m: None)
        hits_optout = srv.hits(opted)
        rerun = curate(root, sources, cfg, engine="sequential", log=lambda m: None)
    videos = pd.read_parquet(root.path("curate", "videos.parquet")).set_index("video_id")
    return {"work": work, "root": root, "stats": stats, "rerun": rerun, "videos": videos,
            "hits_optout": hits_optout}


def _row(bad, vid):
    return bad["videos"].loc[vid]


@pytest.mark.parametrize("vid,status,cls,words", [
    ("http_404", "failed", "permanent", "404"),
    ("http_500", "failed", "transient", "500"),
    ("truncated", "failed", "transient", ""),
    ("slow", "failed", "transient", "timed out"),
    ("not_video", "failed", "permanent", "not a video"),
    ("empty", "failed", "permanent", ""),
    ("corrupt", "failed", "permanent", "not a video"),
    ("file_url", "failed", "permanent", "scheme"),
])
def test_bad_download_is_a_recorded_status(bad, vid, status, cls, words):
    r = _row(bad, vid)
    assert (r.status, r.error_class) == (status, cls)
    assert r.message and "\n" not in r.message and words.lower() in r.message.lower()
    assert r.attempts == (2 if cls == "transient" and vid != "file_url" else (1 if vid != "file_url" else 0))


SAME_FILE = ("http_429_once", "../../escape", "a;rm -rf ~;`id`$(x)|&>", "long" * 120)   # all serve "good"


def test_retry_after_429_succeeds(bad):
    r = _row(bad, "http_429_once")
    assert r.attempts == 2 and r.status in ("ok", "no_clips") and r.num_frames > 0   # downloaded and curated
    assert r.accepted >= 1 or "duplicate" in r.message


def test_one_file_under_four_ids_is_accepted_once_the_rest_are_duplicates(bad):
    rows = [_row(bad, v) for v in SAME_FILE]
    assert sum(r.accepted > 0 for r in rows) == 1
    assert all("duplicate" in r.message for r in rows if r.accepted == 0)


def test_damaged_noface_and_4k_videos_end_with_a_status(bad):
    dmg = _row(bad, "damaged")      # garbled frames: curated as far as they decode, or refused, never a crash
    assert dmg.status in ("ok", "no_clips", "bad_media") and (dmg.status != "bad_media" or dmg.message)
    nf = _row(bad, "noface")
    assert nf.status == "no_clips" and "no_face" in nf.message and nf.num_frames == 40
    big = _row(bad, "big4k")
    assert (big.width, big.height, big.num_frames) == (3840, 2160, 6) and big.status == "no_clips"
    assert "too_short" in big.message                      # the face was found; 6 frames are too short a clip


def test_hostile_ids_and_urls_stay_inside_the_data_root(bad):
    for vid in ("../../escape", "a;rm -rf ~;`id`$(x)|&>", "long" * 120):
        # curated like any other video, under a safe name (one copy of the shared file keeps its clips)
        assert _row(bad, vid).status in ("ok", "no_clips") and _row(bad, vid).num_frames > 0, vid
        assert (bad["root"].root / _row(bad, vid).media_path).resolve().is_relative_to(bad["root"].root)
    assert _row(bad, "dotdot_url").status == "failed"
    outside = [p for p in bad["work"].rglob("*") if not p.resolve().is_relative_to(bad["root"].root)
               and p != bad["root"].root]
    assert outside == [], outside
    names = [p.name for p in bad["root"].path("curate", "state").iterdir()]
    assert all(len(n) <= 90 and "/" not in n and ";" not in n for n in names) and len(names) == 17


def test_optout_is_never_requested_and_transient_failures_retry_on_rerun(bad):
    assert _row(bad, "opted").status == "skipped_optout" and bad["hits_optout"] == 0
    transient = (bad["videos"]["error_class"] == "transient").sum()
    assert transient == 3 and bad["rerun"]["processed"] == transient     # only those are tried again
    assert bad["stats"]["videos"] == 17 and sum(bad["stats"]["video_status"].values()) == 17


def test_malformed_sources_csv_is_one_clear_line_and_writes_nothing(tmp_path):
    (tmp_path / "sources.csv").write_text("url,video_id,license,note\nhttp://a/x.mp4,a,cc,\nnot a url,b,cc,\n")
    r = _cli("--data", tmp_path / "data", "--sources", tmp_path / "sources.csv", "--dag", DAG, timeout=120)
    assert r.returncode == 2 and "row 3" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()
    (tmp_path / "bad.yaml").write_text("stages:\n  - name: faces\n    params: {strid: 2}\n")
    r = _cli("--data", tmp_path / "data", "--sources", tmp_path / "sources.csv", "--dag", tmp_path / "bad.yaml")
    assert r.returncode == 2 and "strid" in r.stderr
    # face model files that cannot be loaded: one line before the run, not an error per video
    (tmp_path / "sources.csv").write_text("url,video_id,license,note\nhttp://a/x.mp4,a,cc,\n")
    models = tmp_path / "insightface"
    models.mkdir()
    (models / "det_10g.onnx").write_bytes(b"not an onnx model")
    (models / "w600k_r50.onnx").write_bytes(b"not an onnx model")
    (tmp_path / "if.yaml").write_text(f"stages:\n  - name: faces\n    params: {{backend: insightface, model_dir: '{models}'}}\n")
    r = _cli("--data", tmp_path / "data", "--sources", tmp_path / "sources.csv", "--dag", tmp_path / "if.yaml",
             "--engine", "sequential")
    assert r.returncode == 2 and "det_10g.onnx" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()
