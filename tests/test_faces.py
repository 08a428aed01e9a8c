"""Faces stage and tracking on small synthetic videos made from the bundled astronaut photo (real MediaPipe)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.curate.faces import FacesConfig, InsightFaces, make_detector, place_crop
from pipeline.curate.probe import scan
from pipeline.curate.tracking import Det, FaceScanner, Span, disagreement, main_face, segment, split_to_fit
from pipeline.video_io import write_mp4

W, H = 320, 240


def _face(side: int) -> np.ndarray:
    import cv2
    from skimage.data import astronaut

    return cv2.resize(astronaut()[30:250, 110:330], (side, side), interpolation=cv2.INTER_AREA)


def _frame(faces: list[tuple[int, int, int]], bg=(70, 90, 110), recolour=None) -> np.ndarray:
    f = np.zeros((H, W, 3), np.uint8)
    f[:] = bg
    for x, y, side in faces:
        img = _face(side)
        if recolour is not None:
            img = np.clip(img.astype(np.float32) * recolour, 0, 255).astype(np.uint8)[:, ::-1]
        f[y:y + side, x:x + side] = img
    return f


def _scan(path, cfg: FacesConfig, detector):
    fs = FaceScanner(cfg, detector, W)
    n = scan(path, 256, {"faces": fs.update})
    return fs, fs.finish(n), n


@pytest.fixture(scope="module")
def detector():
    return make_detector(FacesConfig())


@pytest.fixture(scope="module")
def video_gap(tmp_path_factory):
    """Face for 0..29, nothing for 30..49, face again for 50..79 (slow drift)."""
    frames = [_frame([(100 + i // 4, 40, 140)]) if not 30 <= i < 50 else _frame([]) for i in range(80)]
    p = tmp_path_factory.mktemp("faces") / "gap.mp4"
    write_mp4(p, frames, 25)
    return p


def test_face_lost_is_located_exactly_with_sparse_detection(video_gap, detector):
    cfg = FacesConfig(stride=8)
    fs, dets, n = _scan(video_gap, cfg, detector)
    spans, bad = segment(dets, [], cfg)
    assert [(s.start, s.end) for s in spans] == [(0, 30), (50, 80)]  # bisection finds both edges to the frame
    assert bad == [(30, 50, "no_face")]
    assert [(s.start_split, s.end_split) for s in spans] == [("video_start", "no_face"), ("no_face", "video_end")]
    assert fs.calls < n / 2                                          # far fewer calls than every 2nd frame


def test_multi_face_small_second_face_and_tiny_face(tmp_path, detector):
    cfg = FacesConfig(stride=4)
    frames = [_frame([(20, 50, 120), (180, 50, 120)]) for _ in range(12)]      # two comparable faces
    frames += [_frame([(20, 40, 150), (250, 170, 50)]) for _ in range(12)]     # second face 1/9 the area
    p = tmp_path / "multi.mp4"
    write_mp4(p, frames, 25)
    _, dets, _ = _scan(p, cfg, detector)
    assert {dets[i].state for i in dets if i < 12} == {"multi"}
    assert {dets[i].state for i in dets if i >= 12} == {"ok"}
    spans, bad = segment(dets, [], cfg)
    assert bad == [(0, 12, "multi_face")]
    assert [(s.start, s.end) for s in spans] == [(12, 24)]

    tiny = FacesConfig(stride=4, min_face_px=200)   # the same 150 px face is "tiny" under a 200 px floor
    _, dets, _ = _scan(p, tiny, detector)
    assert {dets[i].state for i in dets if i >= 12} == {"small"}


def test_jump_and_identity_change_split_the_track(tmp_path, detector):
    cfg = FacesConfig(stride=8)
    frames = [_frame([(40, 50, 130)]) for _ in range(24)]              # 0..23 left
    frames += [_frame([(160, 50, 130)]) for _ in range(24)]            # 24..47 jumped right (0.375 of width)
    frames += [_frame([(160, 50, 130)], recolour=np.float32([0.6, 0.9, 1.4])) for _ in range(24)]  # 48..71 other look
    p = tmp_path / "jump.mp4"
    write_mp4(p, frames, 25)
    _, dets, _ = _scan(p, cfg, detector)
    spans, _ = segment(dets, [], cfg)
    bounds = [(s.start, s.end) for s in spans]
    assert len(bounds) == 3, bounds
    assert abs(bounds[0][1] - 24) <= 1 and bounds[0][1] == bounds[1][0]    # a jump located to the frame
    assert abs(bounds[1][1] - 48) <= 1 and bounds[1][1] == bounds[2][0]    # so is an identity change
    assert [s.end_split for s in spans] == ["jump", "identity", "video_end"]


def _det(state="ok", box=(0.4, 0.3, 0.2, 0.3), t=0.0, sig=None):
    return Det(state, box if state != "none" else None, 1, np.full(128, 1 / 128, np.float32) if sig is None else sig,
               time=t)


def test_segment_tiles_the_video_splits_at_cuts_and_says_why():
    cfg = FacesConfig()
    dets = {i: _det(t=i / 25) for i in range(0, 40, 8)}
    dets.update({40: _det("none", t=40 / 25), 48: _det("none", t=48 / 25), 56: _det(t=56 / 25), 64: _det(t=64 / 25)})
    spans, bad = segment(dets, [20, 60], cfg)
    # frames between the last detection that saw a state and the first that saw the next one belong to
    # the earlier stretch: nothing falls between (the scanner bisects every change to adjacent frames)
    assert [(s.start, s.end) for s in spans] == [(0, 20), (20, 40), (56, 60), (60, 65)]
    assert bad == [(40, 56, "no_face")]
    assert [(s.start_split, s.end_split) for s in spans] == [
        ("video_start", "cut"), ("cut", "no_face"), ("no_face", "cut"), ("cut", "video_end")]
    assert spans[1].frames == [24, 32] and spans[2].frames == [56]


def test_jumps_are_judged_in_face_sizes_and_time():
    cfg = FacesConfig(max_jump_faces=0.6, max_speed_faces=4.0, max_scale_change=1.4)
    a = _det(box=(0.4, 0.3, 0.2, 0.3))
    half_face = _det(box=(0.5, 0.3, 0.2, 0.3), t=1 / 30)            # 0.1 of the frame = 0.5 face widths in a frame
    assert disagreement(a, half_face, cfg) == ""                    # a handheld jerk
    far = _det(box=(0.56, 0.3, 0.2, 0.3), t=1 / 30)                 # 0.8 face widths in one frame
    assert disagreement(a, far, cfg) == "jump"
    assert disagreement(a, _det(box=(0.56, 0.3, 0.2, 0.3), t=0.3), cfg) == ""   # ... but fine over 0.3 s
    # the same move of the frame is a jump for a small face (in face sizes it is far)
    assert disagreement(_det(box=(0.4, 0.3, 0.1, 0.15)), _det(box=(0.5, 0.3, 0.1, 0.15), t=1 / 30), cfg) == "jump"
    assert disagreement(a, _det(box=(0.41, 0.3, 0.3, 0.3), t=1 / 30), cfg) == "scale"   # 1.5x wider
    assert disagreement(a, _det(state="none", t=1 / 30), cfg) == "state"


def test_short_glitches_are_smoothed_over_but_second_faces_are_not():
    cfg = FacesConfig(max_gap_s=0.15)
    frames = {i: _det(t=i / 30) for i in range(0, 61, 6)}
    glitch = dict(frames)
    glitch.update({30: _det("none", t=1.0), 31: _det("none", t=31 / 30), 32: _det(t=32 / 30)})   # a 2-frame miss
    glitch.update({45: _det(box=(0.8, 0.6, 0.2, 0.3), t=1.5), 46: _det(t=46 / 30)})              # a box gone astray
    spans, bad = segment(glitch, [], cfg)
    assert [(s.start, s.end) for s in spans] == [(0, 61)] and bad == []
    assert 30 not in spans[0].frames and 45 not in spans[0].frames       # the glitches do not place the crop
    long_miss = dict(frames)
    long_miss.update({i: _det("none", t=i / 30) for i in range(30, 36)} | {36: _det(t=1.2)})      # 0.2 s: a real loss
    spans, bad = segment(long_miss, [], cfg)
    assert bad == [(30, 36, "no_face")] and [(s.start, s.end) for s in spans] == [(0, 30), (36, 61)]
    second = dict(frames)
    second.update({30: _det("multi", t=1.0), 31: _det(t=31 / 30)})       # one frame with a comparable second face
    spans, bad = segment(second, [], cfg)
    assert bad == [(30, 31, "multi_face")]
    moved = {i: d for i, d in frames.items() if i < 30}                  # a glitch whose sides disagree: a real jump
    moved.update({i: _det(box=(0.78, 0.3, 0.2, 0.3), t=i / 30) for i in range(31, 61, 6)} | {30: _det("none", t=1.0)})
    spans, bad = segment(moved, [], cfg)
    assert bad == [(30, 31, "no_face")] and len(spans) == 2


def test_only_a_comparable_second_face_counts():
    cfg = FacesConfig(multi_face_ratio=0.35, multi_face_score_ratio=0.8)
    real = (0.4, 0.3, 0.2, 0.3, 0.92)
    main, rivals = main_face([real, (0.05, 0.05, 0.18, 0.27, 0.55)], cfg)     # weak background detection
    assert main == real and rivals == []
    main, rivals = main_face([(0.0, 0.0, 0.3, 0.4, 0.56), real], cfg)         # weak but larger: not the main face
    assert main == real and rivals == []
    main, rivals = main_face([real, (0.7, 0.3, 0.18, 0.27, 0.9)], cfg)        # a second person
    assert main == real and len(rivals) == 1
    main, rivals = main_face([real, (0.7, 0.3, 0.08, 0.1, 0.95)], cfg)        # confident but small (far away)
    assert rivals == []


def test_a_drifting_face_is_cut_where_one_crop_stops_holding_it():
    boxes = {f: (0.1 + 0.01 * f, 0.3, 0.1, 0.15) for f in range(0, 60, 6)}    # drifts 0.54 of the frame
    span = Span(0, 60, sorted(boxes), "video_start", "video_end")

    def fits(frames):
        xs = [boxes[f][0] for f in frames]
        return max(xs) - min(xs) <= 0.2

    parts = split_to_fit(span, fits)
    assert parts[0][0] == 0 and parts[-1][1] == 60
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))                 # they tile the span
    assert all(fits(fr) for _, _, fr in parts) and len(parts) == 3
    assert split_to_fit(span, lambda fr: True) == [(0, 60, sorted(boxes))]


def test_crop_has_paper_ratio_where_the_frame_allows_and_slides_inside():
    cfg = FacesConfig()
    c = place_crop([(0.4, 0.3, 0.1, 0.12)] * 5, 1000, 1000, cfg)            # 100 x 120 px face, centre frame
    assert c.face_w_ratio == pytest.approx(0.45, abs=0.01) or c.face_h_ratio == pytest.approx(0.53, abs=0.01)
    assert c.face_w_ratio <= 0.451 and c.face_h_ratio <= 0.531
    assert 0 <= c.x0 and c.x0 + c.size <= 1000 and c.outside == 0 and c.pad_fraction == 0 and c.in_band
    edge = place_crop([(0.0, 0.0, 0.1, 0.1)], 1000, 1000, cfg)               # face in the corner
    assert (edge.x0, edge.y0, edge.pad_fraction) == (0, 0, 0.0)              # slid into the frame, not padded


def _least_padding(fw, fh, w, h, cfg):
    """Brute force: the smallest padded share any integer side inside both bands can reach."""
    best = 1.0
    for side in range(2, 3 * max(w, h)):
        if cfg.face_w_band[0] <= fw / side <= cfg.face_w_band[1] and cfg.face_h_band[0] <= fh / side <= cfg.face_h_band[1]:
            best = min(best, 1 - min(side, w) * min(side, h) / side ** 2)
    return best


@pytest.mark.parametrize("w,h,face", [
    (512, 512, (0.26, 0.24, 0.49, 0.49)),      # tight 1:1 talking head: the paper's side would be 1.09 x the frame
    (512, 512, (0.18, 0.2, 0.6, 0.6)),         # too tight for the band: pads as little as the band allows
    (360, 640, (0.1, 0.3, 0.8, 0.4)),          # portrait frame, wide face box: wider than the frame
    (640, 360, (0.3, 0.1, 0.3, 0.5)),          # landscape, tall face: the side fits the height
    (1000, 1000, (0.4, 0.3, 0.1, 0.12)),       # small face: the paper's ratio, no padding at all
])
def test_crop_side_inside_the_band_pads_least(w, h, face):
    cfg = FacesConfig()
    c = place_crop([face], w, h, cfg)
    fw, fh = face[2] * w, face[3] * h
    assert c.in_band and cfg.face_w_band[0] - 1e-3 <= c.face_w_ratio <= cfg.face_w_band[1] + 1e-3
    assert cfg.face_h_band[0] - 1e-3 <= c.face_h_ratio <= cfg.face_h_band[1] + 1e-3
    assert c.pad_fraction == pytest.approx(_least_padding(fw, fh, w, h, cfg), abs=0.01)
    # pad_fraction is the crop's area outside the frame, measured here independently on a pixel grid
    inside = np.zeros((c.size, c.size), bool)
    ys, xs = np.mgrid[c.y0:c.y0 + c.size, c.x0:c.x0 + c.size]
    inside[(xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)] = True
    assert c.pad_fraction == pytest.approx(1 - inside.mean(), abs=1e-9)
    # the face is held: its box lies inside the crop
    x, y = face[0] * w, face[1] * h
    assert c.x0 <= x + 1 and x + fw <= c.x0 + c.size + 1 and c.y0 <= y + 1 and y + fh <= c.y0 + c.size + 1


def test_tight_talking_head_gets_the_whole_frame_not_padding():
    """The regression of the real 1:1 talking heads (24-31% padding): face box ~0.49 of a 512 frame."""
    cfg = FacesConfig()
    c = place_crop([(0.26, 0.34, 0.49, 0.49)], 512, 512, cfg)
    assert 512 * 0.49 / cfg.face_w_ratio > 512 * 1.05                # the fixed 0.45 side would pad
    assert (c.x0, c.y0, c.size, c.pad_fraction) == (0, 0, 512, 0.0)
    too_tight = place_crop([(0.18, 0.2, 0.64, 0.64)], 512, 512, cfg)
    assert too_tight.face_w_ratio == pytest.approx(cfg.face_w_band[1], abs=0.005)   # the band's edge
    assert too_tight.pad_fraction == pytest.approx(1 - (512 / (0.64 * 512 / 0.55)) ** 2, abs=0.01)


def test_face_ratio_band_must_hold_the_preferred_ratio(tmp_path):
    from pipeline.configfile import ConfigError
    from pipeline.curate.stages import load_dag

    with pytest.raises(ValueError, match="face_w_band"):
        FacesConfig(face_w_band=[0.5, 0.6])
    (tmp_path / "bad.yaml").write_text("stages:\n  - name: faces\n    params: {face_h_band: [0.6, 0.7]}\n")
    with pytest.raises(ConfigError, match="bad.yaml.*face_h_band"):
        load_dag(tmp_path / "bad.yaml")


def test_insightface_backend_says_what_is_missing(tmp_path):
    """The backend itself runs in test_faces_insightface.py (tiny SCRFD/ArcFace models)."""
    with pytest.raises(FileNotFoundError, match=str(tmp_path)) as e:
        make_detector(FacesConfig(backend="insightface", model_dir=str(tmp_path)))
    assert all(n in str(e.value) for n in InsightFaces.NEEDS)
    with pytest.raises(FileNotFoundError, match="model_dir unset"):
        make_detector(FacesConfig(backend="insightface"))
    with pytest.raises(ValueError, match="backend"):
        make_detector(FacesConfig(backend="dlib"))


def test_a_span_that_fits_as_a_whole_is_not_cut_even_when_a_prefix_does_not():
    """The crop's side follows the median box, so 'fits' is not monotone: a face that grows (a zoom)
    fails with its first few boxes (small median, small crop) yet fits with all of them."""
    span = Span(0, 50, list(range(0, 50, 5)), "cut", "cut")
    prefix_fails = lambda fr: len(fr) in (1, 2, len(span.frames))   # noqa: E731 - only short runs and the whole
    assert split_to_fit(span, prefix_fails) == [(0, 50, span.frames)]


class _CountingIdentity:
    """A stand-in identity encoder: the frame's mean colour as the embedding; `same_below` decides."""

    def __init__(self, same_below: float):
        self.same_below, self.calls = same_below, 0

    def faces(self, img, boxes):
        self.calls += len(boxes)
        return [img.reshape(-1, 3).mean(0) / 255.0 for _ in boxes]

    def identity(self, emb):
        from pipeline.curate.identity import FaceIdentity

        return FaceIdentity(np.asarray(emb, np.float32), "counting", "euclidean", self.same_below)


