"""Opt-out by manifest edit, end to end: only the holding shards change, media/cache/rows deleted, audit,
verify; removal by deleting a sources.csv row; malformed optout.csv; unknown ids."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from test_shards import copy_world, make_cfg, read_clips, shard_hashes, snapshot, write_clips

from pipeline.shards.io import read_samples


def _vid(root, name):
    return next(r["video_id"] for r in read_clips(root) if r["url"].endswith(f"/{name}.mp4"))


def _all_keys_and_videos(root):
    out = {}
    for p in sorted((root / "shards").glob("*.tar")):
        for key, members in read_samples(p):
            out[key] = (p.name, json.loads(dict(members)["meta.json"])["video_id"])
    return out


def _run(root, models):
    from pipeline.shards.build import run

    return run(root, make_cfg(root, models, manifests=True), log=lambda m: None)


def _verify_cli(root):
    return subprocess.run([sys.executable, "-m", "pipeline.shards.optout", "verify", "--data", str(root),
                           "--optout", str(root / "manifests" / "optout.csv")], capture_output=True, text=True)


def test_optout_end_to_end(tmp_path_factory, tmp_path):
    root, models = copy_world(tmp_path_factory, tmp_path)
    a = _vid(root, "vidA")
    before = shard_hashes(root)
    a_clips = {k for k, (_, v) in _all_keys_and_videos(root).items() if v == a}
    media = root / next(r["media_path"] for r in read_clips(root) if r["video_id"] == a)
    caches = [p for c in a_clips for p in (root / "shards" / "cache").glob(f"*/{c}.npz")]
    assert a_clips and media.exists() and len(caches) == len(a_clips)
    # the opt-out names the video by URL; vidA's single clip shares faces-000000 with vidB's first clip
    (root / "manifests" / "optout.csv").write_text(
        "video_id_or_url,date,reason\nhttp://127.0.0.1:9/vidA.mp4,2026-03-01,subject asked\n")
    stats = _run(root, models)
    after = shard_hashes(root)
    assert stats["optout"]["removed_videos"] == [a] and stats["optout"]["clips_removed"] == len(a_clips)
    assert after["faces-000001.tar"] == before["faces-000001.tar"]
    assert after["faces-000002.tar"] == before["faces-000002.tar"]
    # write-once names: the shard that held vidA's clip has a successor, and the old name is gone
    assert "faces-000000.tar" not in after and after["faces-000000.1.tar"] != before["faces-000000.tar"]
    keys = _all_keys_and_videos(root)
    assert not a_clips & set(keys) and a not in {v for _, v in keys.values()} and len(keys) == 4
    index = json.loads((root / "shards" / "index.json").read_text())
    for s in index["shards"]:
        assert s["sha256"] == after[s["name"]]
    assert [s["nsamples"] for s in index["shards"]] == [1, 2, 1]
    table = pq.read_table(root / "shards" / "shards.parquet").to_pandas()
    assert a not in set(table["video_id"]) and len(table) == 4
    assert not media.exists() and not any(p.exists() for p in caches)
    assert a not in {r["video_id"] for r in read_clips(root)}          # its cut clips left the manifest
    audit = [json.loads(line) for line in (root / "shards" / "optout_audit.jsonl").read_text().splitlines()]
    assert len(audit) == 1
    rec = audit[0]
    assert rec["video_id"] == a and set(rec["clips_removed"]) == a_clips and rec["trigger"] == "optout.csv"
    assert rec["reason"] == "subject asked" and rec["request_date"] == "2026-03-01" and rec["time"]
    assert rec["shards_rewritten"] == [{"name": "faces-000000.1.tar", "old_name": "faces-000000.tar",
                                        "old_sha256": before["faces-000000.tar"],
                                        "new_sha256": after["faces-000000.1.tar"], "nsamples": 1}]
    assert any(f.startswith("media/") for f in rec["files_deleted"])
    v = _verify_cli(root)
    assert v.returncode == 0 and "ok" in v.stdout
    # running again: nothing to do, nothing written, no second audit record
    snap = snapshot(root)
    stats = _run(root, models)
    assert stats["optout"]["removed_videos"] == [] and stats["shards_written"] == [] and snapshot(root) == snap
    assert len((root / "shards" / "optout_audit.jsonl").read_text().splitlines()) == 1
    # a stale copy of the old shard coming back is caught by verify, naming the shard
    shutil.copy(tmp_path_factory.getbasetemp() / "shards-world" / "shards" / "faces-000000.tar",
                root / "shards" / "faces-000000.tar")
    v = _verify_cli(root)
    assert v.returncode == 1 and "faces-000000.tar" in v.stdout and a in v.stdout


def test_deleting_a_sources_row_removes_the_video_for_good(tmp_path_factory, tmp_path):
    root, models = copy_world(tmp_path_factory, tmp_path)
    b = _vid(root, "vidB")
    before = shard_hashes(root)
    rows = read_clips(root)
    src = root / "manifests" / "sources.csv"
    src.write_text("\n".join(line for line in src.read_text().splitlines() if "/vidB.mp4" not in line) + "\n")
    stats = _run(root, models)
    after = shard_hashes(root)
    # vidB's clips were in faces-000000 (A1 B1) and faces-000001 (B2 C1); faces-000002 untouched
    assert stats["optout"]["removed_videos"] == [b] and stats["optout"]["clips_removed"] == 2
    assert after["faces-000002.tar"] == before["faces-000002.tar"]
    assert set(after) == {"faces-000000.1.tar", "faces-000001.1.tar", "faces-000002.tar"}     # successors
    assert after["faces-000000.1.tar"] != before["faces-000000.tar"] != after["faces-000001.1.tar"]
    assert b not in {v for _, v in _all_keys_and_videos(root).values()}
    rec = json.loads((root / "shards" / "optout_audit.jsonl").read_text().splitlines()[0])
    assert rec["trigger"] == "sources.csv row deleted" and len(rec["shards_rewritten"]) == 2
    assert b in json.loads((root / "shards" / "removed.json").read_text())
    # the curate manifest lists it again (e.g. an old clips.parquet restored): it is still never sharded
    write_clips(root, rows)
    stats = _run(root, models)
    assert b not in {v for _, v in _all_keys_and_videos(root).values()} and stats["shards_written"] == []
    assert _verify_cli(root).returncode == 0


def test_malformed_optout_csv_names_the_row_and_removes_nothing(tmp_path_factory, tmp_path):
    root, models = copy_world(tmp_path_factory, tmp_path)
    snap = snapshot(root)
    media = sorted(p.name for p in (root / "media").iterdir())
    (root / "manifests" / "optout.csv").write_text(
        "video_id_or_url,date,reason\nhttp://127.0.0.1:9/vidA.mp4,2026-03-01,ok\nvidB,yesterday,bad date\n")
    from pipeline.shards.optout import ManifestProblem

    with pytest.raises(ManifestProblem, match="row 3"):
        _run(root, models)
    cli = subprocess.run([sys.executable, "-m", "pipeline.shards", "--data", str(root), "--dag", "dags/shards.yaml",
                          "--models", str(models), "--runner", "sequential",
                          "--sources", str(root / "manifests" / "sources.csv"),
                          "--optout", str(root / "manifests" / "optout.csv")], capture_output=True, text=True)
    assert cli.returncode == 2 and "optout.csv row 3" in cli.stderr and "nothing removed" in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1
    assert snapshot(root) == snap and sorted(p.name for p in (root / "media").iterdir()) == media
    assert not (root / "shards" / "optout_audit.jsonl").exists()
    assert _verify_cli(root).returncode == 2


def test_unknown_id_is_reported_and_harmless(tmp_path_factory, tmp_path):
    root, models = copy_world(tmp_path_factory, tmp_path)
    snap = snapshot(root)
    (root / "manifests" / "optout.csv").write_text(
        "video_id_or_url,date,reason\nno-such-video,2026-03-01,\nhttps://example.com/x.mp4,2026-03-02,\n")
    stats = _run(root, models)
    assert stats["optout"]["unknown"] == ["no-such-video", "https://example.com/x.mp4"]
    assert stats["optout"]["removed_videos"] == [] and snapshot(root) == snap
    assert not (root / "shards" / "optout_audit.jsonl").exists()
    on_disk = json.loads((root / "shards" / "stats.json").read_text())
    assert on_disk["optout"]["unknown"] == stats["optout"]["unknown"]
    assert hashlib.sha256((root / "shards" / "faces-000000.tar").read_bytes()).hexdigest() == snap["faces-000000.tar"][1]
