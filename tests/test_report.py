"""`make report`: figures exist and are valid PNGs, the HTML references them, the JSON matches the manifest,
and the page really renders in headless Chromium."""
import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.ids import clip_id
from pipeline.report import build_report, main
from pipeline.schema import CLIPS
from pipeline.video_io import write_mp4


def _video(path, n=20, seed=0):
    from skimage import data

    face = data.astronaut()[::2, ::2]  # 256x256
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        canvas = np.full((240, 320, 3), 40 + 10 * seed, np.uint8)
        x = 20 + i * 2
        canvas[:, :] += rng.integers(0, 5, 3, dtype=np.uint8)
        canvas[0:240, x:x + 200] = face[8:248, 28:228]
        frames.append(canvas)
    write_mp4(path, frames, fps=25)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    (root / "media").mkdir()
    (root / "curate").mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for v in range(3):
        vid = f"vid{v}"
        _video(root / "media" / f"{vid}.mp4", seed=v)
        for k in range(3):
            s, e = k * 6, k * 6 + 6
            rejected = (v == 2 and k == 2)
            rows.append(dict(clip_id=clip_id(vid, s, e), video_id=vid, url=f"http://127.0.0.1/{vid}.mp4",
                             media_path=f"media/{vid}.mp4", start_frame=s, end_frame=e, start_s=s / 25, end_s=e / 25,
                             duration_s=(e - s) / 25 + rng.uniform(0, 3), fps=25.0, crop_x0=30, crop_y0=10,
                             crop_size=200, face_w_ratio=rng.normal(0.45, 0.03), face_h_ratio=rng.normal(0.53, 0.03),
                             quality=rng.uniform(30, 80), quality_scorer="sharpness-v1", resolution=200,
                             status="rejected" if rejected else "accepted", reason="quality" if rejected else ""))
    pq.write_table(pa.Table.from_pylist(rows, schema=CLIPS), root / "curate" / "clips.parquet")
    pd.DataFrame([{"video_id": "vid2", "start_frame": 12, "end_frame": 18, "reason": "quality"},
                  {"video_id": "vid9", "start_frame": 0, "end_frame": 10, "reason": "no_face"},
                  {"video_id": "vid9", "start_frame": 10, "end_frame": 30, "reason": "multi_face"},
                  {"video_id": "vid8", "start_frame": 0, "end_frame": 30, "reason": "no_face"}]
                 ).to_parquet(root / "curate" / "rejections.parquet")
    pd.DataFrame([{"video_id": f"vid{v}", "status": "ok"} for v in range(3)] +
                 [{"video_id": "gone", "status": "failed"}]).to_parquet(root / "curate" / "videos.parquet")
    return root


def test_report_figures_html_and_json_match_manifest(data_root):
    r = build_report(data_root)
    out = data_root / "report"
    html = (out / "index.html").read_text()
    for key in ["duration_s", "quality", "resolution", "face_w_ratio", "face_h_ratio", "rejections", "accepted",
                "rejected"]:
        f = out / r["figures"][key]
        with Image.open(f) as im:
            im.verify()
            assert im.format == "PNG"
        assert f'src="{f.name}"' in html
    clips = pd.read_parquet(data_root / "curate" / "clips.parquet")
    acc = clips[clips.status == "accepted"]
    j = json.loads((out / "report.json").read_text())
    assert j["counts"]["accepted"] == len(acc) == 8
    for col in ["duration_s", "quality", "face_w_ratio", "face_h_ratio", "resolution"]:
        assert j["stats"][col]["mean"] == pytest.approx(acc[col].mean())
        assert j["stats"][col]["std"] == pytest.approx(acc[col].std(ddof=0))
    assert j["rejection_reasons"] == {"quality": 1, "no_face": 2, "multi_face": 1, "video: failed": 1}
    assert j["contact_sheet_clips"] == 8
    assert j["tsne_clip"]["status"].startswith("unavailable")