def test_identity_embeddings_run_only_where_no_shot_boundary_already_splits(tmp_path, detector):
    cfg = FacesConfig(stride=8)
    frames = [_frame([(100, 50, 130)]) for _ in range(21)]                                           # 0..20
    frames += [_frame([(100, 50, 130)], recolour=np.float32([0.6, 0.9, 1.4])) for _ in range(27)]   # 21..47 other look
    p = tmp_path / "look.mp4"
    write_mp4(p, frames, 25)

    def run(enc, settled=None, cuts=()):
        fs = FaceScanner(cfg, detector, W, identity=enc)
        dets = fs.finish(scan(p, 256, {"faces": fs.update}), settled)
        spans, _ = segment(dets, list(cuts), cfg)
        return [(s.start, s.end, s.end_split) for s in spans], fs

    # a cut at the change: the split is the cut's, and no embedding is computed
    enc = _CountingIdentity(same_below=10.0)
    spans, fs = run(enc, settled=lambda f: f == 21, cuts=[21])
    assert enc.calls == 0 and fs.identity_faces == 0
    assert spans == [(0, 21, "cut"), (21, 48, "video_end")]
    # no boundary there: the two frames either side of the located change are embedded, and they decide
    same = _CountingIdentity(same_below=10.0)
    spans, fs = run(same)
    assert same.calls == 2 and fs.identity_faces == 2
    assert spans == [(0, 48, "video_end")]                       # the embedding says one person: no split
    other = _CountingIdentity(same_below=1e-4)
    spans, _ = run(other)
    assert other.calls == 2 and spans == [(0, 21, "identity"), (21, 48, "video_end")]
