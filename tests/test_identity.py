"""Face identity on real photos that ship inside installed packages (dlib's real face-recognition ResNet),
the tracking rule it decides, frame hashes, and the dataset-level identity clusters and duplicates."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.curate.identity import DlibIdentity, dhash, distance, hamming

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def enc():
    return DlibIdentity()


@pytest.fixture(scope="module")
def photos():
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = np.asarray(Image.open(f).convert("RGB")).copy()
    t1 = Path(list(importlib.util.find_spec("insightface").submodule_search_locations)[0]) / "data" / "images" / "t1.jpg"
    return {"astronaut": skimage.data.astronaut()[..., :3].copy(), "hopper": hopper,
            "group": np.asarray(Image.open(t1).convert("RGB")).copy()}


def test_model_files_are_found_without_importing_their_package():
    code = ("import sys; from pipeline.curate.identity import dlib_model_files; f = dlib_model_files(); "
            "assert all(p.is_file() and p.stat().st_size > 1e6 for p in f.values()), f; "
            "assert 'face_recognition_models' not in sys.modules and 'pkg_resources' not in sys.modules; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-800:]


def test_package_photos_are_distinct_people_and_the_same_person_is_close(enc, photos):
    import dlib

    ast, hop, group = photos["astronaut"], photos["hopper"], photos["group"]
    e_ast, e_hop = enc.photo(ast), enc.photo(hop)
    # the same photo mirrored, or at half size: one person (dlib's rule: below 0.6; measured 0.18 / 0.11)
    assert distance(e_ast, enc.photo(np.ascontiguousarray(ast[:, ::-1])), "euclidean") < 0.3
    small = np.asarray(__import__("PIL.Image").Image.fromarray(hop).resize((hop.shape[1] // 2, hop.shape[0] // 2)))
    assert distance(e_hop, enc.photo(small), "euclidean") < 0.3
    # the six people of insightface's group photo (faces found by dlib's own detector), the astronaut and
    # Grace Hopper: eight different people, every pair above dlib's 0.6 (measured: smallest 0.625)
    h, w = group.shape[:2]
    rects = dlib.get_frontal_face_detector()(group, 1)
    assert len(rects) == 6
    boxes = [(r.left() / w, (r.top() + 0.05 * r.height()) / h, r.width() / w, r.height() / h) for r in rects]
    e = np.concatenate([enc.faces(group, boxes), np.stack([e_ast, e_hop])])
    d = distance(e[:, None], e[None], "euclidean")[np.triu_indices(len(e), 1)]
    assert len(d) == 28 and d.min() > 0.6, np.sort(d)[:4]
    assert enc.identity(e_ast).same_person(enc.identity(e_ast + 0.01))
    assert not enc.identity(e_ast).same_person(enc.identity(e_hop))


def test_torch_runtime_gives_dlibs_own_descriptors(enc, photos):
    """The ResNet's weights read from the .dat file and run by torch (pipeline/curate/dlib_resnet.py) give
    what dlib's own runtime gives, on aligned chips of eight real faces plus a mirrored and a noise chip.
    Tolerance 1e-4 (descriptor norms ~1.3): float32 sums in another order; measured ~1e-6."""
    import dlib

    from pipeline.curate.identity import dlib_model_files

    group = photos["group"]
    h, w = group.shape[:2]
    rects = dlib.get_frontal_face_detector()(group, 1)
    chips = [enc.chip(group, (r.left() / w, (r.top() + 0.05 * r.height()) / h, r.width() / w, r.height() / h))
             for r in rects]
    for name in ("astronaut", "hopper"):
        chips.append(enc.chip(photos[name], enc._hog_faces(photos[name])[0][:4]))
    chips.append(np.ascontiguousarray(chips[0][:, ::-1]))
    chips.append((np.random.default_rng(0).random((150, 150, 3)) * 255).astype(np.uint8))
    assert len(chips) == 10
    ref = dlib.face_recognition_model_v1(str(dlib_model_files()["resnet"])).compute_face_descriptor(chips)
    ref = np.asarray([np.asarray(d) for d in ref], np.float32)
    ours = enc.embed_chips(chips)
    assert ours.shape == (10, 128) and np.abs(ref).max() > 0.05
    assert np.abs(ours - ref).max() < 1e-4, np.abs(ours - ref).max()


def test_a_file_that_is_not_the_resnet_is_refused_in_one_line(tmp_path):
    from pipeline.curate.dlib_resnet import read_dat
    from pipeline.curate.identity import dlib_model_files

    with pytest.raises(ValueError, match="not dlib's face-recognition ResNet"):
        read_dat(dlib_model_files()["shape"])          # dlib's shape predictor: a .dat of another kind
    cut = tmp_path / "cut.dat"
    cut.write_bytes(dlib_model_files()["resnet"].read_bytes()[:2_000_000])   # truncated mid-way
    with pytest.raises(ValueError, match="not dlib's face-recognition ResNet|beyond the end"):
        read_dat(cut)


def test_a_crop_made_by_the_crop_rule_embeds_like_the_photo(enc, photos):
    """Shard crops and generated frames are embedded without a detector (the face is where the crop rule
    put it): the crop of a photo must give the photo's identity."""
    from pipeline.curate.faces import FacesConfig, make_detector, place_crop
    from pipeline.video_io import crop_square

    det = make_detector(FacesConfig(mediapipe_model=1))
    for name in ("astronaut", "hopper"):
        img = photos[name]
        c = place_crop([det(img)[0][:4]], img.shape[1], img.shape[0], FacesConfig())
        crop = crop_square(img, c.x0, c.y0, c.size, 256)
        assert distance(enc.crops([crop])[0], enc.photo(img), "euclidean") < 0.3
    with pytest.raises(ValueError, match="no face"):
        enc.photo(np.full((200, 200, 3), 127, np.uint8))


