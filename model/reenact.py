"""`make reenact SOURCE=img DRIVING=video [CKPT=...]`: the source face performing the driving video.

1. Source image: one face found (MediaPipe), cropped with curation's rule (face ≈ 0.45 of the crop
   width, ≈ 0.53 of its height; pipeline.curate.faces.place_crop), resized to 256, CLIP-embedded with the same
   encoder and preprocessing as the shards.
2. Driving video: one fixed crop placed the same way from faces detected on up to 16 spread frames;
   every frame cropped to 256 and given MediaPipe's 478x3 landmarks in crop coordinates (x, y in
   [0, 1], as in the shards). Frames with no face get landmarks interpolated linearly between the
   nearest frames that have one (copied from the nearest at the ends) and are listed in the stats.
3. Anchored Diffusion (model.anchored) over all frames in one batch of sequences, then VAE decode
   (vae.decode(latents / scaling_factor)) and H.264 MP4, optionally source | driving | generated.
Anchor (`--anchor`): `generated` (the paper's: driving frame `--anchor-frame` is generated once and
shared by every sequence) or `source` (the source crop's VAE latent is the anchor, noised to every step,
with the source's landmarks, at the time of the anchor frame; model/anchored.py "Source anchor").
Landmarks (`--retarget`): `relative` (default) moves the SOURCE's face by the driver's expression and
head motion relative to the anchor frame (model/retarget.py), `none` feeds the driver's raw landmarks
(its face shape too). A source image and a driving video are taken to be two people: relative retargeting
of a video onto its own reference frame is the identity map, so the default costs self-reenactment
nothing. Time offsets are clamped to the checkpoint's trained range (model.max_offset_s).
Stats JSON next to the output: timings, the plan, anchor and retarget modes, filled frames, LMSE (against the
landmarks the model followed; `lmse_driving_raw` against the driver's own) and CSIM of the result: CSIM is
identity similarity (model/csim.py: dlib face-identity embeddings, source crop vs every generated frame,
min and mean), beside the same figure for the driving frames (how similar the *driving* person is to the
source: a generated video that only copies the driving face scores about that) and the CLIP similarity
under its own name (`clip_sim`, labelled untrained for the offline tiny CLIP).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SIZE = 256


class ReenactError(RuntimeError):
    """A user-facing problem with the inputs; printed as one line, exit code 2."""


# ----------------------------------------------------------------------------- faces and crops

def _detector():
    from pipeline.curate.faces import FacesConfig, make_detector

    cfg = FacesConfig()
    return make_detector(cfg), cfg


def face_boxes(rgb: np.ndarray, detector, cfg) -> list[tuple]:
    """Relative (x, y, w, h, score) boxes, largest first, ignoring faces much smaller than the largest
    (curation's multi-face rule: a second face counts when its area >= multi_face_ratio x the largest)."""
    boxes = detector(rgb)
    if not boxes:
        return []
    big = boxes[0][2] * boxes[0][3]
    return [b for b in boxes if b[2] * b[3] >= cfg.multi_face_ratio * big]


def source_crop(path: str | Path, size: int = SIZE) -> np.ndarray:
    import cv2

    from pipeline.curate.faces import place_crop
    from pipeline.video_io import crop_square

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ReenactError(f"cannot read the source image {Path(path).name}")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    det, cfg = _detector()
    faces = face_boxes(rgb, det, cfg)
    if not faces:
        raise ReenactError(f"no face found in the source image {Path(path).name}")
    if len(faces) > 1:
        raise ReenactError(f"{len(faces)} faces in the source image {Path(path).name}; it needs exactly one")
    c = place_crop([faces[0][:4]], rgb.shape[1], rgb.shape[0], cfg)
    return crop_square(rgb, c.x0, c.y0, c.size, size)


def driving_frames(path: str | Path, size: int = SIZE, max_frames: int = 0, probes: int = 16):
    """(frames (N, size, size, 3) uint8, fps, crop dict) of the driving video with one fixed face crop.

    Two decoding passes, so a long video is never held at full size: faces on up to `probes` spread
    frames place the crop, then every frame is cropped and resized as it is decoded."""
    from pipeline.curate.faces import place_crop
    from pipeline.video_io import VideoError, crop_square, iter_frames, probe, read_frames

    try:
        info = probe(path)
        n = min(info.num_frames, max_frames) if max_frames else info.num_frames
        picks = np.unique(np.linspace(0, max(n - 1, 0), min(probes, max(n, 1))).round().astype(int))
        sample = read_frames(path, picks.tolist())
        det, cfg = _detector()
        boxes = [fb[0][:4] for i in sorted(sample) if (fb := face_boxes(sample[i], det, cfg))]
        if not boxes:
            raise ReenactError(f"no face found in the driving video {Path(path).name}")
        c = place_crop(boxes, info.width, info.height, cfg)
        frames = [crop_square(f, c.x0, c.y0, c.size, size) for _, f in iter_frames(path, 0, max_frames or None)]
    except VideoError as e:
        raise ReenactError(f"unreadable driving video: {e}") from None
    if not frames:
        raise ReenactError(f"the driving video {Path(path).name} has no frames")
    return np.stack(frames), float(info.fps), {"x0": c.x0, "y0": c.y0, "size": c.size,
                                               "face_w_ratio": round(c.face_w_ratio, 4)}


def fill_missing(lm: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Landmarks of faceless frames from their neighbours: linear between the nearest valid frames
    before and after, the nearest valid one at the ends. Returns (filled copy, filled indices)."""
    ok = np.asarray(ok, bool)
    if not ok.any():
        raise ReenactError("no face found on any frame of the driving video")
    out = np.array(lm, dtype=np.float32, copy=True)
    valid = np.nonzero(ok)[0]
    missing = np.nonzero(~ok)[0]
    flat = out.reshape(len(out), -1)
    for j in range(flat.shape[1]):  # np.interp holds the end values constant: the nearest valid frame
        flat[missing, j] = np.interp(missing, valid, flat[valid, j])
    return out, [int(i) for i in missing]


# ----------------------------------------------------------------------------- models

def newest_checkpoint(data: Path) -> Path:
    """The latest step checkpoint (checkpoint.latest: never a crash dump) of the most recent run."""
    from model.checkpoint import latest

    cands = [p for run in (data / "train").glob("*/checkpoints") if (p := latest(run)) is not None]
    if not cands:
        raise ReenactError(f"no checkpoint under {data / 'train'}; train first or pass --ckpt")
    return max(cands, key=lambda p: p.stat().st_mtime)


def find_models(data: Path, spec: str = "") -> str:
    """The encoder set: --models, else <data>/models/tiny or <data>/models (vae/ + clip/), else the hub names."""
    if spec:
        return spec
    for d in (data / "models" / "tiny", data / "models"):
        if (d / "vae").is_dir() and (d / "clip").is_dir():
            return str(d)
    return "default"


def check_encoders(state: dict, enc, ckpt_name: str, spec: str, force: bool, warn=None) -> str:
    """The checkpoint's training encoders vs the ones loaded: a mismatch is a ReenactError naming both
    fingerprints, unless `force` (then a loud warning). Returns a note for the stats."""
    warn = warn or (lambda m: print(m, file=sys.stderr, flush=True))
    have, want = enc.identity(), state.get("encoders")
    if want is None:
        warn(f"WARNING: checkpoint {ckpt_name} does not record its training encoders (made before they were "
             f"recorded); using {spec} ({have['fingerprint']}) unchecked")
        return "unchecked (old checkpoint)"
    if want.get("fingerprint") == have["fingerprint"]:
        return f"match {have['fingerprint']}"
    diff = ", ".join(f"{k} {want.get(k)!r} vs {have.get(k)!r}" for k in have
                     if k != "fingerprint" and want.get(k) != have.get(k))
    msg = (f"checkpoint {ckpt_name} was trained on encoders {want.get('fingerprint')} but {spec} is "
           f"{have['fingerprint']} ({diff})")
    if not force:
        raise ReenactError(msg + "; pass --models with the training encoders, or --force-encoders")
    warn(f"WARNING: --force-encoders: {msg}; outputs will not mean what the checkpoint learned")
    return f"FORCED mismatch {want.get('fingerprint')} -> {have['fingerprint']}"


@dataclass
class Reenactor:
    """A trained checkpoint ready to generate: its EMA model and config, the diffusion chain it was
    trained for, the VAE/CLIP encoders that match its latents, and where they came from (`info`)."""
    model: Any        # model.sdit.SDiT, eval mode
    cfg: Any          # model.config.Config of the checkpoint
    diffusion: Any    # model.diffusion.GaussianDiffusion (the full chain; sampling respaces it)
    enc: Any          # pipeline.shards.encode.Encoders
    info: dict        # ckpt, models, heldout (the run's held-out record), encoders (the check's note)

    def generate(self, video, sc, progress: bool = False):
        """(latents (N, C, h, w), decoded frames (N, S, S, 3) uint8, plan) for a VideoConditioning under
        SampleConfig `sc` (sampler, anchor, seeds, guidance, cfg_scale). Offsets are clamped to the
        checkpoint's trained range (model.max_offset_s). A video with a source anchor
        (VideoConditioning.with_source_anchor) has the source as frame 0: it is planned as the anchor
        and left out of the result, so the N outputs are the driving frames."""
        from dataclasses import replace

        from model.anchored import sample

        m = self.cfg.model
        sc = replace(sc, max_offset_s=m.max_offset_s)
        source = video.anchor_latent is not None
        if source:
            sc = replace(sc, sampler="anchored", anchor=0)
        plan = sc.plan(len(video.times), m.frames)
        cb = progress_printer(sc.steps) if progress else None
        lat = sample(self.model, self.diffusion, plan, video, (m.latent_channels, m.latent_size, m.latent_size), sc, cb)
        lat = lat[1:] if source else lat
        return lat, decode_latents(self.enc, lat), plan


def load_all(data: Path, ckpt: str | None, models: str = "", config: str | None = None,
             force_encoders: bool = False) -> Reenactor:
    """The checkpoint (default: the newest under DATA/train) with its encoders. Every mismatch is a
    ReenactError naming it."""
    from model.checkpoint import CheckpointMismatch, check_compatible, load, model_from_state, resolve
    from model.diffusion import GaussianDiffusion, linear_betas
    from pipeline.shards.config import EncoderConfig
    from pipeline.shards.encode import Encoders
    from pipeline.shards.model_sets import resolve_models

    path = Path(ckpt) if ckpt else newest_checkpoint(data)
    try:
        path = resolve(path)
    except FileNotFoundError:
        raise ReenactError(f"no checkpoint at {path}") from None
    try:
        state = load(path)
        model, cfg = model_from_state(state, ema=True)
        if config:
            from model.config import load_config

            check_compatible(state, load_config(config), path.name)
    except CheckpointMismatch as e:
        raise ReenactError(str(e)) from None
    except (RuntimeError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ReenactError(f"checkpoint {path.name} does not match its config: {first[:200]}") from None
    spec = find_models(data, models)
    try:
        enc = Encoders(resolve_models(spec, EncoderConfig(size=cfg.model.latent_size * 8)),
                       EncoderConfig(size=cfg.model.latent_size * 8, device="cpu"), with_landmarks=False)
    except Exception as e:
        raise ReenactError(f"cannot load the VAE/CLIP models ({spec}): {type(e).__name__}: {str(e)[:160]}") from None
    clip_dim = int(enc.clip.visual.output_dim)
    if clip_dim != cfg.model.clip_dim:
        raise ReenactError(f"checkpoint {path.name} expects clip_dim {cfg.model.clip_dim} but the CLIP model "
                           f"({spec}) gives {clip_dim}")
    if int(enc.vae.config.latent_channels) != cfg.model.latent_channels:
        raise ReenactError(f"checkpoint {path.name} expects {cfg.model.latent_channels} latent channels, "
                           f"the VAE has {enc.vae.config.latent_channels}")
    diffusion = GaussianDiffusion(linear_betas(cfg.diffusion.steps))
    # "heldout": the videos the run never trained on (None: a checkpoint from before they were recorded)
    enc_note = check_encoders(state, enc, path.name, spec, force_encoders)
    return Reenactor(model, cfg, diffusion, enc, {"ckpt": str(path), "models": spec, "heldout": state.get("heldout"),
                                                  "encoders": enc_note})


def clip_embed(enc, frames: np.ndarray) -> np.ndarray:
    """(T, D) float32 L2-normalised CLIP embeddings, exactly as the shards compute them."""
    return enc.clip_embed(frames).astype(np.float32)


def decode_latents(enc, latents, batch: int = 8) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(latents), batch):
            img = enc.vae.decode(latents[i:i + batch].float() / enc.scaling_factor).sample
            out.append(((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


# ----------------------------------------------------------------------------- generation

def progress_printer(total: int, label: str = "sampling", every_s: float = 2.0):
    t0, last = time.time(), [0.0]

    def cb(k, x):
        now = time.time()
        if k + 1 == total or now - last[0] >= every_s:
            last[0] = now
            el = now - t0
            eta = el / (k + 1) * (total - k - 1)
            print(f"  {label}: step {k + 1}/{total}  {el:.0f}s elapsed, ~{eta:.0f}s left", file=sys.stderr, flush=True)
    return cb


def video_conditioning(landmarks: np.ndarray, times: np.ndarray, clip_emb: np.ndarray):
    """model.anchored.VideoConditioning from driving landmarks (N, 478, 3; NaN = 0), times (N,) in seconds
    and the source's CLIP embedding (D,)."""
    import torch

    from model.anchored import VideoConditioning

    return VideoConditioning(landmarks=torch.from_numpy(np.nan_to_num(landmarks).astype(np.float32)),
                             times=torch.from_numpy(np.asarray(times, np.float32)),
                             clip_emb=torch.from_numpy(np.asarray(clip_emb, np.float32)))


def source_inputs(enc, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(CLIP embedding (D,), VAE latent (C, h, w) in the scaled space the model samples) of the source
    crop: one VAE + CLIP pass, exactly as the shards encode a frame (the posterior mean)."""
    enc_out = enc.forward_models(src[None])
    latent = enc_out["latent_mean"][0].astype(np.float32) * np.float32(enc.scaling_factor)
    return enc_out["clip_emb"][0].astype(np.float32), latent


def side_by_side(source: np.ndarray, driving: np.ndarray, generated: np.ndarray) -> np.ndarray:
    return np.concatenate([np.broadcast_to(source, generated.shape), driving, generated], axis=2)


def run(args) -> dict:
    import torch

    from model.anchored import GUIDANCE, SampleConfig
    from model.csim import clip_label, csim_label
    from model.metrics import LMSE_SIZE, landmarks_of, lmse_landmarks, load_frames
    from model.retarget import retarget
    from pipeline.curate.landmarks import FaceMesh478
    from pipeline.paths import DataRoot, safe_name
    from pipeline.video_io import write_mp4

    t0 = time.time()
    root = DataRoot.of(args.data)
    if args.guidance not in GUIDANCE:
        raise ReenactError(f"unknown guidance {args.guidance!r}; known: {', '.join(GUIDANCE)}")
    if args.anchor == "source" and args.sampler != "anchored":
        raise ReenactError("--anchor source needs --sampler anchored (the naive sampler has no anchor)")
    torch.manual_seed(args.seed)
    # the inputs first (cheap), so a bad image or video fails before any model is loaded
    src = source_crop(args.source, SIZE)
    drv, fps, crop = driving_frames(args.driving, SIZE, args.max_frames)
    with FaceMesh478(static=True) as mesh:
        lm, ok = mesh.batch(drv)          # on the 256 crops: x, y in [0, 1] of the crop, as in the shards
        src_lm = mesh(src)
    filled, missing = fill_missing(lm, ok)
    if not 0 <= args.anchor_frame < len(drv):
        raise ReenactError(f"anchor frame {args.anchor_frame} outside the driving video (0..{len(drv) - 1})")
    if src_lm is None and (args.retarget != "none" or args.anchor == "source"):
        raise ReenactError(f"no face mesh on the source crop of {Path(args.source).name}; use --retarget none "
                           f"--anchor generated")
    # the landmarks the model is asked to follow: the driver's, or moved onto the source's face
    cond_lm = retarget(src_lm, filled, args.retarget, ref=args.anchor_frame)
    times = np.arange(len(drv), dtype=np.float32) / fps
    gen = load_all(root.root, args.ckpt, args.models, args.config, force_encoders=args.force_encoders)
    cfg, enc = gen.cfg, gen.enc
    if len(drv) < cfg.model.frames:
        raise ReenactError(f"the driving video has {len(drv)} frames, fewer than the sequence length "
                           f"F={cfg.model.frames}")
    size = cfg.model.latent_size * 8
    if size != SIZE:  # a model trained at another resolution (the tiny one: 64 px)
        src, drv = load_frames([src], size=size)[0], load_frames(drv, size=size)
    if args.anchor == "source":
        src_emb, src_lat = source_inputs(enc, src)
    else:
        src_emb = clip_embed(enc, src[None])[0]
    sc = SampleConfig(steps=args.steps, cfg_scale=args.cfg_scale, guidance=args.guidance, sampler=args.sampler,
                      anchor=args.anchor_frame, max_batch=args.max_batch, seed=args.seed, plan_seed=args.seed,
                      clip_x0=args.clip_x0, anchor_noise=args.anchor_noise)
    print(f"reenact: {len(drv)} frames @ {fps:.2f} fps, F={cfg.model.frames}, {args.steps} steps, "
          f"cfg_scale {args.cfg_scale}, {args.guidance}, {args.sampler}, {args.anchor} anchor, retarget "
          f"{args.retarget}; {len(missing)} faceless frames filled", file=sys.stderr, flush=True)
    video_in = video_conditioning(cond_lm, times, src_emb)
    if args.anchor == "source":   # the source is the anchor, at the time of the driving reference frame
        video_in = video_in.with_source_anchor(torch.from_numpy(src_lat), torch.from_numpy(src_lm),
                                               float(times[args.anchor_frame]))
    ts = time.time()
    _, frames, plan = gen.generate(video_in, sc, progress=True)
    t_sample = time.time() - ts
    glm, gok = landmarks_of(frames)              # LMSE in pixels of a 256 crop (model.metrics)
    out = Path(args.out) if args.out else root.path("reenact", f"{safe_name(Path(args.source).stem)}__"
                                                    f"{safe_name(Path(args.driving).stem)}.mp4")
    video = side_by_side(src, drv, frames) if args.side_by_side else frames
    write_mp4(out, video, fps)
    gen_emb = clip_embed(enc, frames)
    lm_res = lmse_landmarks(glm, cond_lm * LMSE_SIZE, gok, ok)      # vs what the model was asked to follow
    lm_raw = lmse_landmarks(glm, lm * LMSE_SIZE, gok, ok)           # vs the driver's own landmarks
    stats = {
        "source": str(args.source), "driving": str(args.driving), "out": str(out), **gen.info,
        "frames": int(len(drv)), "fps": fps, "driving_crop": crop, "faceless_frames_filled": missing,
        "sampler": args.sampler, "F": int(cfg.model.frames), "sequences": int(plan.num_sequences),
        "anchor": args.anchor, "anchor_frame": args.anchor_frame, "anchor_noise": args.anchor_noise,
        "retarget": args.retarget, "max_offset_s": float(cfg.model.max_offset_s),
        "steps": args.steps, "cfg_scale": args.cfg_scale, "guidance": args.guidance,
        "seed": args.seed, "max_batch": args.max_batch, "clip_x0": args.clip_x0, "side_by_side": bool(args.side_by_side),
        "sampling_s": round(t_sample, 3), "sampling_s_per_frame": round(t_sample / len(drv), 4),
        "total_s": round(time.time() - t0, 3),
        "lmse": lm_res["lmse"], "lmse_frames": lm_res["frames_used"], "lmse_driving_raw": lm_raw["lmse"],
        **_csim_stats(src, drv, frames, src_emb, gen_emb, enc),
    }
    out.with_suffix(".json").write_text(json.dumps(stats, indent=1))
    lm_txt = f"{stats['lmse']:.2f}" if stats["lmse"] is not None else "n/a (no face found in the output)"
    print(f"reenact: wrote {out} ({len(drv)} frames, {plan.num_sequences} sequences, {t_sample:.1f}s sampling); "
          f"LMSE {lm_txt}, {csim_label()} min {stats['csim']:.3f} mean {stats['csim_mean']:.3f} (driving person "
          f"vs source: min {stats['csim_driving']:.3f} mean {stats['csim_driving_mean']:.3f}); "
          f"{clip_label(enc.models.clip_label)} {stats['clip_sim']:.3f}")
    return stats


def _csim_stats(src, drv, gen, src_emb, gen_emb, enc) -> dict:
    """Identity CSIM of the generated frames and of the driving frames (both vs the source crop, at the
    model's resolution), and the CLIP similarity with its label."""
    from model.csim import clip_label, identity_csim, identity_encoder, identity_of_crops
    from model.metrics import csim_embeddings

    src_id = identity_of_crops(src[None])[0]
    gen_c, drv_c = identity_csim(src_id, identity_of_crops(gen)), identity_csim(src_id, identity_of_crops(drv))
    return {"csim": gen_c["min"], "csim_mean": gen_c["mean"], "csim_driving": drv_c["min"],
            "csim_driving_mean": drv_c["mean"], "csim_model": identity_encoder().name,
            "clip_sim": csim_embeddings(src_emb, gen_emb), "clip_sim_label": clip_label(enc.models.clip_label)}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m model.reenact", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data", help="data root (default: data)")
    ap.add_argument("--source", required=True, help="source image with exactly one face")
    ap.add_argument("--driving", required=True, help="driving video")
    ap.add_argument("--ckpt", default=None, help="checkpoint (default: newest under DATA/train/)")
    ap.add_argument("--config", default=None, help="optional train config the checkpoint must match")
    ap.add_argument("--models", default="", help="dir with vae/ and clip/ (default: DATA/models/tiny, DATA/models, hub)")
    ap.add_argument("--force-encoders", action="store_true",
                    help="use VAE/CLIP models other than the checkpoint was trained on (loud warning)")
    ap.add_argument("--dag", default="dags/reenact.yaml", help="defaults file (default dags/reenact.yaml)")
    ap.add_argument("--steps", type=int, default=None, help="respaced DDPM steps, 2..1000 (default 50)")
    ap.add_argument("--cfg-scale", "--cfg", dest="cfg_scale", type=float, default=None,
                    help="classifier-free guidance scale (1 = none)")
    ap.add_argument("--guidance", default=None, help="none | landmarks | clip | clip+landmarks")
    ap.add_argument("--sampler", default=None, choices=("anchored", "naive"))
    ap.add_argument("--anchor", default=None, choices=("generated", "source"),
                    help="generated (the paper's: a driving frame generated once, shared) or source (the source "
                         "crop's latent is the anchor, noised to every step)")
    ap.add_argument("--anchor-frame", type=int, default=None,
                    help="driving frame that is the anchor (generated) / the reference offsets and retargeting "
                         "count from (default 0)")
    ap.add_argument("--anchor-noise", default=None, choices=("step", "clean"),
                    help="source anchor: noised to each step (step, default) or given clean (clean: for models "
                         "trained with data.clean_reference_p)")
    ap.add_argument("--retarget", default=None, choices=("none", "relative"),
                    help="driving landmarks as they are (none) or moved onto the source's face shape (relative, "
                         "default)")
    ap.add_argument("--max-batch", type=int, default=None, help="sequences per model call (0 = all at once)")
    ap.add_argument("--max-frames", type=int, default=None, help="use only the first N driving frames (0 = all)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--clip-x0", type=float, default=None, help="clamp predicted x_0 to +-this (0 = off, as DiT)")
    ap.add_argument("--side-by-side", action="store_true", help="write source | driving | generated")
    ap.add_argument("--out", default=None, help="output .mp4 (default DATA/reenact/<source>__<driving>.mp4)")
    return ap


DEFAULTS = {"steps": 50, "cfg_scale": 1.0, "guidance": "clip+landmarks", "sampler": "anchored",
            "anchor": "generated", "anchor_frame": 0, "anchor_noise": "step", "retarget": "relative",
            "max_batch": 0, "max_frames": 0, "seed": 0, "clip_x0": 0.0}


def apply_defaults(args) -> None:
    """None flags <- the --dag YAML <- DEFAULTS; an unknown YAML key is an error."""
    from pipeline.configfile import ConfigError, check_keys, coerce, load_yaml

    try:
        doc = load_yaml(args.dag, default_path="dags/reenact.yaml")
        check_keys(doc, DEFAULTS, args.dag)
        for k, v in DEFAULTS.items():
            if getattr(args, k) is None:
                setattr(args, k, coerce(f"{args.dag}: {k}", doc.get(k, v), v))
    except ConfigError as e:
        raise ReenactError(str(e)) from None
    for k, known in (("anchor", ("generated", "source")), ("anchor_noise", ("step", "clean")),
                     ("retarget", ("none", "relative")), ("sampler", ("anchored", "naive"))):
        if getattr(args, k) not in known:   # a YAML value skips argparse's choices
            raise ReenactError(f"{args.dag}: {k} must be one of {', '.join(known)}, got {getattr(args, k)!r}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        apply_defaults(args)
    except ReenactError as e:
        print(f"reenact: error: {e}", file=sys.stderr)
        return 2
    if not 2 <= args.steps <= 1000:
        print(f"reenact: error: --steps must be in 2..1000, got {args.steps}", file=sys.stderr)
        return 2
    try:
        run(args)
    except ReenactError as e:
        print(f"reenact: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # e.g. the anchor outside the video
        print(f"reenact: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
