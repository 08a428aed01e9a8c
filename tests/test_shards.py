"""Shard writer: contents vs manifest, stock readers, determinism, incremental, Ray path, bad input, kills.

The world: three small videos made from skimage's astronaut (a real face, moving), a hand-written
clips.parquet (schema pipeline.schema.CLIPS), tiny models of the real classes saved locally.
One sequential run is made once per session and copied by tests that mutate it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.ids import clip_id
from pipeline.schema import CLIPS, SHARD_MEMBERS

SIZE, MAX_FRAMES, SPS = 64, 5, 2
# (video name, [(start, end)...]); packed in (video, start) order with 2 per shard: A1 B1 | B2 C1 | C2
VIDEOS = {"vidA": [(0, 10)], "vidB": [(0, 10), (12, 22)], "vidC": [(2, 12), (14, 24)]}


def _frames(seed: int, n: int = 24):
    import cv2
    from skimage.data import astronaut

    img = cv2.resize(astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    if seed % 2:
        img = img[:, ::-1]
    out = []
    for k in range(n):   # slow drift + slight zoom: the face really moves between frames
        dx, s = 3 * np.sin(k / 5 + seed), 1 + 0.02 * np.sin(k / 7)
        m = np.float32([[s, 0, dx + (1 - s) * 128], [0, s, (1 - s) * 128]])
        out.append(cv2.warpAffine(img, m, (256, 256), borderMode=cv2.BORDER_REFLECT101)[16:208, 0:256])
    return out   # 192 x 256 frames


def build_world(root, models_dir):
    """Write media, sources.csv, empty optout.csv and clips.parquet under root; returns config kwargs."""
    from pipeline.curate.landmarks import FaceMesh478
    from pipeline.paths import safe_name
    from pipeline.shards.model_sets import build_tiny_models
    from pipeline.video_io import write_mp4

    if not (models_dir / "models.json").exists():
        build_tiny_models(models_dir, seed=0, sample_size=SIZE)
    rows, src = [], ["url,video_id,license,note"]
    for n, (name, spans) in enumerate(VIDEOS.items()):
        url = f"http://127.0.0.1:9/{name}.mp4"
        vid = name   # explicit ids (as sources.csv allows) keep the packing order A1 B1 | B2 C1 | C2
        frames = _frames(n)
        media = f"media/{safe_name(vid)}.mp4"
        write_mp4(root / media, frames, fps=24.0)
        with FaceMesh478() as mesh:
            lm = mesh(frames[0])
        xs, ys = lm[:, 0] * 256, lm[:, 1] * 192
        side = int((xs.max() - xs.min()) / 0.45)
        x0, y0 = int((xs.min() + xs.max()) / 2 - side / 2), int((ys.min() + ys.max()) / 2 - side / 2)
        src.append(f"{url},{vid},cc-by,test")
        for s, e in spans:
            rows.append({"clip_id": clip_id(vid, s, e), "video_id": vid, "url": url, "media_path": media,
                         "start_frame": s, "end_frame": e, "start_s": s / 24, "end_s": e / 24,
                         "duration_s": (e - s) / 24, "fps": 24.0, "crop_x0": x0, "crop_y0": y0, "crop_size": side,
                         "face_w_ratio": 0.45, "face_h_ratio": 0.53, "quality": 50.0, "quality_scorer": "test",
                         "resolution": side, "status": "accepted", "reason": ""})
    rows.append({**rows[0], "clip_id": clip_id(rows[0]["video_id"], 20, 24), "start_frame": 20, "end_frame": 24,
                 "status": "rejected", "reason": "too short"})
    write_clips(root, rows)
    (root / "manifests").mkdir(parents=True, exist_ok=True)
    (root / "manifests" / "sources.csv").write_text("\n".join(src) + "\n")
    (root / "manifests" / "optout.csv").write_text("video_id_or_url,date,reason\n")


def write_clips(root, rows):
    (root / "curate").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=CLIPS), root / "curate" / "clips.parquet")


def read_clips(root):
    return pq.read_table(root / "curate" / "clips.parquet").to_pylist()


def make_cfg(root, models_dir, runner="sequential", manifests=False):
    """Shard tests run without manifests (no opt-out step); test_optout passes manifests=True."""
    from pipeline.shards.config import ShardsConfig

    m = root / "manifests"
    cfg = ShardsConfig(runner=runner, models=str(models_dir), samples_per_shard=SPS,
                       sources=str(m / "sources.csv") if manifests else "",
                       optout=str(m / "optout.csv") if manifests else "")
    cfg.encoder.size, cfg.encoder.max_frames, cfg.encoder.batch_frames = SIZE, MAX_FRAMES, 8
    cfg.encode_cpus, cfg.decode_cpus, cfg.max_actors = 0.5, 0.25, 1
    return cfg


def shard_hashes(root):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / "shards").glob("*.tar"))}


def snapshot(root):
    """(name -> (mtime_ns, sha256)) of shards, index and table: 'writes nothing' means this is unchanged."""
    s = root / "shards"
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(s.glob("*.tar")) + [s / "index.json", s / "shards.parquet"]}


def base_world(tmp_path_factory):
    """One built + sharded world per session; tests copy it before changing anything."""
    from pipeline.shards.build import run

    base = tmp_path_factory.getbasetemp() / "shards-world"
    models = tmp_path_factory.getbasetemp() / "tiny-models"
    if not (base / "done").exists():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir()
        build_world(base, models)
        stats = run(base, make_cfg(base, models), log=lambda m: None)
        (base / "stats0.json").write_text(json.dumps(stats, default=str))
        (base / "done").write_text("ok")
    return base, models


def copy_world(tmp_path_factory, tmp_path):
    base, models = base_world(tmp_path_factory)
    dst = tmp_path / "data"
    shutil.copytree(base, dst)
    return dst, models


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return base_world(tmp_path_factory)


# ---------------------------------------------------------------- tests

def test_shards_match_manifest(world):
    from pipeline.curate.landmarks import FaceMesh478
    from pipeline.shards.config import EncoderConfig
    from pipeline.shards.decode import decode_clip, pick_indices
    from pipeline.shards.io import read_samples

    root, _ = world
    accepted = [r for r in read_clips(root) if r["status"] == "accepted"]
    index = json.loads((root / "shards" / "index.json").read_text())
    # 5 clips, 2 per shard -> 3 shards; index figures are those of the files
    assert [s["nsamples"] for s in index["shards"]] == [2, 2, 1]
    for s in index["shards"]:
        data = (root / "shards" / s["name"]).read_bytes()
        assert s["bytes"] == len(data) and s["sha256"] == hashlib.sha256(data).hexdigest()
    table = pq.read_table(root / "shards" / "shards.parquet").to_pandas()
    assert sorted(table["clip_id"]) == sorted(r["clip_id"] for r in accepted)
    by_id = {r["clip_id"]: r for r in accepted}
    cfg = EncoderConfig(size=SIZE, max_frames=MAX_FRAMES)
    mesh = FaceMesh478(static=True)
    n_ok = 0
    for s in index["shards"]:
        for key, members in read_samples(root / "shards" / s["name"]):
            assert table.set_index("clip_id").loc[key, "shard"] == s["name"]
            assert [m for m, _ in members] == list(SHARD_MEMBERS)
            import io

            arr = {m[:-4]: np.load(io.BytesIO(b), allow_pickle=False) for m, b in members if m.endswith(".npy")}
            meta = json.loads(dict(members)["meta.json"])
            row = by_id[key]
            want_idx = pick_indices(row["start_frame"], row["end_frame"], 1, MAX_FRAMES)
            T = len(want_idx)
            assert np.array_equal(arr["frame_index"], want_idx) and arr["frame_index"].dtype == np.int64
            assert np.allclose(arr["time_s"], (want_idx - row["start_frame"]) / 24.0) and arr["time_s"].dtype == np.float32
            assert arr["latent_mean"].shape == arr["latent_std"].shape == (T, 4, SIZE // 8, SIZE // 8)
            assert arr["latent_mean"].dtype == arr["latent_std"].dtype == np.float16
            assert (arr["latent_std"] > 0).all()
            assert arr["clip_emb"].shape == (T, 32) and arr["clip_emb"].dtype == np.float16
            assert np.allclose(np.linalg.norm(arr["clip_emb"].astype(np.float32), axis=1), 1, atol=2e-3)
            assert arr["landmarks"].shape == (T, 478, 3) and arr["landmarks"].dtype == np.float32
            assert arr["landmarks_ok"].dtype == np.bool_
            assert meta["clip_id"] == key and meta["video_id"] == row["video_id"] and meta["origin"] == "video"
            assert meta["size"] == SIZE and meta["clip_dim"] == 32 and meta["vae_scaling_factor"] == 0.18215
            assert meta["vae"].startswith("tiny-AutoencoderKL")
            # landmarks: a direct FaceMesh478 call on the same decoded frames
            frames, _, _ = decode_clip(row, root / row["media_path"], cfg)
            direct, ok = mesh.batch(frames)
            assert np.array_equal(ok, arr["landmarks_ok"])
            assert np.allclose(direct[ok], arr["landmarks"][ok], atol=1e-3)
            assert np.isnan(arr["landmarks"][~ok]).all()
            n_ok += int(ok.sum())
    mesh.close()
    assert n_ok >= 20   # the face is really found on (nearly) every frame


def test_stock_webdataset_and_tar_read_shards(world):
    import webdataset as wds

    root, _ = world
    urls = [str(p) for p in sorted((root / "shards").glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(samples) == 5
    for s in samples:
        assert isinstance(s["latent_mean.npy"], np.ndarray) and s["latent_mean.npy"].dtype == np.float16
        assert s["landmarks.npy"].shape[1:] == (478, 3)
        assert s["meta.json"]["clip_id"] == s["__key__"]
    listing = subprocess.run(["tar", "-tvf", urls[0]], capture_output=True, text=True, check=True).stdout.split("\n")
    names = [line.split()[-1] for line in listing if line.strip()]
    assert len(names) == 2 * len(SHARD_MEMBERS)
    assert all(n.split(".", 1)[1] in SHARD_MEMBERS for n in names)
    with tarfile.open(urls[0]) as tf:   # only regular files, normalised headers
        assert all(m.isfile() and m.mtime == 0 and m.uid == 0 and m.uname == "" for m in tf.getmembers())


def test_rerun_writes_nothing_then_new_clips_go_to_new_shards(tmp_path_factory, tmp_path):
    from pipeline.shards.build import run

    root, models = copy_world(tmp_path_factory, tmp_path)
    before = snapshot(root)
    stats = run(root, make_cfg(root, models), log=lambda m: None)
    assert stats["clips_pending"] == 0 and stats["shards_written"] == []
    assert snapshot(root) == before
    # a new accepted clip: a new shard, existing shards untouched
    rows = read_clips(root)
    new = {**rows[0], "clip_id": clip_id(rows[0]["video_id"], 12, 20), "start_frame": 12, "end_frame": 20}
    write_clips(root, rows + [new])
    stats = run(root, make_cfg(root, models), log=lambda m: None)
    after = snapshot(root)
    assert [w["name"] for w in stats["shards_written"]] == ["faces-000003.tar"]
    for name in ("faces-000000.tar", "faces-000001.tar", "faces-000002.tar"):
        assert after[name] == before[name]
    assert stats["encoded"] == 1 and stats["samples_total"] == 6


def test_clip_without_face_landmarks_is_dropped_and_counted(tmp_path_factory, tmp_path):
    """An accepted clip whose crop shows no face (the astronaut's flag and suit, bottom left) is encoded,
    found to have landmarks on none of its frames, and never written; the run says so."""
    from pipeline.shards.build import run, summary
    from pipeline.shards.io import read_samples

    root, models = copy_world(tmp_path_factory, tmp_path)
    rows = read_clips(root)
    faceless = {**rows[0], "clip_id": clip_id(rows[0]["video_id"], 11, 21), "start_frame": 11, "end_frame": 21,
                "crop_x0": 0, "crop_y0": 110, "crop_size": 80}
    faced = {**rows[0], "clip_id": clip_id(rows[0]["video_id"], 12, 20), "start_frame": 12, "end_frame": 20}
    write_clips(root, rows + [faceless, faced])
    logs = []
    stats = run(root, make_cfg(root, models), log=logs.append)
    assert stats["encoded"] == 2                                          # both encoded (cached) ...
    assert [d["clip_id"] for d in stats["dropped_landmarks"]] == [faceless["clip_id"]]   # ... one not written
    assert stats["dropped_landmarks"][0]["landmark_rate"] < 0.9
    assert stats["samples_total"] == 6 and [w["nsamples"] for w in stats["shards_written"]] == [1]
    keys = {k for p in sorted((root / "shards").glob("*.tar")) for k, _ in read_samples(p)}
    assert faced["clip_id"] in keys and faceless["clip_id"] not in keys
    table = pq.read_table(root / "shards" / "shards.parquet").to_pandas()
    assert faceless["clip_id"] not in set(table["clip_id"])
    assert "dropped 1 clips with face landmarks on fewer than 90% of their frames" in summary(stats)
    assert any("dropped 1 clips" in m for m in logs)
    # every clip that was written has landmarks on >= 90% of its stored frames
    for p in sorted((root / "shards").glob("*.tar")):
        import io

        for key, members in read_samples(p, suffixes={"landmarks_ok.npy"}):
            assert np.load(io.BytesIO(dict(members)["landmarks_ok.npy"])).mean() >= 0.9, key
    # the next run checks it again from its cache, drops it again, writes nothing
    again = run(root, make_cfg(root, models), log=lambda m: None)
    assert again["cache_hits"] == 1 and len(again["dropped_landmarks"]) == 1 and again["shards_written"] == []


def test_deterministic_bytes_for_same_input(world, tmp_path):
    from pipeline.shards.build import run

    root, models = world
    other = tmp_path / "again"
    other.mkdir()
    build_world(other, models)
    run(other, make_cfg(other, models), log=lambda m: None)
    assert shard_hashes(other) == shard_hashes(root)
    assert (other / "shards" / "index.json").read_bytes() == (root / "shards" / "index.json").read_bytes()


def test_ray_actor_pool_path(world, tmp_path):
    import ray

    from pipeline.shards.build import run
    from pipeline.shards.io import read_samples

    root, models = world
    other = tmp_path / "ray"
    other.mkdir()
    build_world(other, models)
    logs = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        stats = run(other, make_cfg(other, models, runner="ray"), log=logs.append)
    finally:
        ray.shutdown()
    assert stats["runner"] == "ray" and stats["encoded"] == 5 and stats["failed"] == []
    assert stats["frames_encoded"] == 5 * MAX_FRAMES and 0 < stats["model_s"]   # actors report model time
    assert any("encoding 5 clips (ray" in m for m in logs)
    for name in shard_hashes(root):
        seq = dict(read_samples(root / "shards" / name))
        via_ray = dict(read_samples(other / "shards" / name))
        assert seq.keys() == via_ray.keys()
        for key in seq:
            a, b = dict(seq[key]), dict(via_ray[key])
            assert a["meta.json"] == b["meta.json"] and a["frame_index.npy"] == b["frame_index.npy"]
            import io

            la, lb = (np.load(io.BytesIO(x["latent_mean.npy"])).astype(np.float32) for x in (a, b))
            assert np.allclose(la, lb, atol=1e-2)   # thread counts may differ: fp16 rounding only
            ma, mb = (np.load(io.BytesIO(x["landmarks.npy"])) for x in (a, b))
            assert np.allclose(ma, mb, atol=1e-3, equal_nan=True)


def test_missing_and_corrupt_media_are_recorded_and_skipped(tmp_path_factory, tmp_path):
    from pipeline.shards.build import run

    root, models = copy_world(tmp_path_factory, tmp_path)
    rows = read_clips(root)
    (root / "media" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    bad = [{**rows[0], "clip_id": "0" * 16, "video_id": rows[0]["video_id"], "media_path": "media/missing.mp4"},
           {**rows[0], "clip_id": "1" * 16, "media_path": "media/broken.mp4"},
           {**rows[0], "clip_id": "2" * 16, "media_path": "../../etc/passwd"}]
    good = {**rows[0], "clip_id": clip_id(rows[0]["video_id"], 3, 9), "start_frame": 3, "end_frame": 9}
    write_clips(root, rows + bad + [good])
    stats = run(root, make_cfg(root, models), log=lambda m: None)
    failed = {f["clip_id"]: f["reason"] for f in stats["failed"]}
    assert set(failed) == {"0" * 16, "1" * 16, "2" * 16}
    assert "no such file" in failed["0" * 16] and "not a video" in failed["1" * 16]
    assert "escapes the data root" in failed["2" * 16]
    assert stats["encoded"] == 1 and stats["samples_total"] == 6   # the good clip went on
    on_disk = json.loads((root / "shards" / "stats.json").read_text())
    assert {f["clip_id"] for f in on_disk["failed"]} == set(failed)


def test_kill_between_write_and_rename_leaves_no_partial_shard(tmp_path_factory, tmp_path, monkeypatch):
    from pipeline import paths
    from pipeline.shards.build import run

    root, models = copy_world(tmp_path_factory, tmp_path)
    clean = shard_hashes(root)
    for p in (root / "shards").glob("*.tar"):   # start over from the cached features
        p.unlink()
    (root / "shards" / "index.json").unlink()
    (root / "shards" / "shards.parquet").unlink()

    calls = {"n": 0}
    real = paths.os.replace

    def dies_on_second(tmp, final):   # the rename that publishes a shard; other renames go through
        if str(final).endswith(".tar"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt("killed")   # like SIGINT mid-run; the tmp file stays behind
        real(tmp, final)

    monkeypatch.setattr(paths.os, "replace", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        run(root, make_cfg(root, models), log=lambda m: None)
    visible = sorted(p.name for p in (root / "shards").glob("*.tar"))
    assert visible == ["faces-000000.tar"]   # the finished one only, never a partial
    assert list((root / "shards").glob(".faces-000001.tar.tmp-*"))
    assert [s["name"] for s in json.loads((root / "shards" / "index.json").read_text())["shards"]] == visible
    monkeypatch.setattr(paths.os, "replace", real)
    stats = run(root, make_cfg(root, models), log=lambda m: None)
    assert stats["encoded"] == 0 and stats["cache_hits"] == 3   # resumed from the feature cache
    assert shard_hashes(root) == clean
    assert not list((root / "shards").glob(".*tmp*"))


def test_cli_help_and_bad_dag_key(world, tmp_path):
    import sys

    out = subprocess.run([sys.executable, "-m", "pipeline.shards", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--models" in out.stdout
    root, models = world
    other = tmp_path / "cli"
    shutil.copytree(root, other)
    dag = tmp_path / "bad.yaml"
    dag.write_text("name: faces\nstages:\n  encode:\n    batch_frame: 3\n")
    bad = subprocess.run([sys.executable, "-m", "pipeline.shards", "--data", str(other), "--dag", str(dag)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown key encode.batch_frame" in bad.stderr


def test_models_tiny_builds_fits_and_records_them(tmp_path_factory, tmp_path):
    from pipeline.shards.build import run
    from pipeline.shards.config import InputProblem
    from pipeline.shards.model_sets import build_tiny_models

    root, models = copy_world(tmp_path_factory, tmp_path)
    # new clips with other models into the existing shards: refused, nothing written
    rows = read_clips(root)
    write_clips(root, rows + [{**rows[0], "clip_id": clip_id(rows[0]["video_id"], 11, 19), "start_frame": 11,
                               "end_frame": 19}])
    snap = snapshot(root)
    other = build_tiny_models(tmp_path / "other-models", seed=1, sample_size=SIZE)
    with pytest.raises(InputProblem, match="were built with"):
        run(root, make_cfg(root, other), log=lambda m: None)
    assert snapshot(root) == snap
    cfg = make_cfg(root, models)
    cfg.models, cfg.tiny_fit_steps, cfg.tiny_fit_frames = "tiny", 2, 8
    # a fresh shard dir: tiny models are built under <data>/models/tiny, fitted on the clips' crops, recorded
    shutil.rmtree(root / "shards")
    logs = []
    stats = run(root, cfg, log=logs.append)
    info = json.loads((root / "models" / "tiny" / "models.json").read_text())
    assert info["fitted"] and info["fit_steps"] == 2 and info["fit_frames"] == 8
    # the fit is estimated from its timed steps and reports its rate through the run's log
    assert any(m.startswith(f"fit_vae ({SIZE} px): ") and "steps/s" in m for m in logs), logs
    assert any("step 2/2" in m and "done in" in m for m in logs), logs
    assert stats["encoded"] == 6
    index = json.loads((root / "shards" / "index.json").read_text())
    assert index["encoder"]["vae"] == info["vae"] and info["vae"].endswith("+fit2")
    import webdataset as wds

    first = next(iter(wds.WebDataset(str(root / "shards" / "faces-000000.tar"), shardshuffle=False).decode()))
    assert first["meta.json"]["vae"] == info["vae"] and first["meta.json"]["clip_model"] == info["clip"]


def test_recover_drops_temp_and_unindexed_shards_only(tmp_path):
    from pipeline.shards import io as shardio

    samples = [("k1", [("meta.json", b"{}")])]
    a = shardio.write_shard(tmp_path / "faces-000000.tar", samples)
    shardio.write_shard(tmp_path / "faces-000001.tar", samples)      # renamed, but the run died before indexing
    (tmp_path / ".faces-000002.tar.tmp-123").write_bytes(b"half")    # died before the rename
    index = {"shards": [a]}
    assert shardio.recover(tmp_path, index) == [".faces-000002.tar.tmp-123", "faces-000001.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces-000000.tar"]
    assert shardio.sha256_file(tmp_path / "faces-000000.tar") == a["sha256"]
