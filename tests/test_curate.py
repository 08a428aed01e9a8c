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
    assert "accepted clips" in run["stdout"] and "[9/9]" in run["stderr"]        # summary + progress
    assert len(list((run["root"] / "curate" / "state").glob("*.json"))) == len(run["gt"]) + 1
    for r in clips.itertuples():
        # media.keep: accepted_clips (the DAG's default): each accepted clip's own file, no download left
        assert not (run["root"] / r.media_path).exists() and (r.clip_path != "") == (r.status == "accepted")
        assert r.status != "accepted" or (run["root"] / r.clip_path).is_file()
        assert r.end_frame > r.start_frame and r.end_s == pytest.approx(r.end_frame / r.fps)
    rej = clips[clips["status"] == "rejected"]
    assert (rej["reason"] != "").all() and (clips.loc[clips["status"] == "accepted", "reason"] == "").all()


def test_a_clean_ray_run_prints_only_its_own_lines(run):
    """Ray's deprecation/token/progress chatter, its core worker's E line and MediaPipe's TFLite/absl
    start-up lines are silenced where they are written: stderr holds our progress lines (and the
    one-line account of the dead link), nothing else."""
    from pipeline.quiet import is_native_noise

    lines = [ln for ln in run["stderr"].splitlines() if ln.strip()]
    assert not [ln for ln in lines if is_native_noise(ln)]
    foreign = [ln for ln in lines if not ln.startswith("curate: ")]
    assert not foreign, foreign[:10]
    assert len(lines) <= len(run["gt"]) + 6


def test_scene_cuts_match_ground_truth_within_one_frame(run):
    tp = fp = fn = 0
    for v in run["videos"][run["videos"].status == "ok"].itertuples():
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
        for kind in ("no_face", "multi_face", "small_face"):
            assert not _overlaps(r.start_frame, r.end_frame, g[kind]), (kind, r)
        assert all(b is not None for b in g["face_box"][r.start_frame:r.end_frame])
    rej = run["rejections"]
    # the faceless and the multi-face stretches are rejected with their reason (small faces are below
    # the short-range detector's reach: they are rejected as faceless)
    assert _overlaps(*run["gt"]["cuts_360p25"]["no_face"][0], rej.loc[rej.reason == "no_face", ["start_frame", "end_frame"]].values.tolist())
    assert _overlaps(*run["gt"]["multi_360p24"]["multi_face"][0], rej.loc[rej.reason == "multi_face", ["start_frame", "end_frame"]].values.tolist())


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
    f = load_dag(DAG).filters
    acc = run["clips"][run["clips"]["status"] == "accepted"]
    assert acc["face_w_ratio"].between(*f.face_w_ratio).all() and acc["face_h_ratio"].between(*f.face_h_ratio).all()
    for r in acc.itertuples():   # and by the ground truth's own face boxes (mesh extent), not only ours
        b = np.array([x for x in run["gt"][r.video_id]["face_box"][r.start_frame:r.end_frame]])
        assert f.face_w_ratio[0] <= np.median(b[:, 2] - b[:, 0]) / r.crop_size <= f.face_w_ratio[1], r
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        assert ((cx > r.crop_x0) & (cx < r.crop_x0 + r.crop_size) & (cy > r.crop_y0)
                & (cy < r.crop_y0 + r.crop_size)).all(), r


def test_rotated_video_is_curated_in_display_coordinates(run):
    v = run["videos"].set_index("video_id").loc["rotated_phone_30"]
    assert (v.width, v.height) == (360, 640) and v.rotation != 0
    acc = run["clips"][(run["clips"].video_id == "rotated_phone_30") & (run["clips"].status == "accepted")]
    assert len(acc) == 2
    for r in acc.itertuples():
        assert 0 <= r.crop_x0 and r.crop_x0 + r.crop_size <= 360 and 0 <= r.crop_y0 <= 640 - r.crop_size


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


def test_retry_after_429_succeeds(bad):
    r = _row(bad, "http_429_once")
    assert (r.status, r.attempts) == ("ok", 2) and r.accepted >= 1


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
        assert _row(bad, vid).status == "ok", vid         # curated like any other video, under a safe name
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