def test_arcface_backend_loads_a_local_onnx_file(tmp_path, photos):
    sys.path.insert(0, str(Path(__file__).parent))
    from onnxfixtures import arcface_projection

    from pipeline.curate.identity import IdentityConfig, make_encoder

    with pytest.raises(FileNotFoundError, match="w600k_r50.onnx"):
        make_encoder(IdentityConfig(backend="arcface", arcface_model=str(tmp_path / "missing.onnx")))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="cannot load"):
        make_encoder(IdentityConfig(backend="arcface", arcface_model=str(bad)))
    enc = make_encoder(IdentityConfig(backend="arcface", arcface_model=str(arcface_projection(tmp_path / "a.onnx"))))
    assert (enc.name, enc.metric, enc.dim, enc.chip_size) == ("arcface-w600k_r50", "cosine", 512, 112)
    a = enc.photo(photos["astronaut"])
    assert a.shape == (512,) and np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(enc.photo(photos["astronaut"]), a)          # deterministic
    assert distance(a, enc.photo(photos["hopper"]), "cosine") > 1e-3   # a projection, not recognition


def test_frame_hash_survives_reencoding_not_other_pictures(photos):
    import cv2

    g = cv2.cvtColor(photos["astronaut"], cv2.COLOR_RGB2GRAY)
    ok, jpg = cv2.imencode(".jpg", cv2.resize(g, (300, 300)), [cv2.IMWRITE_JPEG_QUALITY, 30])
    again = cv2.imdecode(jpg, cv2.IMREAD_GRAYSCALE)
    other = cv2.cvtColor(photos["hopper"], cv2.COLOR_RGB2GRAY)
    h = dhash(g)
    assert isinstance(h, int) and -2 ** 63 <= h < 2 ** 63
    assert hamming(h, dhash(again)) <= 4
    assert hamming(h, dhash(other)) > 16 and hamming(h, dhash(np.ascontiguousarray(g[:, ::-1]))) > 16
    assert hamming(np.array([h, h]), np.array([h, dhash(other)])).tolist() == [0, hamming(h, dhash(other))]


# ---------------------------------------------------------------- tracking

def _detector():
    from pipeline.curate.faces import FacesConfig, make_detector

    return make_detector(FacesConfig())


def _scan(frames, identity):
    from types import SimpleNamespace

    from pipeline.curate.faces import FacesConfig
    from pipeline.curate.tracking import FaceScanner, segment

    cfg = FacesConfig(stride=4)
    sc = FaceScanner(cfg, _detector(), 512, identity=identity)
    for i, f in enumerate(frames):
        sc.update(SimpleNamespace(index=i, small=f, time=i / 25))
    spans, _ = segment(sc.finish(len(frames)), [], cfg)
    return [(sp.start, sp.end) for sp in spans]


def test_tracking_asks_the_identity_embedding_where_the_colour_histogram_sees_a_change(enc, photos):
    import cv2

    def face(img):   # a square around the face, at 256: the faces fill about half of it, at one place
        return cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA)

    ast = face(photos["astronaut"][21:221, 120:320])
    hop = face(photos["hopper"][44:444, 68:468])
    hsv = cv2.cvtColor(ast, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + 60) % 180          # a strong colour cast: same person
    tinted = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    relit, swapped = [ast] * 12 + [tinted] * 12, [ast] * 12 + [hop] * 12
    assert _scan(relit, None) == [(0, 12), (12, 24)]           # the histogram alone splits a recoloured face
    assert _scan(relit, enc) == [(0, 24)]                      # the identity says: the same person
    assert _scan(swapped, enc) == [(0, 12), (12, 24)]          # another person is still a split, to the frame
    assert _scan([ast] * 24, enc) == [(0, 24)]


# ---------------------------------------------------------------- dataset-level identities and duplicates

