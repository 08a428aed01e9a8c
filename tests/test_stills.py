"""Still portraits -> smooth pseudo-clips with landmarks detected per transformed frame, sharded."""
from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def portraits(tmp_path_factory):
    import cv2
    from skimage.data import astronaut

    d = tmp_path_factory.mktemp("portraits")
    img = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(d / "a.png"), img)
    cv2.imwrite(str(d / "b.jpg"), img[:, ::-1])
    (d / "notes.txt").write_text("not an image")
    return d


def test_ids_come_from_image_content(portraits, tmp_path):
    from pipeline.shards.stills import still_items

    items = still_items(portraits, fps=25, frames=8)
    assert [it["media_path"].rsplit("/", 1)[-1] for it in items] == ["a.png", "b.jpg"]
    assert all(it["origin"] == "still" and it["video_id"] == "still-" + it["clip_id"] for it in items)
    (tmp_path / "renamed.png").write_bytes((portraits / "a.png").read_bytes())
    assert still_items(tmp_path, 25, 8)[0]["clip_id"] == items[0]["clip_id"]
    assert items[0]["clip_id"] != items[1]["clip_id"]


def test_pseudo_clip_moves_smoothly_and_landmarks_follow_the_motion(portraits):
    import cv2

    from pipeline.curate.landmarks import FaceMesh478
    from pipeline.shards.stills import face_base, homographies, pseudo_clip, read_rgb

    size, n = 96, 10
    frames, idx, t = pseudo_clip(portraits / "a.png", n, size, 25.0, seed=3)
    again, _, _ = pseudo_clip(portraits / "a.png", n, size, 25.0, seed=3)
    assert frames.shape == (n, size, size, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, again)                      # deterministic for a seed
    assert idx.tolist() == list(range(n)) and np.allclose(t, idx / 25.0)
    step = [np.abs(frames[i + 1].astype(int) - frames[i]).mean() for i in range(n - 1)]
    assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 0 and max(step) < 25   # moves, no jumps
    with FaceMesh478() as mesh:
        lm, ok = mesh.batch(frames)
    assert ok.all()
    # landmarks of frame 0 carried by the known motion H_i H_0^-1 land on frame i's detected landmarks
    base = face_base(read_rgb(portraits / "a.png"), size)
    H = homographies(n, size, base.shape[0], seed=3)
    p0 = lm[0, :, :2] * size
    moved_any = False
    for i in range(1, n):
        pred = cv2.perspectiveTransform(p0[None].astype(np.float64), H[i] @ np.linalg.inv(H[0]))[0]
        err = np.median(np.linalg.norm(pred - lm[i, :, :2] * size, axis=1))
        assert err < 0.04 * size
        moved_any |= np.median(np.linalg.norm(lm[i, :, :2] - lm[0, :, :2], axis=1)) * size > 1.0
    assert moved_any


def test_stills_become_shard_samples(portraits, tmp_path):
    import webdataset as wds

    from pipeline.shards.build import run
    from pipeline.shards.config import ShardsConfig
    from pipeline.shards.model_sets import build_tiny_models

    models = build_tiny_models(tmp_path / "m", seed=0, sample_size=64)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    d = tmp_path / "stills"
    d.mkdir()
    for p in list(portraits.iterdir()) + [tmp_path / "bad.png"]:
        (d / p.name).write_bytes(p.read_bytes())
    cfg = ShardsConfig(runner="sequential", models=str(models), stills=str(d), stills_frames=4,
                       sources="", optout="")
    cfg.encoder.size = 64
    stats = run(tmp_path / "data", cfg, log=lambda m: None)
    assert stats["encoded"] == 2 and len(stats["failed"]) == 1 and "not a readable image" in stats["failed"][0]["reason"]
    samples = list(wds.WebDataset(str(tmp_path / "data" / "shards" / "faces-000000.tar"), shardshuffle=False).decode())
    assert len(samples) == 2
    for s in samples:
        assert s["meta.json"]["origin"] == "still" and s["meta.json"]["video_id"] == "still-" + s["__key__"]
        assert s["latent_mean.npy"].shape == (4, 4, 8, 8) and s["landmarks_ok.npy"].all()
    index = json.loads((tmp_path / "data" / "shards" / "index.json").read_text())
    assert index["shards"][0]["nsamples"] == 2


def test_cartoon_portrait_among_photos_is_rejected_and_stills_name_their_file(portraits, tmp_path):
    """A drawn face gets a confident detection and a full mesh (measured 0.91 and 478 points), so only
    the face check's flat-skin measure keeps it out; the photos go in, each traceable to its file."""
    import cv2
    import pandas as pd
    import webdataset as wds

    from pipeline.shards.build import run, summary
    from pipeline.shards.config import ShardsConfig
    from pipeline.shards.model_sets import build_tiny_models
    from pipeline.synth.lookalikes import draw_cartoon

    d = tmp_path / "stills"
    d.mkdir()
    for p in portraits.iterdir():
        if p.suffix in (".png", ".jpg"):
            (d / p.name).write_bytes(p.read_bytes())
    card = np.full((400, 400, 3), 235, np.uint8)
    card[72:328, 72:328] = draw_cartoon(256)[0]
    cv2.imwrite(str(d / "cartoon.png"), card[..., ::-1])
    models = build_tiny_models(tmp_path / "m", seed=0, sample_size=64)
    optout = tmp_path / "optout.csv"
    optout.write_text("video_id_or_url,date,reason\n")
    cfg = ShardsConfig(runner="sequential", models=str(models), stills=str(d), stills_frames=4, sources="",
                       optout=str(optout))
    cfg.encoder.size = 64
    stats = run(tmp_path / "data", cfg, log=lambda m: None)
    assert [(r["file"], r["reason"]) for r in stats["stills_rejected"]] == [("cartoon.png", "drawn_face")]
    assert "rejected 1 still portraits by the face check (drawn_face 1)" in summary(stats)
    assert stats["encoded"] == 2 and not stats["failed"]
    samples = list(wds.WebDataset(str(tmp_path / "data" / "shards" / "faces-000000.tar"), shardshuffle=False).decode())
    assert sorted(s["meta.json"]["source"] for s in samples) == ["a.png", "b.jpg"]
    table = pd.read_parquet(tmp_path / "data" / "shards" / "shards.parquet")
    assert sorted(table["url"]) == ["a.png", "b.jpg"]
    # opt-out by file name: the still leaves the shards at the next run
    optout.write_text("video_id_or_url,date,reason\nb.jpg,2026-11-30,asked by the subject\n")
    stats = run(tmp_path / "data", cfg, log=lambda m: None)
    assert stats["optout"]["clips_removed"] == 1 and stats["optout"]["unknown"] == []
    table = pd.read_parquet(tmp_path / "data" / "shards" / "shards.parquet")
    assert list(table["url"]) == ["a.png"]
