"""The data root on object storage, against a real S3-protocol server on 127.0.0.1 (moto's S3 behind
werkzeug, started and stopped here): curate -> shards -> train -> opt-out -> verify on s3://, checked
with the ordinary clients (boto3 listings, pyarrow's own S3FileSystem, stock webdataset over fsspec);
the server killed mid-run and a re-run giving the same tables; media retention; DataRoot's methods
behaving alike on a local disk and on S3."""
from __future__ import annotations

import itertools
import json
import os

import pandas as pd
import pytest

from pipeline.paths import DataRoot

VIDEOS = ("talk_360p30", "audio_480p30")     # two scenes (two identities) and one scene: three clips
DAG = "dags/curate.yaml"
_bucket_no = itertools.count()


@pytest.fixture(scope="module")
def s3():
    from pipeline.synth.s3server import LoopbackS3

    srv = LoopbackS3().start()
    # every client here and in subprocesses finds the server through the standard variables; one retry
    # keeps a dead server's errors quick (botocore's default backs off for seconds)
    env = {**srv.env(), "AWS_MAX_ATTEMPTS": "2"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield srv
    srv.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def new_bucket(s3, stem: str) -> str:
    name = f"{stem}-{os.getpid()}-{next(_bucket_no)}"
    s3.make_bucket(name)
    return name


def boto(s3):
    import boto3

    return boto3.client("s3", endpoint_url=s3.endpoint)


def keys(s3, bucket: str, prefix: str = "") -> list[str]:
    out = []
    for page in boto(s3).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


def arrow_table(bucket: str, key: str) -> pd.DataFrame:
    """Read a table with pyarrow's own S3 client (not fsspec): what a Parquet / Ray Data reader would do."""
    import pyarrow.parquet as pq

    from pipeline.storage import arrow_filesystem

    return pq.read_table(f"{bucket}/{key}", filesystem=arrow_filesystem("s3")).to_pandas()


def sources(source_server, tmp_path, optout: tuple[str, ...] = ()) -> tuple:
    src = tmp_path / "sources.csv"
    src.write_text("url,video_id,license,note\n" + "".join(f"{source_server.url(v)},{v},cc0,\n" for v in VIDEOS))
    oo = tmp_path / "optout.csv"
    oo.write_text("video_id_or_url,date,reason\n" + "".join(f"{v},2026-11-30,test\n" for v in optout))
    return src, oo


def curate_into(root: DataRoot, src, oo, keep: str = "accepted_clips") -> dict:
    from pipeline.curate.runner import curate
    from pipeline.curate.sources import load_inputs
    from pipeline.curate.stages import load_dag

    cfg = load_dag(DAG)
    cfg.media.keep = keep
    cfg.download.params.update(max_attempts=1)
    return curate(root, load_inputs(src, oo), cfg, engine="sequential", log=lambda m: None)


def tables(root: DataRoot) -> dict[str, pd.DataFrame]:
    return {t: root.read_parquet(f"curate/{t}.parquet").to_pandas() for t in ("clips", "videos", "rejections")}


def shards_cfg(src, oo):
    from pipeline.shards.config import ShardsConfig

    cfg = ShardsConfig(runner="sequential", models="tiny", samples_per_shard=1, sources=str(src), optout=str(oo),
                       tiny_fit_steps=2, tiny_fit_frames=8)
    # 64 px: the face mesh (landmarks, and the shards' landmark gate) finds no face in 32 px crops
    cfg.encoder.size, cfg.encoder.max_frames, cfg.encoder.batch_frames = 64, 6, 6
    return cfg


@pytest.fixture(scope="module")
def world(s3, _server, corpus, tmp_path_factory):
    """One curate + shards run on s3:// and the same curate on a local root."""
    from pipeline.shards.build import run

    _server.reset()
    tmp = tmp_path_factory.mktemp("s3world")
    src, oo = sources(_server, tmp)
    bucket = new_bucket(s3, "world")
    root = DataRoot.of(f"s3://{bucket}/data")
    stats = curate_into(root, src, oo)
    local = DataRoot.of(tmp / "local")
    curate_into(local, src, oo)
    shard_stats = run(root.url, shards_cfg(src, oo), log=lambda m: None)
    return {"root": root, "bucket": bucket, "local": local, "tmp": tmp, "src": src, "oo": oo, "stats": stats,
            "shards": shard_stats, "gt": {g["name"]: g for g in corpus}}


# ---------------------------------------------------------------- the storage layer itself

@pytest.mark.parametrize("kind", ["local", "s3"])
def test_data_root_reads_writes_lists_and_deletes_alike_on_disk_and_on_s3(kind, s3, tmp_path):
    import pyarrow as pa

    root = DataRoot.of(tmp_path / "d" if kind == "local" else f"s3://{new_bucket(s3, 'unit')}/p/")
    root.write_text("a/x.json", '{"k": 1}')
    root.write_bytes("a/y.bin", b"\0" * 10)
    root.write_parquet("t/table.parquet", pa.table({"n": [1, 2, 3]}))
    root.append_text("log.jsonl", "1\n")
    root.append_text("log.jsonl", "2\n")
    assert root.read_text("a/x.json") == '{"k": 1}' and root.read_text("log.jsonl") == "1\n2\n"
    assert root.ls("a") == ["x.json", "y.bin"] and root.ls("a", "*.json") == ["x.json"] and root.ls("nothing") == []
    assert root.read_parquet("t/table.parquet")["n"].to_pylist() == [1, 2, 3]
    assert root.exists("a/y.bin") and not root.exists("a/z") and root.size("a/y.bin") == 10
    assert root.du() == (4, 10 + len('{"k": 1}') + 4 + root.size("t/table.parquet"))
    assert root.subdirs("") == ["a", "t"]
    with root.local_file("a/y.bin") as p:
        assert p.read_bytes() == b"\0" * 10
    with pytest.raises(FileNotFoundError):
        root.read_bytes("a/missing")
    with pytest.raises(ValueError, match="escapes"):
        root.key("a/../../etc/passwd")
    with pytest.raises(RuntimeError), root.open_atomic("a/half.bin") as f:     # a failed write leaves nothing
        f.write(b"half")
        raise RuntimeError
    assert not root.exists("a/half.bin")
    assert root.rm_tree("a") == ["a/x.json", "a/y.bin"] and root.ls("a") == [] and not root.rm("a/x.json")


# ---------------------------------------------------------------- curate on s3

def test_curate_on_s3_writes_the_same_tables_as_on_a_local_disk(world):
    s3_tables, local_tables = tables(world["root"]), tables(world["local"])
    for name in s3_tables:
        pd.testing.assert_frame_equal(s3_tables[name], local_tables[name], check_exact=False, rtol=1e-9)
    clips = s3_tables["clips"]
    acc = clips[clips.status == "accepted"]
    # ground truth: talk_360p30 is two single-face scenes, audio_480p30 one -> one accepted clip per scene
    assert sorted(acc.video_id) == ["audio_480p30", "talk_360p30", "talk_360p30"]
    assert world["stats"]["media_keep"] == "accepted_clips"


def test_accepted_clips_retention_keeps_one_file_per_clip_and_deletes_the_downloads(world, s3):
    from pipeline.video_io import probe

    bucket, root = world["bucket"], world["root"]
    assert keys(s3, bucket, "data/media/") == []                 # downloads deleted after analysis
    clips = tables(root)["clips"]
    acc = clips[clips.status == "accepted"]
    assert sorted(keys(s3, bucket, "data/clips/")) == sorted(f"data/{p}" for p in acc.clip_path)
    assert (clips[clips.status != "accepted"].clip_path == "").all()
    for r in acc.itertuples():
        with root.local_file(r.clip_path) as p:
            info = probe(p)
        # every frame of the span, the square crop at most 512 px (clip_side) a side
        assert info.num_frames == r.end_frame - r.start_frame
        assert info.width == info.height == min(r.crop_size, 512) - min(r.crop_size, 512) % 2


def test_shards_on_s3_are_indexed_and_stream_with_stock_webdataset(world, s3):
    import webdataset as wds

    from pipeline.storage import register_webdataset

    bucket, root = world["bucket"], world["root"]
    index = json.loads(root.read_text("shards/index.json"))
    names = [s["name"] for s in index["shards"]]
    assert world["shards"]["failed"] == [] and len(names) == 3           # one clip per shard
    assert [k for k in keys(s3, bucket, "data/shards/") if k.endswith(".tar")] == [f"data/shards/{n}" for n in names]
    register_webdataset()
    got = {s["__key__"]: s["meta.json"]["video_id"]
           for s in wds.WebDataset([root.join("shards", n) for n in names], shardshuffle=False).decode()}
    table = arrow_table(bucket, "data/shards/shards.parquet")
    assert got == dict(zip(table.clip_id, table.video_id))
    clips = tables(root)["clips"]
    assert sorted(got) == sorted(clips[clips.status == "accepted"].clip_id)


def test_train_streams_the_s3_shards_and_checkpoints_there(world, s3, tmp_path):
    from model import checkpoint as ckpt
    from model.train import main

    conf = tmp_path / "tiny.yaml"
    conf.write_text("preset: tiny\nmodel: {latent_size: 0, clip_dim: 0}\ndata: {heldout_fraction: 0.0}\n"
                    "train: {global_batch: 2, log_every: 1, ckpt_every: 2, keep_last: 2, warmup_steps: 1, "
                    "max_steps: 3, sample_every: 0}\n")
    stats = main(["--data", world["root"].url, "--config", str(conf), "--run", "s3run"])
    assert stats["steps"] == 3
    run = "data/train/s3run/"
    listed = keys(s3, world["bucket"], run)
    assert f"{run}checkpoints/step_0000002.pt" in listed and f"{run}checkpoints/step_0000003.pt" in listed
    assert f"{run}stats.json" in listed and f"{run}heldout.json" in listed
    log = world["root"].read_text("train/s3run/log.jsonl").splitlines()
    assert [json.loads(x)["step"] for x in log] == [1, 2, 3]
    state = ckpt.load(ckpt.latest(world["root"].join("train/s3run/checkpoints")))
    assert state["step"] == 3
    # a second run resumes from the object store and appends to the same log
    stats = main(["--data", world["root"].url, "--config", str(conf), "--run", "s3run", "train.max_steps=4"])
    assert stats["start_step"] == 3 and stats["steps"] == 4
    assert [json.loads(x)["step"] for x in world["root"].read_text("train/s3run/log.jsonl").splitlines()] == [1, 2, 3, 4]


def test_optout_on_s3_reaches_every_copy_and_verifies_clean(world, s3, _server, tmp_path):
    from pipeline.shards.build import run
    from pipeline.shards.optout import verify

    bucket, root, gone = world["bucket"], world["root"], "talk_360p30"
    before = json.loads(root.read_text("shards/index.json"))["shards"]
    held = set(arrow_table(bucket, "data/shards/shards.parquet").query("video_id == @gone").shard)
    src, oo = sources(_server, tmp_path, optout=(gone,))
    stats = run(root.url, shards_cfg(src, oo), log=lambda m: None)
    assert stats["optout"]["removed_videos"] == [gone]
    after = json.loads(root.read_text("shards/index.json"))["shards"]
    # shards holding only that video's clips are gone; the others are byte-identical under their names
    assert [s for s in before if s["name"] not in held] == after
    listed = keys(s3, bucket, "data/")
    assert [k for k in listed if k.startswith("data/shards/") and k.endswith(".tar")] == \
        [f"data/shards/{s['name']}" for s in after]
    assert not [k for k in listed if gone in k]                       # media, clip files, cache, state
    for t in ("data/curate/clips.parquet", "data/shards/shards.parquet"):
        assert gone not in set(arrow_table(bucket, t).video_id)
    assert verify(root.url, str(oo), log=lambda m: None) == []
    audit = [json.loads(x) for x in root.read_text("shards/optout_audit.jsonl").splitlines()]
    assert [a["video_id"] for a in audit] == [gone] and sorted(a["name"] for a in audit[0]["shards_deleted"]) == sorted(held)


# ---------------------------------------------------------------- the server dies mid-run

def test_a_run_killed_by_the_server_dying_reruns_to_the_same_tables(world, s3, _server):
    _server.reset()
    bucket = new_bucket(s3, "killed")
    root = DataRoot.of(f"s3://{bucket}/data")
    # the first video's state file is written after its download, two clip files... : die at the 5th PUT,
    # which is inside the second video (download, clip file, state)
    s3.kill_after(5, "PUT")
    with pytest.raises(Exception):    # noqa: B017 - whatever the client raises when its store is gone
        curate_into(root, world["src"], world["oo"])
    assert s3.dead
    s3.restart()
    assert not root.exists("curate/clips.parquet")                    # the dead run published no table
    done_before = root.ls("curate/state")
    assert 0 < len(done_before) < len(VIDEOS)                          # killed between the two videos
    stats = curate_into(root, world["src"], world["oo"])
    assert stats["skipped"] == len(done_before) and stats["engine_error"] == ""
    got, want = tables(root), tables(world["local"])     # the local twin: opt-out tests never touch it
    pd.testing.assert_frame_equal(got["clips"], want["clips"], check_exact=False, rtol=1e-9)
    pd.testing.assert_frame_equal(got["rejections"], want["rejections"], check_exact=False, rtol=1e-9)
    # videos: `attempts` may differ (a download the dead run had finished is found, not fetched again)
    pd.testing.assert_frame_equal(got["videos"].drop(columns="attempts"), want["videos"].drop(columns="attempts"),
                                  check_exact=False, rtol=1e-9)
    assert keys(s3, bucket, "data/media/") == []


# ---------------------------------------------------------------- make demo DATA=s3://...

@pytest.mark.slow
def test_demo_runs_end_to_end_on_an_s3_data_root(s3, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from pipeline.video_io import iter_frames

    bucket = new_bucket(s3, "demo")
    root = DataRoot.of(f"s3://{bucket}/demo")
    repo = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-m", "pipeline.demo", "--data", root.url, "--work", str(tmp_path / "work"),
                        "--videos", "2", "--train-steps", "4", "--fit-steps", "2", "--sample-steps", "2",
                        "--engine", "sequential"],      # Ray on object storage: test_curate's runs are local
                       cwd=repo, capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads(root.read_text("demo.json"))
    listed = keys(s3, bucket, "demo/")
    for name in ("clips", "curate_stats", "reenacted_video", "report"):
        assert summary["outputs"][name].startswith(root.url + "/")
        assert summary["outputs"][name][len(f"s3://{bucket}/"):] in listed, name
    assert any(k.startswith("demo/train/demo/checkpoints/step_") for k in listed)
    assert any(k.startswith("demo/shards/faces-") and k.endswith(".tar") for k in listed)
    assert not [k for k in listed if k.startswith("demo/media/")]          # media.keep: accepted_clips
    with root.local_file("reenact/demo.mp4") as video:
        assert sum(1 for _ in iter_frames(video)) == 75                      # the driving video's frames


# ---------------------------------------------------------------- media.keep on a local disk: all, --force, none

def test_media_keep_all_then_force_accepted_clips_then_none(_server, corpus, tmp_path):
    from pipeline.shards.build import run

    _server.reset()
    src, oo = sources(_server, tmp_path)
    root = DataRoot.of(tmp_path / "data")
    curate_into(root, src, oo, keep="all")
    kept_all = tables(root)
    assert sorted(root.ls("media")) == sorted(f"{v}.mp4" for v in VIDEOS) and root.du("clips") == (0, 0)
    assert (kept_all["clips"].clip_path == "").all()
    media_bytes = root.du("media")[1]

    # --force with accepted_clips: the same clips, now kept as files, and the downloads gone
    from pipeline.curate.runner import curate
    from pipeline.curate.sources import load_inputs
    from pipeline.curate.stages import load_dag

    cfg = load_dag(DAG)
    cfg.download.params.update(max_attempts=1)
    stats = curate(root, load_inputs(src, oo), cfg, engine="sequential", force=True, log=lambda m: None)
    assert stats["processed"] == len(VIDEOS) and root.ls("media") == []
    forced = tables(root)
    pd.testing.assert_frame_equal(forced["clips"].drop(columns="clip_path"), kept_all["clips"].drop(columns="clip_path"),
                                  check_exact=False, rtol=1e-9)
    acc = forced["clips"][forced["clips"].status == "accepted"]
    assert sorted(root.key(p) for p in acc.clip_path) == sorted(
        f"clips/{v}/{n}" for v in root.subdirs("clips") for n in root.ls(f"clips/{v}"))
    kept_bytes = root.du("clips")[1]
    assert 0 < kept_bytes < media_bytes      # the crops of the accepted spans are smaller than the downloads

    # --force again re-downloads what was deleted; with none, the shard builder drops each sharded clip's file
    cfg.media.keep = "none"
    curate(root, load_inputs(src, oo), cfg, engine="sequential", force=True, log=lambda m: None)
    assert root.du("clips")[0] == len(acc) and root.ls("media") == []
    shard_stats = run(root.url, shards_cfg(src, oo), log=lambda m: None)
    assert shard_stats["failed"] == [] and shard_stats["samples_total"] == len(acc)
    assert shard_stats["clip_files_deleted"] == len(acc) and root.du("clips") == (0, 0)