def _clip(vid, start, person, footage, n=6, jitter=0.0, seed=0):
    """A clip row as curate writes it: a synthetic dlib-scale identity and frame hashes of its footage."""
    from pipeline.ids import clip_id

    rng = np.random.default_rng([seed, start, len(vid)])
    emb = person + rng.normal(0, 0.02, 128)
    base = np.random.default_rng(footage).integers(-2 ** 62, 2 ** 62, size=(2, 40))
    flips = (rng.random((2, n, 64)) < jitter)                     # bits a re-encode flips
    hashes = base[:, start:start + n] ^ (np.packbits(flips, axis=-1).view(">i8").reshape(2, n) if jitter else 0)
    return {"clip_id": clip_id(vid, start, start + 30), "video_id": vid, "url": f"http://x/{vid}", "start_frame": start,
            "end_frame": start + 30, "start_s": start / 30, "end_s": (start + 30) / 30, "duration_s": 1.0,
            "status": "accepted", "reason": "", "identity": emb.tolist(), "identity_model": "dlib-resnet-v1",
            "face_hashes": [int(v) for v in hashes[0]], "frame_hashes": [int(v) for v in hashes[1]]}


def _states(rows):
    out = {}
    for r in rows:
        out.setdefault(r["video_id"], {"video_id": r["video_id"], "video": {"status": "ok"}, "clips": [],
                                       "rejections": []})["clips"].append(dict(r))
    return list(out.values())


def _assign(root, states):
    from pipeline.curate.clusters import ManifestConfig, assign
    from pipeline.curate.identity import IdentityConfig

    return assign(root, states, ManifestConfig(), IdentityConfig())


def test_identities_are_stable_under_reruns_order_and_new_batches(tmp_path):
    from pipeline.paths import DataRoot

    rng = np.random.default_rng(7)
    alice, bob, carol = (rng.normal(0, 0.09, 128) for _ in range(3))   # ~1.3 apart: three people
    batch1 = [_clip("v1", 0, alice, 1), _clip("v1", 40, bob, 2), _clip("v2", 0, alice, 3), _clip("v3", 0, bob, 4)]
    root = DataRoot.of(tmp_path / "a")
    s1 = _states(batch1)
    st = _assign(root, s1)
    ids = {r["clip_id"]: r["identity_id"] for s in s1 for r in s["clips"]}
    assert st["identities"] == 2 and st["duplicates"] == 0
    assert ids[batch1[0]["clip_id"]] == ids[batch1[2]["clip_id"]] != ids[batch1[1]["clip_id"]] == ids[batch1[3]["clip_id"]]
    # the same clips in another order, in another data root: the same ids (named after the first clip)
    other = DataRoot.of(tmp_path / "b")
    s2 = _states(batch1[::-1])
    _assign(other, s2)
    assert {r["clip_id"]: r["identity_id"] for s in s2 for r in s["clips"]} == ids
    # a re-run answers from the registry; a new batch joins the old identities and never renumbers them
    s3 = _states(batch1 + [_clip("v4", 0, bob, 5), _clip("v5", 0, carol, 6)])
    st = _assign(root, s3)
    got = {r["clip_id"]: r["identity_id"] for s in s3 for r in s["clips"]}
    assert {k: got[k] for k in ids} == ids and st["new_identities"] == 1 and st["identities"] == 3
    assert got[_clip("v4", 0, bob, 5)["clip_id"]] == ids[batch1[1]["clip_id"]]


def test_duplicates_are_rejected_naming_the_first_copy(tmp_path):
    from pipeline.curate.clusters import copies_of, duplicate_links, forget
    from pipeline.paths import DataRoot

    rng = np.random.default_rng(3)
    alice, bob = rng.normal(0, 0.09, 128), rng.normal(0, 0.09, 128)
    orig = _clip("a_orig", 0, alice, footage=11)
    mirror = _clip("b_mirror", 0, alice, footage=11, seed=1)              # the same file under another URL
    reup = _clip("c_reupload", 0, alice, footage=11, jitter=0.04, seed=2)  # re-encoded: ~5 of 128 bits flip
    overlap = dict(_clip("d_recut", 3, alice, footage=11, seed=3))        # another cut, overlapping 3/6 samples
    fresh = _clip("e_other_talk", 0, alice, footage=12)                   # same person, other footage
    twin = _clip("f_bob", 0, bob, footage=11)                             # same footage hashes, other person
    root = DataRoot.of(tmp_path)
    states = _states([orig, mirror, reup, overlap, fresh, twin])
    st = _assign(root, states)
    rows = {r["video_id"]: r for s in states for r in s["clips"]}
    for v in ("b_mirror", "c_reupload", "d_recut"):
        assert rows[v]["status"] == "rejected" and rows[v]["reason"] == "duplicate"
        assert rows[v]["duplicate_of"] == orig["clip_id"] and rows[v]["identity_id"] == rows["a_orig"]["identity_id"]
    for v in ("a_orig", "e_other_talk", "f_bob"):
        assert rows[v]["status"] == "accepted" and rows[v]["duplicate_of"] is None
    assert st["duplicates"] == 3 and st["identities"] == 2
    rej = [r for s in states for r in s["rejections"]]
    assert sorted(r["video_id"] for r in rej) == ["b_mirror", "c_reupload", "d_recut"]
    assert {r["stage"] for r in rej} == {"identity"}
    # the links survive an opt-out of the original (ids only): every copy is found from any one of them
    links = duplicate_links(root)
    assert copies_of({mirror["clip_id"]}, links) == {orig["clip_id"], reup["clip_id"], overlap["clip_id"]}
    forget(root, {orig["clip_id"]})
    assert copies_of({orig["clip_id"]}, duplicate_links(root)) == {mirror["clip_id"], reup["clip_id"],
                                                                    overlap["clip_id"]}