def test_report_cli_errors_cleanly_without_manifest(tmp_path, capsys):
    assert main(["--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("report: error: no clips manifest") and "\n" not in err


def test_report_renders_in_headless_chromium(data_root, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium is installed by `make test` (apt package chromium)"
    build_report(data_root)
    shot = tmp_path / "shot.png"
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600",
                    f"--screenshot={shot}", (data_root / "report" / "index.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    # A blank page is one flat colour; rendered histograms put many distinct colours and dark text on it.
    assert img.std() > 20
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50
    # The histogram bars' blue (#4a78b0) must be on screen, i.e. the <img> figures loaded.
    blue = (np.abs(img - [0x4a, 0x78, 0xb0]).sum(axis=2) < 30).mean()
    assert blue > 0.001


def _shards_with_mesh(root, extents: dict) -> None:
    """Indexed shards whose samples carry a face mesh spanning exactly (w, h) of the crop on every frame with
    a face, except one frame per clip twice as wide (the median ignores it) and one frame without a face."""
    from pipeline.shards.io import npy_bytes, save_index, write_shard

    rng = np.random.default_rng(3)
    samples = []
    for cid, (w, h) in extents.items():
        lm = np.empty((5, 478, 3), np.float32)
        x0, y0 = 0.5 - w / 2, 0.45 - h / 2
        lm[..., 0] = rng.uniform(x0, x0 + w, (5, 478))
        lm[..., 1] = rng.uniform(y0, y0 + h, (5, 478))
        lm[..., 2] = rng.normal(0, 0.02, (5, 478))
        lm[:, 0, :2], lm[:, 1, :2] = (x0, y0), (x0 + w, y0 + h)          # the extremes, exactly
        lm[3, 1, 0] = x0 + 2 * w                                          # an outlier frame
        ok = np.array([True, True, False, True, True])
        lm[2] = np.nan
        meta = {"clip_id": cid, "video_id": "v", "origin": "video"}
        samples.append((cid, [("landmarks.npy", npy_bytes(lm)), ("landmarks_ok.npy", npy_bytes(ok)),
                              ("meta.json", json.dumps(meta).encode())]))
    sdir = root / "shards"
    sdir.mkdir()
    save_index(sdir, {"shards": [write_shard(sdir / "faces-000000.tar", samples)]})


def test_face_ratios_are_measured_on_the_face_mesh_and_the_sheet_says_how_much_it_shows(data_root, tmp_path):
    root = tmp_path / "r"
    shutil.copytree(data_root, root, ignore=shutil.ignore_patterns("report"))
    clips = pd.read_parquet(root / "curate" / "clips.parquet")
    clips["face_h_ratio"] = clips["face_w_ratio"]                 # square detector boxes, as MediaPipe's are
    pq.write_table(pa.Table.from_pandas(clips, schema=CLIPS, preserve_index=False), root / "curate" / "clips.parquet")
    acc = clips[clips.status == "accepted"]
    # every accepted clip but the last is in the shards, with a known face extent
    extents = {cid: (0.40 + 0.01 * k, 0.50 + 0.01 * k) for k, cid in enumerate(acc["clip_id"][:-1])}
    _shards_with_mesh(root, extents)
    r = build_report(root, max_sheet=5)
    fr = r["face_ratios"]
    assert (fr["measure"], fr["clips"], fr["accepted"]) == ("face mesh", 7, 8)
    assert r["stats"]["face_h_ratio"]["mean"] == pytest.approx(np.mean([h for _, h in extents.values()]), abs=1e-6)
    assert r["stats"]["face_w_ratio"]["mean"] == pytest.approx(np.mean([w for w, _ in extents.values()]), abs=1e-6)
    assert r["stats"]["face_h_ratio"]["n"] == 7
    # the boxes are reported for what they are: square, so no height
    assert fr["box"]["square_clips"] == 8 and "height ratio is the width ratio" in fr["box"]["note"]
    html = (root / "report" / "index.html").read_text()
    assert "square in 8 of 8 clips" in html and "top of forehead to chin" in html
    # the contact sheet says it holds 5 of the 8 accepted clips
    assert r["contact_sheet"] == {"shown": 5, "accepted": 8, "limit": 5,
                                  "caption": "5 of 8 accepted clips shown (the first 5 in manifest order)"}
    assert "accepted: 5 of 8 accepted clips shown" in html
    # without shards the box figures are used and say so
    shutil.rmtree(root / "shards")
    r = build_report(root)
    assert r["face_ratios"]["measure"] == "detector box" and "make shards" in r["face_ratios"]["what"]
    assert r["stats"]["face_h_ratio"]["mean"] == pytest.approx(acc["face_w_ratio"].mean())
    assert r["contact_sheet"]["caption"] == "8 of 8 accepted clips shown"


def test_the_mesh_measures_a_real_face_taller_than_its_square_box():
    """The real chain on a real face: MediaPipe's box -> place_crop -> 256 px crop -> 478-point mesh."""
    from skimage.data import astronaut

    from pipeline.curate.faces import FacesConfig, MediaPipeFaces, place_crop
    from pipeline.curate.landmarks import FaceMesh478
    from pipeline.report import mesh_face_ratios
    from pipeline.video_io import crop_square

    img = astronaut()
    cfg = FacesConfig()
    box = MediaPipeFaces(cfg)(img)[0][:4]
    crop = place_crop([box], img.shape[1], img.shape[0], cfg)
    assert crop.face_h_ratio == pytest.approx(crop.face_w_ratio, rel=1e-3)      # the box is square
    with FaceMesh478(static=True) as mesh:
        lm, ok = mesh.batch(crop_square(img, crop.x0, crop.y0, crop.size, 256)[None])
    w, h = mesh_face_ratios(lm, ok)
    # a face is taller (forehead to chin) than wide (cheek to cheek): measured here w 0.44, h 0.51
    assert h / w > 1.1 and abs(w - crop.face_w_ratio) < 0.05
def test_report_identity_panel_and_statistics(data_root, tmp_path):
    """Figure 7's identity panel (t-SNE of per-clip identity embeddings) and the identity statistics beside the
    paper's 1M clips / 53k identities, from the clips' identity columns."""
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    t = pq.read_table(root / "curate" / "clips.parquet").to_pylist()
    rng = np.random.default_rng(0)
    people = {"pA": rng.normal(0, 0.09, 128), "pB": rng.normal(0, 0.09, 128)}
    for r in t:          # vid0 and vid2 show pA, vid1 pB
        who = "pB" if r["video_id"] == "vid1" else "pA"
        if r["status"] == "accepted":
            r.update(identity=(people[who] + rng.normal(0, 0.02, 128)).tolist(), identity_model="dlib-resnet-v1",
                     identity_frames=3, identity_id=who)
    pq.write_table(pa.Table.from_pylist(t, schema=CLIPS), root / "curate" / "clips.parquet")
    r = build_report(root)
    ids = r["identities"]
    assert ids["status"] == "ok" and ids["identities"] == 2 and ids["clips"] == 8
    assert ids["clips_per_identity"]["counts"] == [5, 3] and ids["videos_per_identity"] == 1.5
    assert ids["paper"] == {"clips": 1_000_000, "identities": 53_000, "clips_per_identity": 18.9}
    assert r["tsne_identity"]["status"] == "ok" and r["tsne_identity"]["points"] == 8
    html = (root / "report" / "index.html").read_text()
    for key in ("identities", "tsne_identity"):
        with Image.open(root / "report" / r["figures"][key]) as im:
            im.verify()
        assert f'src="{r["figures"][key]}"' in html
    assert "2 people in 8 accepted clips" in html and "53,000 identities" in html
    # without identity columns filled: said, not drawn
    assert build_report(data_root)["identities"]["status"].startswith("unavailable")
