"""`python -m model.reenact` end to end on a tiny model (real MediaPipe, real VAE/CLIP classes, real MP4)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _face():
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut())


def make_tiny_checkpoint(data: Path, frames: int = 4, latent_size: int = 8, clip_dim: int = 32, seed: int = 0,
                         heldout: dict | None = None, name: str = "tiny", encoders: dict | None = None) -> Path:
    """A random tiny sDiT saved through model.checkpoint.save, where the trainer would put it."""
    import torch

    from model.checkpoint import save
    from model.config import load_config
    from model.sdit import SDiT

    cfg = load_config(None, {"model": {"size": "tiny", "frames": frames, "latent_size": latent_size,
                                       "clip_dim": clip_dim}})
    torch.manual_seed(seed)
    m = SDiT(cfg.model)
    with torch.no_grad():  # adaLN-Zero would output exact zeros; give the net an input dependence
        for p in m.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    opt = torch.optim.AdamW(m.parameters())
    return save(data / "train" / name / "checkpoints" / "step_00000001.pt", model=m, ema=m, opt=opt, step=1,
                cfg=cfg, schedule={}, heldout=heldout, encoders=encoders)


def identity_of(models_dir: Path, size: int = 64) -> dict:
    """The encoder identity the trainer would record for latents made by the models in `models_dir`."""
    from pipeline.shards.config import EncoderConfig
    from pipeline.shards.encode import Encoders
    from pipeline.shards.model_sets import resolve_models

    cfg = EncoderConfig(size=size, device="cpu")
    enc = Encoders(resolve_models(str(models_dir), cfg), cfg, with_landmarks=False)
    return enc.identity()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import cv2

    from pipeline.shards.model_sets import build_tiny_models
    from pipeline.video_io import write_mp4

    d = tmp_path_factory.mktemp("reenact")
    data = d / "data"
    build_tiny_models(data / "models" / "tiny", sample_size=64)
    make_tiny_checkpoint(data, encoders=identity_of(data / "models" / "tiny"))
    face = _face()
    cv2.imwrite(str(d / "source.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    frames = []
    for i in range(9):
        m = np.float32([[1, 0, 3 * i], [0, 1, 2 * i]])
        frames.append(cv2.warpAffine(face, m, (512, 512), borderMode=cv2.BORDER_REPLICATE))
    frames[4] = np.full_like(face, 90)  # a faceless frame in the middle: filled from its neighbours
    write_mp4(d / "driving.mp4", frames, 10.0)
    head = face[20:260, 110:350]                            # two heads side by side, padded to a square
    two = np.full((480, 480, 3), 128, np.uint8)
    two[120:360, :240], two[120:360, 240:] = head, head[:, ::-1]
    cv2.imwrite(str(d / "two.png"), cv2.cvtColor(two, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(d / "blank.png"), np.full((256, 256, 3), 128, np.uint8))
    (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    write_mp4(d / "short.mp4", frames[:3], 10.0)
    return d


def _run(*args, data):
    return subprocess.run([sys.executable, "-m", "model.reenact", "--data", str(data), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)


def test_fill_missing_interpolates_and_reports():
    from model.reenact import ReenactError, fill_missing

    lm = np.zeros((5, 478, 3), np.float32)
    for i in range(5):
        lm[i] = i
    ok = np.array([True, False, True, False, False])
    lm[~ok] = np.nan
    out, missing = fill_missing(lm, ok)
    assert missing == [1, 3, 4]
    assert np.allclose(out[1], 1.0) and np.allclose(out[3], 2.0) and np.allclose(out[4], 2.0)
    assert np.array_equal(out[ok], lm[ok])
    with pytest.raises(ReenactError, match="no face"):
        fill_missing(lm, np.zeros(5, bool))


def test_reenact_cli_writes_video_and_stats(setup):
    from pipeline.video_io import probe

    d = setup
    out = d / "out" / "r.mp4"
    r = _run("--source", d / "source.png", "--driving", d / "driving.mp4", "--steps", "4", "--side-by-side",
             "--out", out, "--seed", "3", "--max-batch", "2", data=d / "data")
    assert r.returncode == 0, r.stderr[-2000:]
    info = probe(out)
    assert info.num_frames == 9 and (info.width, info.height) == (3 * 64, 64)
    st = json.loads(out.with_suffix(".json").read_text())
    assert st["frames"] == 9 and st["faceless_frames_filled"] == [4]
    assert st["sequences"] == 3 and st["anchor"] == "generated" and st["anchor_frame"] == 0 and st["F"] == 4
    assert st["retarget"] == "relative" and st["max_offset_s"] == 8.5 and st["anchor_noise"] == "step"
    assert st["ckpt"].endswith("step_00000001.pt") and st["models"].endswith("tiny")
    assert st["encoders"].startswith("match ") and "encoders" not in r.stderr
    assert -1.0 <= st["csim"] <= st["csim_mean"] <= 1.0 and "step 4/4" in r.stderr
    # identity CSIM beside the driving person's, and the CLIP similarity under its own, labelled, name
    assert -1.0 <= st["csim_driving"] <= st["csim_driving_mean"] <= 1.0 and st["csim_model"] == "dlib-resnet-v1"
    assert "untrained" in st["clip_sim_label"] and -1.0 <= st["clip_sim"] <= 1.0
    assert "CSIM (identity, dlib-resnet-v1) min" in r.stdout and "untrained" in r.stdout
    # the same seed gives the same video (identical latents -> identical MP4), here run in-process
    from model.metrics import load_frames
    from model.reenact import main

    out2 = d / "out" / "r2.mp4"
    assert main(["--data", str(d / "data"), "--source", str(d / "source.png"), "--driving", str(d / "driving.mp4"),
                 "--steps", "4", "--side-by-side", "--out", str(out2), "--seed", "3"]) == 0
    # Two processes (and, on another CPU, other SIMD kernels and thread splits) may differ in the last
    # float bits; after the uint8 quantisation that is at most a rare one-level pixel flip, and the
    # metrics agree to far better than any difference a metric is read for.
    a, b = load_frames(out).astype(np.int16), load_frames(out2).astype(np.int16)
    assert a.shape == b.shape and np.abs(a - b).max() <= 2 and np.abs(a - b).mean() < 0.05
    st2 = json.loads(out2.with_suffix(".json").read_text())
    assert st2["csim"] == pytest.approx(st["csim"], abs=1e-4)
    assert (st2["lmse"] is None) == (st["lmse"] is None)
    if st["lmse"] is not None:
        assert st2["lmse"] == pytest.approx(st["lmse"], rel=1e-3, abs=1e-3)


def test_reenact_with_the_source_as_anchor_records_its_modes(setup, tmp_path):
    """--anchor source: the source crop is one more (known) frame of every sequence, not an output frame;
    the stats say which anchor, retargeting and offset range were used."""
    from model.reenact import main
    from pipeline.video_io import probe

    d, out = setup, tmp_path / "s.mp4"
    assert main(["--data", str(d / "data"), "--source", str(d / "source.png"), "--driving", str(d / "driving.mp4"),
                 "--steps", "3", "--anchor", "source", "--retarget", "none", "--max-batch", "2", "--out", str(out)]) == 0
    st = json.loads(out.with_suffix(".json").read_text())
    assert probe(out).num_frames == 9 and st["frames"] == 9
    assert st["anchor"] == "source" and st["retarget"] == "none" and st["anchor_frame"] == 0
    assert st["sequences"] == 3          # 9 driving frames + the source over F - 1 = 3 free slots each
    assert st["lmse"] == st["lmse_driving_raw"] or st["lmse"] is None   # none: the raw landmarks are the asked ones


def _bad_args(d, case, tmp_path):
    src, drv, extra = d / "source.png", d / "driving.mp4", []
    if case in ("blank", "two"):
        src = d / f"{case}.png"
    elif case in ("broken", "short"):
        drv = d / f"{case}.mp4"
    elif case == "mismatch":
        extra = ["--ckpt", make_tiny_checkpoint(tmp_path, clip_dim=16), "--models", d / "data" / "models" / "tiny"]
    elif case == "config":
        extra = ["--config", ROOT / "dags" / "train.yaml"]   # the paper's XL/2 config vs a tiny checkpoint
    elif case == "naive_source":
        extra = ["--anchor", "source", "--sampler", "naive"]
    return ["--source", src, "--driving", drv, "--steps", "2", *extra]


BAD = {"blank": "no face found in the source image", "two": "2 faces in the source image",
       "broken": "unreadable driving video", "short": "fewer than the sequence length F=4",
       "mismatch": "expects clip_dim 16 but the CLIP model", "config": "incompatible config: model.size",
       "naive_source": "--anchor source needs --sampler anchored"}


@pytest.mark.parametrize("case", ["two", "broken"])
def test_bad_input_subprocess_one_line_error(setup, case, tmp_path):
    r = _run(*_bad_args(setup, case, tmp_path), data=setup / "data")
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("reenact: error")]
    assert len(lines) == 1 and BAD[case] in lines[0], r.stderr[-1500:]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("case", ["blank", "short", "mismatch", "config", "naive_source"])
def test_bad_input_in_process(setup, case, tmp_path, capsys):
    from model.reenact import main

    rc = main(["--data", str(setup / "data"), *map(str, _bad_args(setup, case, tmp_path))])
    err = capsys.readouterr().err
    assert rc != 0
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("reenact: error")]
    assert len(lines) == 1 and BAD[case] in lines[0], err[-1500:]


@pytest.mark.parametrize("mod,flag", [("model.reenact", "--driving"), ("model.evaluate", "--consistency")])
def test_help_is_fast(mod, flag):
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", mod, "--help"], capture_output=True,
                       text=True, cwd=ROOT, env=ENV, timeout=60)
    assert r.returncode == 0 and flag in r.stdout
    for heavy in ("torch", "mediapipe", "cv2"):
        assert f" {heavy}\n" not in r.stderr and f"| {heavy}\n" not in r.stderr


def test_eval_writes_table1(setup, tmp_path):
    """model.evaluate.run on contract shards: the grid rows in the supplementary's format, FID numeric
    with (random) local Inception weights and 'unavailable' without."""
    import shutil
    import sys as _sys

    import torch
    from torchvision.models import inception_v3

    from model.evaluate import EvalConfig, run

    _sys.path.insert(0, str(Path(__file__).parent))
    from shardfixtures import write_shards

    data = tmp_path / "data"
    shutil.copytree(setup / "data", data)
    clips = write_shards(data, n_clips=6, per_shard=3, clip_dim=32, frames=(6, 9))["clips"]
    inc = tmp_path / "inception_v3.pth"
    torch.manual_seed(0)
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=True).state_dict(), inc)
    grid = [{"steps": 3, "cfg_scale": 1, "guidance": "clip+landmarks"}, {"steps": 3, "cfg_scale": 2, "guidance": "none"}]
    ec = EvalConfig(max_clips=2, max_frames=6, grid="mine", grids={"mine": grid}, inception=str(inc), fid_size=75)
    res = run(data, ec)
    md = (data / "eval" / "table1.md").read_text().splitlines()
    assert md[0] == "| Timesteps | CFG | Guidance | FID | LMSE | CSIM min | CSIM mean | CLIP-sim [untrained local CLIP] |"
    assert md[2].startswith("| 3 | 1 | CLIP+Landmarks | ") and md[3].startswith("| 3 | 2 | None | ")
    js = json.loads((data / "eval" / "table1.json").read_text())
    assert [r["Guidance"] for r in js["rows"]] == ["CLIP+Landmarks", "None"]
    for r in js["rows"]:
        assert isinstance(r["FID"], float) and r["FID"] >= 0 and -1 <= r["CLIP_sim"] <= 1
        # identity CSIM (dlib on the generated crops) against the source clip's identity.npy
        assert -1 <= r["CSIM"] <= r["CSIM_mean"] <= 1
    assert len(res["clips"]) == 2 and all(c["cross_identity"] for c in res["clips"])
    assert all(c["frames"] == 6 for c in res["clips"])
    assert "WARNING" in res["note"]  # this checkpoint has no held-out record: the split is recomputed
    assert js["clip_note"]["embedder_trained"] is False and "untrained local CLIP" in js["note"]
    assert "says nothing about identity" in md[-1]
    ec = EvalConfig(max_clips=1, max_frames=6, grid="mine", grids={"mine": grid[:1]},
                    inception=str(tmp_path / "none.pth"))
    res = run(data, ec)
    assert res["rows"][0]["FID"].startswith("unavailable: ")
    assert "| unavailable |" in (data / "eval" / "table1.md").read_text()
    # a checkpoint that records its held-out people is scored on exactly those (these samples have no
    # identity_id: the video is the person)
    video = {k: c["meta"]["video_id"] for k, c in clips.items()}
    rec = make_tiny_checkpoint(data, heldout={"unit": "identity", "fraction": 0.1, "min_clips": 2,
                                              "people": ["video:vid2"], "videos": []}, name="rec")
    res = run(data, EvalConfig(ckpt=str(rec), max_clips=2, max_frames=6, grid="mine", grids={"mine": grid[:1]},
                               inception=str(inc), fid_size=75))
    assert {video[c["driving"]] for c in res["clips"]} == {"vid2"} and "WARNING" not in res["note"]
    # an older checkpoint's video split still loads, with a warning that a person may be on both sides
    old = make_tiny_checkpoint(data, heldout={"fraction": 0.1, "min_clips": 2, "videos": ["vid1"]}, name="old")
    res = run(data, EvalConfig(ckpt=str(old), max_clips=2, max_frames=6, grid="mine", grids={"mine": grid[:1]},
                               inception=str(inc), fid_size=75))
    assert {video[c["driving"]] for c in res["clips"]} == {"vid1"} and "WARNING" in res["note"]
    none = make_tiny_checkpoint(data, heldout={"fraction": 0.0, "min_clips": 2, "videos": []}, name="none")
    with pytest.raises(SystemExit, match="held out nobody"):
        run(data, EvalConfig(ckpt=str(none), grid="mine", grids={"mine": grid[:1]}))


def test_dag_defaults_and_flags(tmp_path):
    from model.reenact import DEFAULTS, ReenactError, apply_defaults, build_parser

    base = ["--source", "s.png", "--driving", "d.mp4"]
    args = build_parser().parse_args(base)                    # the repo's dags/reenact.yaml
    apply_defaults(args)
    assert {k: getattr(args, k) for k in DEFAULTS} == DEFAULTS  # the file states the code's defaults
    dag = tmp_path / "r.yaml"
    dag.write_text("steps: 7\nguidance: clip\n")
    args = build_parser().parse_args(base + ["--dag", str(dag), "--guidance", "none"])
    apply_defaults(args)
    assert args.steps == 7 and args.guidance == "none" and args.cfg_scale == 1.0
    for flag in ("--cfg-scale", "--cfg"):           # --cfg: the old spelling, kept as an alias
        assert build_parser().parse_args(base + [flag, "2.5"]).cfg_scale == 2.5
    dag.write_text("anchor: sauce\n")
    with pytest.raises(ReenactError, match="anchor must be one of generated, source"):
        apply_defaults(build_parser().parse_args(base + ["--dag", str(dag)]))
    dag.write_text("stpes: 7\n")
    with pytest.raises(ReenactError, match="unknown key stpes"):
        apply_defaults(build_parser().parse_args(base + ["--dag", str(dag)]))
    with pytest.raises(ReenactError, match="config file not found"):
        apply_defaults(build_parser().parse_args(base + ["--dag", str(tmp_path / "nope.yaml")]))


def test_eval_config_file_and_overrides(tmp_path):
    from model.evaluate import EvalConfig, load_eval_config

    ec = load_eval_config(str(ROOT / "dags" / "eval.yaml"), ["max_clips=7"])
    assert ec.max_clips == 7 and ec.grids["cpu"] and ec.consistency_seeds == EvalConfig().consistency_seeds
    bad = tmp_path / "e.yaml"
    bad.write_text("max_clip: 3\n")
    with pytest.raises(SystemExit, match=r"evaluate: error: .*unknown key max_clip \(known: "):
        load_eval_config(str(bad))
    bad.write_text("max_clips: [3\n")
    with pytest.raises(SystemExit, match="malformed YAML"):
        load_eval_config(str(bad))
    with pytest.raises(SystemExit, match="config file not found"):
        load_eval_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(SystemExit, match="expected key=value"):       # was a TypeError traceback
        load_eval_config(None, ["max_clips"])
    with pytest.raises(SystemExit, match="max_clips: expected int"):
        load_eval_config(None, ["max_clips=many"])


def test_anchor_similarity_measures_drift_from_the_anchor():
    from model.consistency import anchor_similarity, by_distance

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    dimmer = (img * 0.5 + 20).astype(np.uint8)                  # same picture, other brightness/contrast
    other = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    a = anchor_similarity(np.stack([img, dimmer, other]))
    assert a[0] == pytest.approx(1) and a[1] > 0.99 and abs(a[2]) < 0.05
    bins = by_distance(np.arange(9.0), anchor=0, width=4)     # d = 1..4, 5..8
    assert [(b["from"], b["to"], b["mean"]) for b in bins] == [(1, 4, 2.5), (5, 8, 6.5)]


def test_consistency_study_over_clips_and_seeds(setup, tmp_path):
    import shutil
    import sys as _sys

    from model.consistency import consistency_study

    _sys.path.insert(0, str(Path(__file__).parent))
    from shardfixtures import write_shards

    data = tmp_path / "data"
    shutil.copytree(setup / "data", data)
    write_shards(data, n_clips=8, per_shard=2, clip_dim=32, frames=(10, 12))   # vid0..vid3, 2 clips each
    ck = make_tiny_checkpoint(data, heldout={"fraction": 0.1, "min_clips": 2, "videos": ["vid1", "vid3"]}, name="c")
    res = consistency_study(data, str(ck), steps=2, n_frames=10, seeds=2, clips=4)
    runs, s = res["runs"], res["summary"]
    assert res["videos"] == ["vid1", "vid3"] and len(runs) == 4 == s["runs"]   # held-out videos only, x 2 seeds
    assert [r["seed"] for r in runs] == [0, 1, 0, 1]
    for name in ("real", "anchored", "naive"):
        assert s["asim_far"][name]["mean"] == pytest.approx(np.mean([r["curves"][name]["asim_far"] for r in runs]))
    assert runs[0]["curves"]["real"] == runs[1]["curves"]["real"]               # the reference has no seed
    assert runs[0]["curves"]["anchored"] != runs[1]["curves"]["anchored"]       # the seed changes the samples
    assert 0 <= s["anchored_beats_naive"] <= 4 and 0 <= s["anchored_closer_to_real"] <= 4
    assert json.loads((data / "eval" / "consistency.json").read_text())["summary"] == s
    assert (data / "eval" / "consistency.png").read_bytes()[:4] == b"\x89PNG"


def test_reenact_refuses_other_encoders_than_the_checkpoint_was_trained_on(setup, tmp_path):
    """Another data root's VAE (same classes and label, other weights) would silently mottle the output."""
    from pipeline.shards.model_sets import build_tiny_models

    d = setup
    other = build_tiny_models(tmp_path / "other-models", seed=1, sample_size=64)
    want, have = identity_of(d / "data" / "models" / "tiny"), identity_of(other)
    assert want["fingerprint"] != have["fingerprint"]
    args = ["--source", d / "source.png", "--driving", d / "driving.mp4", "--steps", "2", "--max-frames", "4",
            "--models", other, "--out", tmp_path / "o.mp4"]
    r = _run(*args, data=d / "data")
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("reenact: error")]
    assert r.returncode != 0 and len(lines) == 1, r.stderr[-1500:]
    assert want["fingerprint"] in lines[0] and have["fingerprint"] in lines[0] and "--force-encoders" in lines[0]
    assert not (tmp_path / "o.mp4").exists()
    forced = _run(*args, "--force-encoders", data=d / "data")
    assert forced.returncode == 0, forced.stderr[-1500:]
    assert "WARNING: --force-encoders" in forced.stderr
    st = json.loads((tmp_path / "o.json").read_text())
    assert st["encoders"].startswith("FORCED mismatch")
