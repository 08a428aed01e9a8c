"""Picture-in-picture (pipeline/curate/insets.py): a face inside an inset is cropped inside the inset, or
rejected as `inset` when the inset is too tight for the face-ratio band; never cropped across its border.

The insets are composed here from the corpus's talking head (talk_360p30) over a dark "game" frame and
a light "slides" frame, so the inset rectangle is known to the pixel."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.curate.insets import clip_inset, find_inset

W, H = 640, 360


def _background(kind: str) -> np.ndarray:
    import cv2

    if kind == "game":
        bg = np.full((H, W, 3), 24, np.uint8)
        cv2.rectangle(bg, (30, 30), (400, 300), (32, 96, 64), -1)
    else:   # slides
        bg = np.full((H, W, 3), 240, np.uint8)
        cv2.rectangle(bg, (40, 40), (380, 60), (32, 48, 96), -1)
        for y, w in [(90, 420), (115, 380), (140, 300)]:
            cv2.rectangle(bg, (40, y), (40 + w, y + 10), (96, 96, 96), -1)
    return bg


def _face_square(gt: dict, i: int, scale: float) -> tuple[int, int, int]:
    """A square around frame i's face box (x0, y0, x1, y1 px): side = scale x the box height (at most the
    frame's), centred on the box as far as the frame allows."""
    x0, y0, x1, y1 = gt["face_box"][i]
    side = min(int(round(scale * (y1 - y0))), gt["width"], gt["height"])
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    sx = int(min(max(cx - side / 2, 0), gt["width"] - side))
    sy = int(min(max(cy - side / 2, 0), gt["height"] - side))
    return sx, sy, side


def _pip(gt: dict, out: Path, rect: tuple[int, int, int, int], bg: str, face_scale: float,
         frames: int = 50, below: float = 0.0) -> Path:
    """The corpus video's first `frames` frames shown in `rect` (x, y, w, h) of a 640x360 frame: the
    square around the face of `_face_square` (a webcam inset), over `below` x its side of a plain
    sweater (so the head sits high in a taller inset)."""
    import cv2

    from pipeline.video_io import iter_frames, write_mp4

    x, y, w, h = rect
    base = _background(bg)
    sx, sy, side = _face_square(gt, 0, face_scale)
    out_frames = []
    for _, rgb in iter_frames(gt["path"], 0, frames):
        rgb = np.concatenate([rgb[sy:sy + side, sx:sx + side],
                              np.full((int(round(below * side)), side, 3), (60, 40, 40), np.uint8)])
        f = base.copy()
        f[y:y + h, x:x + w] = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        out_frames.append(f)
    write_mp4(out, out_frames, gt["fps"])
    return out


@pytest.fixture(scope="module")
def talk(corpus_by_name):
    return corpus_by_name["talk_360p30"]


def _small_frame(path: Path, i: int = 10) -> np.ndarray:
    from pipeline.video_io import read_frames

    return read_frames(path, [i], max_side=256)[i]


def test_find_inset_locates_the_rectangle_and_nothing_else(talk, tmp_path):
    from pipeline.curate.faces import FacesConfig, make_detector
    from pipeline.curate.verify import inset_of

    cfg = FacesConfig()
    detect = make_detector(cfg)
    rect = (400, 20, 200, 200)
    pip = _small_frame(_pip(talk, tmp_path / "pip.mp4", rect, "game", 1.9, frames=12))
    box = detect(pip)[0][:4]
    found = inset_of(pip, box, cfg)
    assert found is not None
    truth = (rect[0] / W, rect[1] / H, (rect[0] + rect[2]) / W, (rect[1] + rect[3]) / H)
    # inside the inset (never its border), holding the face; the sides the crop crosses (right and
    # bottom here: the inset is the frame's top-right corner) within two small-frame pixels of the truth.
    # A straight line of the inset's own picture (the corpus's brick joints) may stand in for its left side.
    assert found[0] >= truth[0] and found[1] >= truth[1] and found[2] <= truth[2] and found[3] <= truth[3], found
    assert found[0] <= box[0] and found[1] <= box[1] and box[0] + box[2] <= found[2] and box[1] + box[3] <= found[3]
    assert truth[3] - found[3] <= 2 / pip.shape[0] + 1e-9 and truth[2] - found[2] <= 2 / pip.shape[1] + 1e-9
    # the same face with no inset: the corpus frame itself (a brick wall: straight mortar lines everywhere)
    plain = _small_frame(Path(talk["path"]))
    assert inset_of(plain, detect(plain)[0][:4], cfg) is None
    # one straight vertical line beside the face (a door jamb), and the same line closed by a shelf that
    # the head interrupts: no rectangle holds the face
    jamb = pip.copy()
    jamb[:] = plain
    fx = int(box[0] * jamb.shape[1])
    jamb[:, fx - 12:fx - 10] = 250
    assert inset_of(jamb, detect(jamb)[0][:4], cfg) is None
    fy = int((box[1] + box[3] * 0.5) * jamb.shape[0])
    jamb[fy:fy + 2, :] = 250
    assert inset_of(jamb, detect(jamb)[0][:4], cfg) is None


def test_face_in_a_tight_inset_is_rejected_as_inset_never_cropped_across_it(talk, analyse, tmp_path):
    """A webcam inset over a game, the face ~0.55 of it: the band cannot frame it inside the inset."""
    rect = (400, 20, 200, 200)
    res = analyse(_pip(talk, tmp_path / "tight.mp4", rect, "game", 1.9))
    clips = res["clips"]
    assert clips and not [c for c in clips if c["status"] == "accepted"]
    assert {c["reason"] for c in clips if c["end_frame"] - c["start_frame"] >= 30} == {"inset"}
    without = [c for c in clips if c["reason"] == "inset"][0]
    assert without["pad_fraction"] > 0.05   # the share of the crop that would show the game, not the inset


