"""A photo shown as a video (a music upload's portrait, a podcast's cover) is no talking head: the face's
mesh does not change shape across the clip's samples (verify.expression_change), so the clip is
rejected as `still`. Composed here from the corpus's talking head: its own frames (kept) and one of
them repeated (rejected)."""
from __future__ import annotations

import numpy as np

from pipeline.curate.verify import expression_change, unit_shape


def test_expression_change_ignores_position_size_and_roll_but_sees_the_mouth():
    rng = np.random.default_rng(0)
    face = rng.uniform(0, 1, (478, 2))
    th = np.deg2rad(8)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    moved = [unit_shape(face), unit_shape(face * 1.3 + 0.2), unit_shape(face @ rot.T + 0.05)]
    assert expression_change(moved) < 1e-5                    # a zoom, a pan, a tilt: no expression
    mouth = face.copy()
    mouth[:40, 1] += 0.04                                      # a fifth of the face moves 4% of its size
    talking = [unit_shape(face), unit_shape(mouth), unit_shape(face), unit_shape(mouth)]
    assert expression_change(talking) > 0.005
    assert np.isnan(expression_change([unit_shape(face)])) and np.isnan(expression_change([]))


def test_a_photo_shown_as_a_video_is_rejected_as_still_and_the_talking_head_kept(corpus_by_name, analyse, tmp_path):
    from pipeline.video_io import iter_frames, write_mp4

    cfg, run = analyse.cfg, analyse
    talk = corpus_by_name["talk_360p30"]
    frames = [rgb for _, rgb in iter_frames(talk["path"], 0, 50)]
    write_mp4(tmp_path / "talking.mp4", frames, talk["fps"])
    write_mp4(tmp_path / "photo.mp4", [frames[10]] * 50, talk["fps"])
    kept = run(tmp_path / "talking.mp4")["clips"]
    assert [c["status"] for c in kept] == ["accepted"]
    assert kept[0]["expression"] > 2 * cfg.filters.min_expression
    still = run(tmp_path / "photo.mp4")["clips"]
    assert [(c["status"], c["reason"]) for c in still] == [("rejected", "still")]
    assert still[0]["expression"] < cfg.filters.min_expression / 2
    # everything else about the photo passes: it is the motion that is missing
    assert still[0]["landmark_rate"] >= cfg.filters.min_landmark_rate and still[0]["pad_fraction"] == 0