def test_later_clips_of_one_static_shot_are_not_copies_of_its_first(tmp_path):
    """One video, one person, one background: its clips hash alike frame to frame, yet only a clip
    overlapping another's frames can be a copy of it."""
    from pipeline.paths import DataRoot

    alice = np.random.default_rng(5).normal(0, 0.09, 128)
    first, later = _clip("talk", 0, alice, footage=21), _clip("talk", 0, alice, footage=21, seed=4)
    later = {**later, "start_frame": 30, "end_frame": 60, "clip_id": "c" * 16}    # the next 30 frames
    recut = {**_clip("talk", 0, alice, footage=21, seed=5), "start_frame": 15, "end_frame": 45, "clip_id": "d" * 16}
    states = _states([first, later, recut])
    st = _assign(DataRoot.of(tmp_path), states)
    rows = {r["clip_id"]: r for s in states for r in s["clips"]}
    assert rows["c" * 16]["status"] == "accepted" and rows["c" * 16]["duplicate_of"] is None
    assert rows["d" * 16]["reason"] == "duplicate" and st["duplicates"] == 1


def test_optout_csv_may_name_a_face_photo(tmp_path, photos):
    from PIL import Image

    from pipeline.curate.sources import ManifestError, load_optout

    (tmp_path / "faces").mkdir()
    Image.fromarray(photos["hopper"]).save(tmp_path / "faces" / "grace.jpg")
    (tmp_path / "faces" / "notes.txt").write_text("not an image")
    p = tmp_path / "optout.csv"
    p.write_text("video_id_or_url,date,reason,face_photo\nvidA,2026-01-02,,\n,2026-01-03,me,faces/grace.jpg\n")
    oo = load_optout(p)
    assert [e.photo for e in oo.photos] == [str(tmp_path / "faces" / "grace.jpg")]
    assert oo.matches("vidA", "") and not oo.matches("", "") and oo.ids == frozenset({"vidA"})
    for row, why in [(",2026-01-03,,faces/missing.jpg", "row 2: face_photo not found"),
                     (",2026-01-03,,faces/notes.txt", "row 2: face_photo is not a JPEG"),
                     (",2026-01-03,,", "row 2: empty video_id_or_url")]:
        p.write_text("video_id_or_url,date,reason,face_photo\n" + row + "\n")
        with pytest.raises(ManifestError, match=why):
            load_optout(p)
    # the three-column file of older checkouts still reads
    p.write_text("video_id_or_url,date,reason\nvidA,2026-01-02,\n")
    assert load_optout(p).photos == []


def test_a_face_photo_without_one_face_stops_the_run_and_removes_nothing(tmp_path_factory, tmp_path):
    from PIL import Image
    from test_shards import copy_world, make_cfg, snapshot

    from pipeline.shards.build import run
    from pipeline.shards.optout import ManifestProblem

    root, models = copy_world(tmp_path_factory, tmp_path)
    snap = snapshot(root)
    Image.fromarray(np.full((240, 240, 3), 128, np.uint8)).save(root / "manifests" / "wall.png")
    (root / "manifests" / "optout.csv").write_text("video_id_or_url,date,reason,face_photo\n,2026-03-01,,wall.png\n")
    with pytest.raises(ManifestProblem, match="row 2: face_photo wall.png: no face found"):
        run(root, make_cfg(root, models, manifests=True), log=lambda m: None)
    assert snapshot(root) == snap and not (root / "shards" / "optout_audit.jsonl").exists()
    cli = subprocess.run([sys.executable, "-m", "pipeline.shards.optout", "verify", "--data", str(root),
                          "--optout", str(root / "manifests" / "optout.csv")], capture_output=True, text=True,
                         cwd=REPO)
    assert cli.returncode == 2 and "no face found" in cli.stderr and len(cli.stderr.strip().splitlines()) == 1
