"""The insightface backend (SCRFD + ArcFace) through its real loading path, on tiny ONNX models of the
same classes built in tests/onnxfixtures.py: a detector whose face is a white-outlined marker (so the
true box is known) and a fixed random-projection recogniser. What is asserted is our wrapper: frame
coordinates after SCRFD's letterbox, landmarks travelling with their face, the ArcFace threshold,
errors, and a curate run whose crops come from the detector's boxes."""
from __future__ import annotations

import socket

import numpy as np
import pytest
from onnxfixtures import (
    ARCFACE_DST,
    arcface_projection,
    astronaut_face,
    buffalo_dir,
    hopper_face,
    marker_face,
)

from pipeline.curate.faces import FacesConfig, hs_histogram, make_detector, place_crop, signature_distance
from pipeline.curate.probe import scan
from pipeline.curate.tracking import Det, FaceScanner, disagreement, segment
from pipeline.video_io import write_mp4


def _frame(w, h, tiles=(), bg=60):
    f = np.full((h, w, 3), bg, np.uint8)
    for x, y, tile in tiles:
        f[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    return f


def _white(side):
    return np.full((side, side, 3), 255, np.uint8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return buffalo_dir(tmp_path_factory.mktemp("buffalo_l"))


@pytest.fixture(scope="module")
def cfg(model_dir):
    return FacesConfig(backend="insightface", model_dir=str(model_dir))


@pytest.fixture(scope="module")
def det(cfg):
    return make_detector(cfg)


@pytest.fixture(scope="module")
def tiles():
    return {"astronaut": marker_face(astronaut_face(), 80), "hopper": marker_face(hopper_face(), 80)}


def test_real_classes_load_offline_on_cpu(cfg, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("network touched")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    d = make_detector(cfg)
    assert (type(d._det).__name__, type(d._rec).__name__) == ("SCRFD", "ArcFaceONNX")
    assert d._det.static_input_size is None                  # dynamic input like det_10g: sized by prepare
    faces = d(_frame(320, 240, [(40, 60, _white(64))]))   # inside the left half
    assert len(faces) == 1
    assert d._det.resolution_session_input_sizes == (d.DET_SIZE,)    # the 320x320 session really ran
    for s in (d._det.session, d._rec.session):
        assert s.get_providers() == ["CPUExecutionProvider"]
        assert s.get_session_options().intra_op_num_threads == 1


@pytest.mark.parametrize("w,h,rect", [
    (640, 360, (200, 100, 100, 160)),    # landscape: letterboxed below
    (360, 640, (40, 300, 120, 90)),      # portrait: letterboxed to the right
    (256, 144, (30, 20, 61, 77)),        # a probe small frame, odd box: scale 1.25 up
])
def test_box_is_in_relative_frame_coordinates(det, w, h, rect):
    x, y, bw, bh = rect
    f = _frame(w, h)
    f[y:y + bh, x:x + bw] = 255
    faces = det(f)
    assert len(faces) == 1
    got = np.array(faces[0][:4])
    want = np.array([x / w, y / h, bw / w, bh / h])
    assert np.abs((got - want) * [w, h, w, h]).max() <= 1.0, (got * [w, h, w, h], rect)   # within 1 source px
    assert faces[0][4] > 0.75
    # landmarks: pixels of this frame, ArcFace's template on the box (what the tiny detector encodes)
    assert faces[0].kps.shape == (5, 2)
    np.testing.assert_allclose(faces[0].kps, np.float32([x, y]) + ARCFACE_DST / 112 * [bw, bh], atol=1.5)


def test_scanner_states_from_scrfd(det, cfg, tmp_path):
    frames = [_frame(320, 240, [(40, 60, _white(80))]) for _ in range(16)]                      # ok
    frames += [_frame(320, 240, [(40, 60, _white(80)), (200, 60, _white(70))]) for _ in range(16)]  # two faces
    frames += [_frame(320, 240) for _ in range(16)]                                              # none
    frames += [_frame(320, 240, [(200, 40, _white(90))]) for _ in range(16)]                     # ok, other place
    p = tmp_path / "states.mp4"
    write_mp4(p, frames, 25)
    c = FacesConfig(**{**cfg.__dict__, "stride": 4})
    fs = FaceScanner(c, det, 320)
    dets = fs.finish(scan(p, 256, {"faces": fs.update}))
    spans, bad = segment(dets, [], c)
    assert [(s.start, s.end) for s in spans] == [(0, 16), (48, 64)]
    assert bad == [(16, 32, "multi_face"), (32, 48, "no_face")]
    assert {dets[i].faces for i in dets if 16 <= i < 32} == {2}
    assert {dets[i].sig_kind for i in dets if dets[i].state == "ok"} == {"arcface"}
    tiny = FacesConfig(**{**c.__dict__, "min_face_px": 100})          # 80 and 90 px faces are now "small"
    fs = FaceScanner(tiny, det, 320)
    dets = fs.finish(scan(p, 256, {"faces": fs.update}))
    assert {dets[i].state for i in dets if i < 16 or i >= 48} == {"small"}


def test_arcface_signature_follows_its_face(det, tiles):
    a, h = tiles["astronaut"], tiles["hopper"]
    fa = _frame(320, 240, [(40, 60, a)])
    (face,) = det(fa)
    sa = det.signature(fa, face)
    assert sa.shape == (512,) and sa.dtype == np.float32
    assert np.linalg.norm(sa) == pytest.approx(1.0, abs=1e-5)
    assert signature_distance(sa, det.signature(fa.copy(), det(fa.copy())[0]), "arcface") < 1e-6
    fh = _frame(320, 240, [(180, 100, h)])
    sh = det.signature(fh, det(fh)[0])
    d_ah = signature_distance(sa, sh, "arcface")
    assert d_ah > 0.1                                                          # another face, another embedding
    # alignment on the landmarks: the same face elsewhere in the frame embeds the same
    moved = _frame(320, 240, [(200, 20, a)])
    assert signature_distance(sa, det.signature(moved, det(moved)[0]), "arcface") < 0.01
    # two faces in one frame: each signature uses its own landmarks (no side table to mix them up)
    both = _frame(320, 240, [(40, 60, a), (180, 100, h)])
    faces = det(both)
    assert len(faces) == 2
    by_x = sorted(faces, key=lambda f: f[0])
    assert signature_distance(det.signature(both, by_x[0]), sa, "arcface") < 0.01
    assert signature_distance(det.signature(both, by_x[1]), sh, "arcface") < 0.01
    # a box without landmarks (SCRFD export without kps) is aligned by ArcFace's template on the box
    assert signature_distance(det.signature(fa, tuple(face)), sa, "arcface") < 0.01


def test_identity_threshold_depends_on_the_signature_kind(det, tiles):
    fa, fh = _frame(320, 240, [(40, 60, tiles["astronaut"])]), _frame(320, 240, [(40, 60, tiles["hopper"])])
    box = tuple(det(fa)[0][:4])
    ea, eh = det.signature(fa, det(fa)[0]), det.signature(fh, det(fh)[0])
    d = signature_distance(ea, eh, "arcface")
    arc1, arc2 = Det("ok", box, 1, ea, "arcface"), Det("ok", box, 1, eh, "arcface")
    assert disagreement(arc1, arc2, FacesConfig(identity_threshold=0.0, arcface_identity_threshold=d + 0.01)) == ""
    assert disagreement(arc1, arc2, FacesConfig(identity_threshold=9.0, arcface_identity_threshold=d - 0.01)) \
        == "identity"
    ha, hh = hs_histogram(fa, box), hs_histogram(fh, box)
    b = signature_distance(ha, hh, "hs-histogram")
    assert 0 < b < 1
    hist1, hist2 = Det("ok", box, 1, ha), Det("ok", box, 1, hh)
    assert disagreement(hist1, hist2, FacesConfig(identity_threshold=b + 0.01, arcface_identity_threshold=0.0)) == ""
    assert disagreement(hist1, hist2, FacesConfig(identity_threshold=b - 0.01, arcface_identity_threshold=9.0)) \
        == "identity"
    assert disagreement(hist1, arc2, FacesConfig(identity_threshold=0.0, arcface_identity_threshold=0.0)) == ""
    assert FacesConfig().arcface_identity_threshold != FacesConfig().identity_threshold


def test_identity_change_located_by_bisection(det, cfg, tiles, tmp_path):
    frames = [_frame(320, 240, [(100, 60, tiles["astronaut"])]) for _ in range(37)]
    frames += [_frame(320, 240, [(100, 60, tiles["hopper"])]) for _ in range(35)]
    p = tmp_path / "swap.mp4"
    write_mp4(p, frames, 25)
    ea = det.signature(frames[0], det(frames[0])[0])
    eh = det.signature(frames[-1], det(frames[-1])[0])
    c = FacesConfig(**{**cfg.__dict__, "stride": 8,
                       "arcface_identity_threshold": signature_distance(ea, eh, "arcface") / 2})
    fs = FaceScanner(c, det, 320)
    dets = fs.finish(scan(p, 256, {"faces": fs.update}))
    spans, bad = segment(dets, [], c)
    assert [(s.start, s.end) for s in spans] == [(0, 37), (37, 72)] and bad == []
    assert spans[0].end_split == "identity"
    assert fs.calls < 72 / 2


def test_clear_errors_for_missing_corrupt_and_swapped_files(tmp_path):
    (tmp_path / "det_10g.onnx").write_bytes(b"\0")
    with pytest.raises(FileNotFoundError, match="missing w600k_r50.onnx ") as e:      # names only what is missing
        make_detector(FacesConfig(backend="insightface", model_dir=str(tmp_path)))
    assert str(tmp_path) in str(e.value)
    (tmp_path / "w600k_r50.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ValueError) as e:
        make_detector(FacesConfig(backend="insightface", model_dir=str(tmp_path)))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "det_10g.onnx") in msg and "SCRFD" in msg
    arcface_projection(tmp_path / "det_10g.onnx")          # a valid model of the wrong class
    with pytest.raises(ValueError, match="is not an SCRFD face detector.*ArcFaceONNX"):
        make_detector(FacesConfig(backend="insightface", model_dir=str(tmp_path)))


def test_curate_analysis_with_insightface(model_dir, tiles, tmp_path, monkeypatch):
    """analyse_video (what the Ray actor runs) with the DAG file's parameters and backend=insightface.
    What is judged here is the backend's boxes, splits and crops; the face-mesh verification (tests in
    test_verify.py) cannot find a mesh on these 80 px marker tiles, so it is switched off for this test."""
    from pathlib import Path

    from pipeline.curate import filters
    from pipeline.curate.stages import Models, analyse_video, load_dag

    monkeypatch.setattr(filters, "face_reason", lambda face, cfg: "")

    cfg = load_dag(Path(__file__).resolve().parents[1] / "dags" / "curate.yaml")
    cfg.faces.backend, cfg.faces.model_dir = "insightface", str(model_dir)
    W, H = 384, 216
    ra, rh = (60, 68, 80, 80), (230, 68, 80, 80)
    a, h = (ra[0], ra[1], tiles["astronaut"]), (rh[0], rh[1], tiles["hopper"])
    frames = [_frame(W, H, [a]) for _ in range(50)] + [_frame(W, H, [a, h]) for _ in range(25)]
    frames += [_frame(W, H, [h]) for _ in range(50)]
    media = tmp_path / "data" / "media" / "v.mp4"
    write_mp4(media, frames, 25)
    res = analyse_video(media, "v", "http://127.0.0.1/v", "media/v.mp4", cfg, Models(cfg))
    clips = res["clips"]
    assert [(c["start_frame"], c["end_frame"], c["status"]) for c in clips] == \
        [(0, 50, "accepted"), (75, 125, "accepted")], [(c["reason"], c.get("face_confidence"), c.get("landmark_rate"), c.get("pad_fraction")) for c in clips]
    assert ("faces", "multi_face") in {(r["stage"], r["reason"]) for r in res["rejections"]
                                       if r["start_frame"] == 50 and r["end_frame"] == 75}
    # SCRFD sees the 256x144 small frame: the marker's edges are found to ~1 small px (1.5 px here),
    # and the crop side is 1/0.45 = 2.2x the face width: centre within 2 px, side within 8 px
    for c, r in zip(clips, (ra, rh)):
        want = place_crop([(r[0] / W, r[1] / H, r[2] / W, r[3] / H)], W, H, cfg.faces)
        centre = np.array([c["crop_x0"], c["crop_y0"]]) + c["crop_size"] / 2
        assert np.abs(centre - [want.x0 + want.size / 2, want.y0 + want.size / 2]).max() <= 2, (c, want)
        assert abs(c["crop_size"] - want.size) <= 8, (c, want)
        assert c["face_w_ratio"] == pytest.approx(cfg.faces.face_w_ratio, abs=0.01)
    assert res["detections"] < 125 / 2