def test_face_in_a_loose_inset_is_cropped_inside_it(talk, analyse, tmp_path):
    """Slides with the speaker's webcam in an inset, the head high in it: kept, every crop inside the
    inset (the crop centred on the face would take in the slide above it)."""
    rect = (380, 20, 200, 280)
    res = analyse(_pip(talk, tmp_path / "loose.mp4", rect, "slides", 1.7, below=0.4))
    acc = [c for c in res["clips"] if c["status"] == "accepted"]
    assert sum(c["end_frame"] - c["start_frame"] for c in acc) >= 0.8 * 50, res["clips"]
    x, y, w, h = rect
    for c in acc:
        assert c["crop_x0"] >= x - 1 and c["crop_y0"] >= y - 1
        assert c["crop_x0"] + c["crop_size"] <= x + w + 1 and c["crop_y0"] + c["crop_size"] <= y + h + 1
        assert c["pad_fraction"] <= 0.05
    # the rule without the inset would have reached past its border: the inset is what kept it inside
    from pipeline.curate.faces import FacesConfig, place_crop

    sx, sy, side = _face_square(talk, 0, 1.7)
    x0, y0, x1, y1 = talk["face_box"][0]
    s = w / side
    box = ((x + (x0 - sx) * s) / W, (y + (y0 - sy) * s) / H, (x1 - x0) * s / W, (y1 - y0) * s / H)
    free = place_crop([box], W, H, FacesConfig())
    assert free.y0 < y - 1


def test_clip_inset_needs_most_samples_to_agree():
    r = (0.5, 0.1, 0.9, 0.6)
    near = (0.505, 0.1, 0.9, 0.61)
    assert clip_inset([r, near, r, None]) == pytest.approx(r, abs=0.006)
    assert clip_inset([r, None, None]) is None                          # one sample in three
    assert clip_inset([r, (0.1, 0.1, 0.4, 0.5), r, (0.1, 0.1, 0.4, 0.5), None]) is None   # no agreement
    assert clip_inset([]) is None


def test_find_inset_on_a_plain_frame_with_no_face_nearby_is_none():
    frame = np.full((144, 256, 3), 128, np.uint8)
    assert find_inset(frame, (0.4, 0.3, 0.15, 0.3), (0.3, 0.1, 0.65, 0.72)) is None


# ---------------------------------------------------------------- black bars (letterbox, pillarbox)

def _letterbox(gt: dict, out: Path, rows: tuple[int, int], frames: int = 50) -> Path:
    """The corpus video's rows [r0, r1) over black bars: a 640x360 frame with the picture at y = r0."""
    from pipeline.video_io import iter_frames, write_mp4

    r0, r1 = rows
    out_frames = []
    for _, rgb in iter_frames(gt["path"], 0, frames):
        f = np.zeros((H, W, 3), np.uint8)
        f[r0:r1] = rgb[r0:r1]
        out_frames.append(f)
    write_mp4(out, out_frames, gt["fps"])
    return out


def test_active_area_is_the_picture_inside_black_bars():
    from pipeline.curate.insets import active_area, clip_picture

    f = np.zeros((144, 256, 3), np.uint8)
    f[20:124, 32:224] = 90                                  # letterbox and pillarbox at once
    area = active_area(f)
    assert area == pytest.approx((33 / 256, 21 / 144, 223 / 256, 123 / 144))   # edge lines left out
    assert active_area(np.zeros((144, 256, 3), np.uint8)) is None            # a black frame says nothing
    full = np.full((144, 256, 3), 90, np.uint8)
    assert active_area(full) == (0.0, 0.0, 1.0, 1.0) and clip_picture([active_area(full)]) is None
    # the union over the clip: one sample with picture in a "bar" means it is no bar
    wider = (0.0, 21 / 144, 1.0, 123 / 144)
    assert clip_picture([area, None, area]) == pytest.approx(area)
    assert clip_picture([area, wider]) == pytest.approx(wider)
    assert clip_picture([None]) is None


def test_letterboxed_face_is_cropped_inside_the_picture_or_rejected(talk, analyse, tmp_path):
    """A film's letterbox: the crop never takes in the black bars as if they were picture."""
    from pipeline.curate.faces import FacesConfig, place_crop

    tight = analyse(_letterbox(talk, tmp_path / "tight.mp4", (80, 280)))    # face ~0.73 of the picture's height
    assert tight["clips"] and not [c for c in tight["clips"] if c["status"] == "accepted"]
    assert {c["reason"] for c in tight["clips"] if c["end_frame"] - c["start_frame"] >= 30} == {"padding"}
    loose = analyse(_letterbox(talk, tmp_path / "loose.mp4", (40, 320)))
    acc = [c for c in loose["clips"] if c["status"] == "accepted"]
    assert sum(c["end_frame"] - c["start_frame"] for c in acc) >= 0.8 * 50, loose["clips"]
    for c in acc:
        assert c["crop_y0"] >= 40 and c["crop_y0"] + c["crop_size"] <= 320 + 1 and c["pad_fraction"] <= 0.05
    x0, y0, x1, y1 = talk["face_box"][0]
    free = place_crop([(x0 / W, y0 / H, (x1 - x0) / W, (y1 - y0) / H)], W, H, FacesConfig())
    assert free.y0 < 40 or free.y0 + free.size > 321        # the rule alone would have reached a bar
