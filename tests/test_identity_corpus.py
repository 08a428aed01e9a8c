"""Identity end to end on the generated corpus, judged against its ground truth: curate (real yt-dlp from the
loopback server) finds the two real people behind the corpus's four "identities", rejects the same video
under a second link and a re-encoded re-upload as duplicates; the shards carry identities; opting out by
a face photo removes exactly that person's clips from every shard; opting out one copy removes every copy.

The corpus's "identities" astronaut / astronaut_warm and hopper / hopper_cool are mirrored, colour-shifted
variants of two photos: the same two people to a face-identity model, so the truth here is two people."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
KEEP = ("talk_360p30", "cuts_360p25", "multi_360p24", "rotated_phone_30")


def _person(gt: dict, start: int) -> str:
    scene = next(s for s in gt["scenes"] if s["start"] <= start < s["end"])
    return scene["faces"][0].split("_")[0]


def _shard_samples(root: Path) -> dict[str, dict]:
    import io

    import numpy as np

    from pipeline.shards.io import read_samples

    out = {}
    for p in sorted((root / "shards").glob("*.tar")):
        for key, members in read_samples(p, {"meta.json", "identity.npy"}):
            m = dict(members)
            out[key] = {**json.loads(m["meta.json"]), "shard": p.name,
                        "identity": np.load(io.BytesIO(m["identity.npy"]), allow_pickle=False)}
    return out


def _shards_cfg(root: Path, models: Path):
    from pipeline.shards.config import ShardsConfig

    cfg = ShardsConfig(runner="sequential", models=str(models), samples_per_shard=4, tiny_fit_steps=0,
                       sources=str(root / "manifests" / "sources.csv"), optout=str(root / "manifests" / "optout.csv"),
                       stills=str(root.parent / "portraits"), stills_frames=4)
    cfg.encoder.size, cfg.encoder.max_frames, cfg.encoder.batch_frames = 64, 3, 8
    return cfg


def _verify(root: Path):
    return subprocess.run([sys.executable, "-m", "pipeline.shards.optout", "verify", "--data", str(root),
                           "--optout", str(root / "manifests" / "optout.csv")], capture_output=True, text=True,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def world(corpus, corpus_dir, tmp_path_factory):
    """Curated (sequential engine) + sharded (tiny models) corpus with two extra links: talk_360p30 again under
    its other link form, and a re-encoded re-upload of it at 3/4 size."""
    import imageio_ffmpeg

    from pipeline.curate.runner import curate
    from pipeline.curate.sources import load_inputs
    from pipeline.curate.stages import load_dag
    from pipeline.paths import DataRoot
    from pipeline.shards.build import run
    from pipeline.shards.model_sets import build_tiny_models
    from pipeline.synth.corpus import make_portraits
    from pipeline.synth.server import SourceServer

    t0 = time.time()
    base = tmp_path_factory.mktemp("identity-world")
    media = base / "served"
    media.mkdir()
    for g in corpus:    # four videos hold all four corpus "identities" (warm and cool variants included)
        if g["name"] in KEEP:
            shutil.copy(g["path"], media / Path(g["path"]).name)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(media / "talk_360p30.mp4"),
                    "-vf", "scale=480:270", "-crf", "28", "-c:v", "libx264", "-an", str(media / "talk_reupload.mp4")],
                   check=True)
    root = base / "data"
    (root / "manifests").mkdir(parents=True)
    with SourceServer(media) as srv:
        talk_kind = "page" if srv.videos().index("talk_360p30") % 2 else "direct"
        mirror = srv.url("talk_360p30", "direct" if talk_kind == "page" else "page")
        (root / "manifests" / "sources.csv").write_text(srv.sources_csv() + f"{mirror},talk_mirror,cc0,same video\n")
        (root / "manifests" / "optout.csv").write_text("video_id_or_url,date,reason\n")
        cfg = load_dag(REPO / "dags" / "curate.yaml")
        items = load_inputs(root / "manifests" / "sources.csv", root / "manifests" / "optout.csv")
        stats = curate(DataRoot.of(root), items, cfg, engine="sequential", log=lambda m: None)
    t1 = time.time()
    # two still portraits (supplementary §3): the astronaut's and Grace Hopper's heads
    stills = make_portraits(base / "portraits", n=2, size=256)
    models = build_tiny_models(base / "tiny-models", seed=0, sample_size=64)
    shard_stats = run(root, _shards_cfg(root, models), log=lambda m: None)
    print(f"identity world: curate {t1 - t0:.0f} s, shards {time.time() - t1:.0f} s", file=sys.stderr)
    gt = {g["name"]: g for g in corpus}
    gt["talk_mirror"] = gt["talk_reupload"] = gt["talk_360p30"]
    still_person = {hashlib.sha1(p.read_bytes()).hexdigest()[:16]: who for p, who in zip(stills, ("astronaut", "hopper"))}
    return {"root": root, "base": base, "models": models, "stats": stats, "shard_stats": shard_stats, "gt": gt,
            "clips": pd.read_parquet(root / "curate" / "clips.parquet"), "still_person": still_person}


def _who(world, key: str, sample: dict) -> str:
    """The ground-truth person of a shard sample: its scene's face, or the portrait's."""
    if sample["origin"] == "still":
        return world["still_person"][key]
    row = world["clips"].set_index("clip_id").loc[key]
    return _person(world["gt"][row["video_id"]], int(row["start_frame"]))


def test_the_corpus_holds_two_people_whatever_their_colours(world):
    clips, gt = world["clips"], world["gt"]
    acc = clips[clips["status"] == "accepted"]
    assert len(acc) >= 7 and acc["identity"].map(len).eq(128).all()
    assert set(acc["video_id"]) <= set(g for g in gt if g not in ("talk_mirror", "talk_reupload"))
    people = {(r.identity_id, _person(gt[r.video_id], r.start_frame)) for r in acc.itertuples()}
    # one identity per real person: astronaut and astronaut_warm (mirrored, warm) are one, hopper and hopper_cool one
    assert len({p for p, _ in people}) == 2 and len({who for _, who in people}) == 2 and len(people) == 2
    warm = [r for r in acc.itertuples() if "warm" in next(s for s in gt[r.video_id]["scenes"]
                                                        if s["start"] <= r.start_frame < s["end"])["faces"][0]]
    assert warm, "the corpus should have an accepted astronaut_warm clip"
    st = world["stats"]["identities"]
    assert st["identities"] == 2 and sorted(st["clips_per_identity"]) == sorted(acc["identity_id"].value_counts())


def test_a_duplicate_link_and_a_reupload_yield_one_clip(world):
    clips = world["clips"].set_index("clip_id")
    talk = clips[(clips["video_id"] == "talk_360p30") & (clips["status"] == "accepted")]
    assert len(talk) == 2
    for copy in ("talk_mirror", "talk_reupload"):
        mine = clips[clips["video_id"] == copy]
        dup = mine[mine["reason"] == "duplicate"]
        assert len(dup) == len(talk) and (mine["status"] != "accepted").all(), mine[["start_frame", "reason"]]
        # each copy names the original clip of the same scene (the re-upload's spans may differ by a frame)
        for r in dup.itertuples():
            orig = clips.loc[r.duplicate_of]
            assert orig["video_id"] == "talk_360p30" and abs(orig["start_frame"] - r.start_frame) <= 2
            assert r.identity_id == orig["identity_id"]
    rej = pd.read_parquet(world["root"] / "curate" / "rejections.parquet")
    assert (rej[rej["reason"] == "duplicate"]["stage"] == "identity").all() and (rej["reason"] == "duplicate").sum() == 4
    videos = pd.read_parquet(world["root"] / "curate" / "videos.parquet").set_index("video_id")
    assert videos.loc["talk_mirror", "accepted"] == 0 and videos.loc["talk_mirror", "status"] == "no_clips"
    # in the shards: the footage once
    samples = _shard_samples(world["root"])
    assert {s["video_id"] for s in samples.values()} >= {"talk_360p30"}
    assert not {"talk_mirror", "talk_reupload"} & {s["video_id"] for s in samples.values()}


def test_rerun_keeps_every_identity_and_decision(world, tmp_path):
    from pipeline.curate.runner import curate
    from pipeline.curate.stages import load_dag
    from pipeline.paths import DataRoot

    root = tmp_path / "data"
    shutil.copytree(world["root"], root)
    items = [{"video_id": v, "url": u, "opted_out": False} for v, u in
             world["clips"][["video_id", "url"]].drop_duplicates().itertuples(index=False)]
    st = curate(DataRoot.of(root), items, load_dag(REPO / "dags" / "curate.yaml"), engine="sequential",
                log=lambda m: None)
    assert st["processed"] == 0 and st["identities"]["new_identities"] == 0
    again = pd.read_parquet(root / "curate" / "clips.parquet")
    cols = ["clip_id", "status", "reason", "identity_id", "duplicate_of"]
    assert again[cols].fillna("").equals(world["clips"][cols].fillna(""))


def test_every_shard_sample_carries_its_clip_identity(world):
    import numpy as np

    from pipeline.schema import SCHEMA_VERSION

    clips = world["clips"].set_index("clip_id")
    samples = _shard_samples(world["root"])
    videos = {k: s for k, s in samples.items() if s["origin"] == "video"}
    assert videos and set(videos) == set(clips.index[clips["status"] == "accepted"])
    for key, s in videos.items():
        assert s["identity_id"] == clips.loc[key, "identity_id"] and s["identity_model"] == "dlib-resnet-v1"
        assert s["schema_version"] == SCHEMA_VERSION
        assert s["identity"].dtype == np.float32 and np.allclose(s["identity"], clips.loc[key, "identity"])
    # the still portraits join the person they show (so an identity split holds their portraits out too)
    person_id = {_who(world, k, s): s["identity_id"] for k, s in videos.items()}
    stills = {k: s for k, s in samples.items() if s["origin"] == "still"}
    assert len(stills) == 2
    for key, s in stills.items():
        assert s["identity_id"] == person_id[world["still_person"][key]] and s["identity"].shape == (128,)


def _copy(world, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(world["root"], root)
    shutil.copytree(world["base"] / "portraits", tmp_path / "portraits")
    return root


def test_opting_out_a_photo_removes_that_person_from_every_shard_and_nobody_else(world, tmp_path):
    import matplotlib.cbook

    from pipeline.shards.build import run

    root, gt = _copy(world, tmp_path), world["gt"]
    before = _shard_samples(root)
    who = {k: _who(world, k, s) for k, s in before.items()}
    hopper = {k for k, p in who.items() if p == "hopper"}                 # her portrait included
    assert any(before[k]["origin"] == "still" for k in hopper)
    assert hopper and len(hopper) < len(who) and len({before[k]["shard"] for k in hopper}) >= 2
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:     # a photo, not a frame of the corpus
        (root / "manifests" / "hopper.jpg").write_bytes(f.read())
    (root / "manifests" / "optout.csv").write_text(
        "video_id_or_url,date,reason,face_photo\n,2026-03-01,asked to be removed,hopper.jpg\n")
    stats = run(root, _shards_cfg(root, world["models"]), log=lambda m: None)
    after = _shard_samples(root)
    assert set(after) == set(before) - hopper                      # every clip of hers, nobody else's
    (person,) = stats["optout"]["people"]
    assert person["matched"] == len(hopper) and person["threshold"] == 0.6 and person["nearest_other"] > 0.6
    audit = [json.loads(x) for x in (root / "shards" / "optout_audit.jsonl").read_text().splitlines()]
    rec, copies = audit       # her clips by the photo, then the copies of them (the mirror's and re-upload's)
    assert rec["trigger"] == "optout.csv face_photo" and rec["optout_row"] == 2 and rec["photo"] == "hopper.jpg"
    assert {m["clip_id"] for m in rec["matches"]} == hopper and all(m["distance"] < 0.6 for m in rec["matches"])
    assert copies["trigger"] == "copy of a removed clip"
    rows = world["clips"].set_index("clip_id")
    removed = set(rec["clips_removed"]) | set(copies["clips_removed"])
    assert {world["still_person"].get(k) or _person(gt[rows.loc[k, "video_id"]], int(rows.loc[k, "start_frame"]))
            for k in removed} == {"hopper"}
    assert stats["optout"]["clips_removed"] == len(removed) and stats["optout"]["removed_videos"] == []
    clips = pd.read_parquet(root / "curate" / "clips.parquet").set_index("clip_id")
    in_manifest = sorted(removed - set(world["still_person"]))
    assert (clips.loc[in_manifest, "reason"] == "opted_out").all() and clips.loc[in_manifest, "identity"].isna().all()
    assert (clips.drop(in_manifest)["reason"] != "opted_out").all()
    assert _verify(root).returncode == 0
    # a rerun removes nothing more; a stale shard coming back is caught by verify, by the face
    assert run(root, _shards_cfg(root, world["models"]), log=lambda m: None)["optout"]["clips_removed"] == 0
    stale = sorted({before[k]["shard"] for k in hopper})[0]
    shutil.copy(world["root"] / "shards" / stale, root / "shards" / stale)
    v = _verify(root)
    assert v.returncode == 1 and "shows the person of optout.csv row 2" in v.stdout and stale in v.stdout


def test_opting_out_one_copy_removes_every_copy(world, tmp_path):
    from pipeline.shards.build import run

    root = _copy(world, tmp_path)
    before = _shard_samples(root)
    talk = {k for k, s in before.items() if s["video_id"] == "talk_360p30"}
    assert len(talk) == 2
    # the mirror link never reached the shards (its clips are duplicates); opting it out takes the footage
    (root / "manifests" / "optout.csv").write_text("video_id_or_url,date,reason\ntalk_mirror,2026-03-02,mine\n")
    stats = run(root, _shards_cfg(root, world["models"]), log=lambda m: None)
    after = _shard_samples(root)
    assert set(after) == set(before) - talk and stats["optout"]["removed_videos"] == ["talk_mirror"]
    audit = [json.loads(x) for x in (root / "shards" / "optout_audit.jsonl").read_text().splitlines()]
    copies = next(r for r in audit if r["trigger"] == "copy of a removed clip")
    assert talk <= set(copies["clips_removed"])
    reup = set(world["clips"].query("video_id == 'talk_reupload'")["clip_id"])
    assert reup & set(copies["clips_removed"]), "the re-upload's copies go too"
    assert _verify(root).returncode == 0
    stale = before[sorted(talk)[0]]["shard"]
    shutil.copy(world["root"] / "shards" / stale, root / "shards" / stale)
    v = _verify(root)
    assert v.returncode == 1 and "opted-out" in v.stdout and stale in v.stdout
