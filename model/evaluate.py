"""`make eval`: the supplementary's Table 1 grid (timesteps x CFG x guidance) on held-out shard clips.

Held-out split (model/split.py): the videos the checkpoint's training run never saw, as recorded in
the checkpoint (`data.heldout_fraction` of the videos by sha1(video_id), topped up on small corpora);
a checkpoint from before that record gets the same rule recomputed on today's shards, with a warning.
Cross-identity, as in the paper: driving clip k is reenacted with the source taken from the first
frame of the next held-out clip of another video (same video only if the split has one video).
Per grid row:
  LMSE  landmarks of the generated frames vs the landmarks the model was asked to follow (the driving
        clip's stored landmarks, retargeted onto the source's face under `retarget: relative`), pixels of
        a 256 crop (model.metrics), over frames with a face on both sides;
  CSIM  identity similarity (model/csim.py): per clip the minimum and the mean over generated frames of
        the cosine between the source clip's face-identity embedding (its identity.npy) and each
        frame's (dlib's ResNet), averaged over clips;
  CLIP-sim  the same minimum with CLIP embeddings (the supplementary's CSIM), labelled "untrained"
        when the CLIP has random weights (the offline tiny models);
  FID   generated frames of all clips vs the real held-out frames (VAE reconstructions of the
        shards' posterior means: shards hold no pixels), or "unavailable: <why>" without weights.
Anchor and landmarks (`anchor`, `retarget`, as `make reenact`'s flags): the source frame's stored latent
can be the anchor, and the driving landmarks moved onto the source's face (model/retarget.py); the
table rows and note record both, and `CSIM_driver_mean` is the identity similarity of the output to
the DRIVING clip (how much of the driver's face shows through).
`--consistency` runs model/consistency.py instead: anchored vs naive similarity to the anchor over
distance, and LMSE with and without landmark guidance (figures for the README).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from model.heldout import driving_of, load_heldout, real_frames

LABEL = {"none": "None", "landmarks": "Landmarks", "clip": "CLIP", "clip+landmarks": "CLIP+Landmarks"}


@dataclass
class EvalConfig:
    ckpt: str = ""
    models: str = ""
    max_clips: int = 4
    max_frames: int = 16
    sampler: str = "anchored"
    anchor: str = "generated"         # generated (paper) | source: the source frame's latent is the anchor
    anchor_frame: int = 0             # driving frame: the generated anchor / the reference for offsets, retargeting
    anchor_noise: str = "step"        # source anchor: q(x_t | source) at each step, or "clean"
    retarget: str = "relative"        # relative (driver's motion on the source's face) | none (raw driving landmarks)
    max_batch: int = 0
    seed: int = 0
    clip_x0: float = 0.0
    inception: str = ""
    fid_size: int = 299
    grid: str = "auto"
    consistency_clips: int = 4        # --consistency: held-out clips (one per video, longest first)
    consistency_seeds: int = 3        # --consistency: seeds per clip
    consistency_frames: int = 32      # --consistency: frames per clip (clips at least this long)
    force_encoders: bool = False      # --force-encoders: score with other VAE/CLIP than trained on (loudly)
    grids: dict[str, list[dict]] = field(default_factory=lambda: {
        "cpu": [{"steps": 50, "cfg_scale": 1.0, "guidance": "clip+landmarks"}]})


@dataclass
class GridRow:
    """One row of a Table 1 grid (`grids:` in dags/eval.yaml)."""
    steps: int = 50
    cfg_scale: float = 1.0
    guidance: str = "clip+landmarks"

    def __post_init__(self):
        if self.guidance not in LABEL:
            raise ValueError(f"unknown guidance {self.guidance!r}; known: {', '.join(LABEL)}")


def grid_rows(rows: list[dict], where: str, name: str) -> list[GridRow]:
    """The rows of grid `name`, every key and value type-checked (ConfigError naming grids.<name>[i].key)."""
    from pipeline.configfile import fill_dataclass

    return [fill_dataclass(GridRow, r, where, f"grids.{name}[{i}]") for i, r in enumerate(rows)]


def load_eval_config(path: str | None, overrides: list[str] = ()) -> EvalConfig:
    """EvalConfig <- the YAML (dags/eval.yaml is optional, a file you name is not) <- key=value overrides."""
    import yaml

    from pipeline.configfile import ConfigError, load_yaml, set_fields

    cfg = EvalConfig()
    where = path or "eval config"
    try:
        doc = load_yaml(path, default_path="dags/eval.yaml")
        for ov in overrides:
            k, sep, v = ov.partition("=")
            if not sep:
                raise ConfigError(f"override {ov!r}: expected key=value")
            doc[k] = yaml.safe_load(v)
        set_fields(cfg, doc, where)
        for k, known in (("anchor", ("generated", "source")), ("retarget", ("none", "relative")),
                         ("anchor_noise", ("step", "clean")), ("sampler", ("anchored", "naive"))):
            if getattr(cfg, k) not in known:
                raise ConfigError(f"{where}: {k} must be one of {', '.join(known)}, got {getattr(cfg, k)!r}")
        for name, rows in cfg.grids.items():
            grid_rows(rows, where, name)
    except ConfigError as e:
        raise SystemExit(f"evaluate: error: {e}") from None
    return cfg


def pairs(held: list[dict], max_clips: int) -> list[tuple[dict, dict]]:
    """(driving, source) with the source of another person where possible."""
    from model.split import person_of

    out = []
    for k, drv in enumerate(held[:max_clips]):
        others = held[k + 1:] + held[:k]
        src = next((s for s in others if person_of(s["meta.json"]) != person_of(drv["meta.json"])),
                   others[0] if others else drv)
        out.append((drv, src))
    return out


@dataclass
class Job:
    """One held-out driving clip: what the model is conditioned on and what its output is scored against."""
    video: Any                # model.anchored.VideoConditioning (landmarks filled where no face, retargeted)
    landmarks: np.ndarray     # (T, 478, 3) the landmarks asked for (retargeted driving), x, y in [0, 1] (NaN = no face)
    ok: np.ndarray            # (T,) bool: a face on the driving frame
    src_emb: np.ndarray       # (D,) CLIP embedding of the source (another video's frame)
    src_ident: Any = None     # the source clip's face-identity embedding (model.csim.source_identity)
    drv_ident: Any = None     # the driving clip's (CSIM to the driver: how much of the driver shows through)
    raw: np.ndarray | None = None   # (T, 478, 3) the driver's own landmarks (= `landmarks` without retargeting)


def job_of(drv: dict, src: dict, ec: EvalConfig, frames: int) -> tuple[Job, np.ndarray, dict] | None:
    """(Job, the driving clip's latent means, its record) for one (driving, source) pair under the config's
    anchor and retarget modes; None when the clip is shorter than F or has no face. The source is the first
    frame of its clip: its stored latent (the anchor under `anchor: source`) and landmarks."""
    import torch

    from model.csim import source_identity
    from model.reenact import video_conditioning
    from model.retarget import retarget

    filled, lm, ok, times, lat = driving_of(drv, ec.max_frames)
    if len(times) < frames or not ok.any():
        return None
    src_emb = src["clip_emb.npy"][0].astype(np.float32)
    src_lm = src["landmarks.npy"][0].astype(np.float32)
    src_has_face = bool(src["landmarks_ok.npy"][0]) and np.isfinite(src_lm).all()
    ref = min(ec.anchor_frame, len(times) - 1)
    mode = ec.retarget if src_has_face else "none"          # no source mesh: nothing to retarget onto
    cond_lm = retarget(src_lm, filled, mode, ref=ref)
    video = video_conditioning(cond_lm, times, src_emb)
    if ec.anchor == "source":
        scale = float(src["meta.json"]["vae_scaling_factor"])
        latent = torch.from_numpy(src["latent_mean.npy"][0].astype(np.float32) * np.float32(scale))
        video = video.with_source_anchor(latent, torch.from_numpy(np.nan_to_num(src_lm)), float(times[ref]))
    asked = np.where(ok[:, None, None], cond_lm, np.nan).astype(np.float32)
    used = {"driving": drv["__key__"], "source": src["__key__"], "frames": int(len(times)),
            "cross_identity": drv["meta.json"]["video_id"] != src["meta.json"]["video_id"], "retarget": mode}
    return Job(video, asked, ok, src_emb, source_identity(src), source_identity(drv), lm), lat, used


@dataclass
class Scoring:
    """What scores the generated frames: the face mesh (LMSE) and Inception (FID) with the real features."""
    mesh: Any                         # pipeline.curate.landmarks.FaceMesh478
    inception: Any                    # the Inception net, or "unavailable: <why>"
    real: np.ndarray | None = None    # Inception features of the real held-out frames


def evaluate_row(row: GridRow, jobs: list[Job], gen, ec: EvalConfig, scoring: Scoring) -> dict:
    """One grid row over every job: LMSE pooled over frames, CSIM averaged over clips, FID over all frames.
    `gen`: model.reenact.Reenactor."""
    from model.anchored import SampleConfig
    from model.csim import identity_csim, identity_of_crops
    from model.metrics import (
        LMSE_SIZE,
        csim_embeddings,
        fid_from_features,
        inception_features,
        landmarks_of,
        lmse_landmarks,
    )
    from model.reenact import clip_embed

    sc = SampleConfig(steps=row.steps, cfg_scale=row.cfg_scale, guidance=row.guidance, sampler=ec.sampler,
                      anchor=ec.anchor_frame, max_batch=ec.max_batch, seed=ec.seed, clip_x0=ec.clip_x0,
                      anchor_noise=ec.anchor_noise)
    per_clip, raw_clip, csims, gens, idents, drivers = [], [], [], [], [], []
    for k, job in enumerate(jobs):
        _, frames, _ = gen.generate(job.video, replace(sc, plan_seed=ec.seed + k))
        gens.append(frames)
        glm, gok = landmarks_of(frames, mesh=scoring.mesh)
        per_clip.append(lmse_landmarks(glm, job.landmarks * LMSE_SIZE, gok, job.ok))
        raw_clip.append(lmse_landmarks(glm, (job.landmarks if job.raw is None else job.raw) * LMSE_SIZE, gok, job.ok))
        csims.append(csim_embeddings(job.src_emb, clip_embed(gen.enc, frames)))
        ids = identity_of_crops(frames)
        idents.append(identity_csim(job.src_ident, ids))
        drivers.append(identity_csim(job.drv_ident, ids) if job.drv_ident is not None else {"mean": None})
    n_used = sum(r["frames_used"] for r in per_clip)   # LMSE pooled over every frame with a face on both sides
    lmse = sum(r["lmse"] * r["frames_used"] for r in per_clip if r["frames_used"]) / n_used if n_used else None
    lmse_raw = sum(r["lmse"] * r["frames_used"] for r in raw_clip if r["frames_used"]) / n_used if n_used else None
    out = {"Timesteps": sc.steps, "CFG": sc.cfg_scale, "Guidance": LABEL[sc.guidance],
           "LMSE": lmse, "CSIM": _mean([c["min"] for c in idents]), "CSIM_mean": _mean([c["mean"] for c in idents]),
           "CSIM_driver_mean": _mean([c["mean"] for c in drivers]), "Anchor": ec.anchor, "Retarget": ec.retarget,
           "LMSE_driving_raw": lmse_raw,
           "CLIP_sim": float(np.mean(csims)),
           "lmse_frames": n_used, "frames": int(sum(len(g) for g in gens))}
    if isinstance(scoring.inception, str):
        out["FID"] = scoring.inception
    else:
        out["FID"] = fid_from_features(inception_features(np.concatenate(gens), scoring.inception, ec.fid_size),
                                       scoring.real)
    return out


def _mean(v: list) -> float | None:
    v = [x for x in v if x is not None]
    return float(np.mean(v)) if v else None


def _fmt(v, nd):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    return f"{v:.{nd}f}" if abs(v) < 1000 else f"{v:.0f}"


def markdown(rows: list[dict], note: str, clip_name: str = "CLIP-sim") -> str:
    lines = [f"| Timesteps | CFG | Guidance | FID | LMSE | CSIM min | CSIM mean | {clip_name} |",
             "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        fid = "unavailable" if isinstance(r["FID"], str) else _fmt(r["FID"], 1)
        lines.append(f"| {r['Timesteps']} | {r['CFG']:g} | {r['Guidance']} | {fid} | {_fmt(r['LMSE'], 2)} | "
                     f"{_fmt(r['CSIM'], 3)} | {_fmt(r['CSIM_mean'], 3)} | {_fmt(r['CLIP_sim'], 2)} |")
    return "\n".join(lines) + "\n\n" + note + "\n"


def run(data: Path, ec: EvalConfig) -> dict:
    import torch

    from model.csim import csim_label
    from model.metrics import (
        find_inception_weights,
        inception_features,
        labelled,
        load_inception,
        similarity_note,
    )
    from model.reenact import ReenactError, load_all
    from pipeline.configfile import ConfigError
    from pipeline.curate.landmarks import FaceMesh478
    from pipeline.paths import DataRoot, atomic_write_text

    t0 = time.time()
    root = DataRoot.of(data)
    grid_name = ec.grid if ec.grid != "auto" else ("paper" if torch.cuda.is_available() else "cpu")
    if grid_name not in ec.grids:
        raise SystemExit(f"evaluate: error: grid {grid_name!r} not in grids ({', '.join(ec.grids)})")
    try:
        grid = grid_rows(ec.grids[grid_name], "eval config", grid_name)
        gen = load_all(root.root, ec.ckpt or None, ec.models, force_encoders=ec.force_encoders)
    except (ConfigError, ReenactError) as e:
        raise SystemExit(f"evaluate: error: {e}") from None
    info = gen.info
    held, split_note = load_heldout(root.root, gen.cfg, info["heldout"])
    jobs, lats, used = [], [], []
    for drv, src in pairs(held, ec.max_clips):
        made = job_of(drv, src, ec, gen.cfg.model.frames)
        if made is None:
            continue  # too short for one sequence, or no face at all: recorded in the stats
        jobs.append(made[0])
        lats.append(made[1])
        used.append(made[2])
    if not jobs:
        raise SystemExit("evaluate: error: no held-out clip long enough with a face (need >= F frames)")
    weights, why = ((Path(ec.inception), f"no Inception-v3 weights at {ec.inception}") if ec.inception
                    else find_inception_weights(root.root))
    if weights is None or not weights.is_file():
        net, real_feats = "unavailable: " + why, None
    else:  # the real frames are VAE-decoded only when there is an FID to compute
        net = load_inception(weights)
        real_feats = inception_features(np.concatenate([real_frames(gen.enc, lat) for lat in lats]), net, ec.fid_size)
    clip_note = similarity_note("CLIP-sim", gen.enc.models.clip_label, gen.enc.models.clip_trained)
    rows = []
    with FaceMesh478(static=True) as mesh:
        scoring = Scoring(mesh, net, real_feats)
        for i, row in enumerate(grid):
            tr = time.time()
            r = evaluate_row(row, jobs, gen, ec, scoring)
            r["seconds"] = round(time.time() - tr, 2)
            rows.append(r)
            print(f"eval [{i + 1}/{len(grid)}] steps {r['Timesteps']} cfg_scale {r['CFG']:g} {r['Guidance']}: "
                  f"FID {_fmt(r['FID'], 1)[:40]}, LMSE {_fmt(r['LMSE'], 2)}, {csim_label()} min "
                  f"{_fmt(r['CSIM'], 3)} mean {_fmt(r['CSIM_mean'], 3)}, {labelled(clip_note)} {r['CLIP_sim']:.3f} "
                  f"({r['seconds']}s)", flush=True)
    note = (f"Grid `{grid_name}` on {len(jobs)} held-out clips ({sum(u['frames'] for u in used)} frames; "
            f"{split_note}), {ec.sampler} sampling, {ec.anchor} anchor, retarget {ec.retarget}, checkpoint "
            f"`{Path(info['ckpt']).name}`, models `{info['models']}`. LMSE in pixels of a 256 crop; {csim_label()} = "
            f"cosine of face-identity embeddings, source clip vs each generated frame, min and mean over frames, "
            f"averaged over clips (n/a where the source has no identity); {labelled(clip_note)} = min cosine of CLIP "
            f"embeddings, source vs generated; FID against VAE reconstructions of the held-out frames.")
    if isinstance(net, str):
        note += f" FID {net}."
    if clip_note["caveat"]:
        note += f" {clip_note['caveat'][0].upper()}{clip_note['caveat'][1:]}."
    out_dir = root.dir("eval")
    result = {"rows": rows, "grid": grid_name, "clips": used, "config": asdict(ec), **info,
              "seconds": round(time.time() - t0, 2), "note": note, "clip_note": clip_note}
    atomic_write_text(out_dir / "table1.md", markdown(rows, note, labelled(clip_note)))
    atomic_write_text(out_dir / "table1.json", json.dumps(result, indent=1))
    print(f"eval: wrote {out_dir / 'table1.md'} and table1.json ({len(rows)} rows, {result['seconds']}s)")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data")
    ap.add_argument("--config", default="dags/eval.yaml", help="eval config (default dags/eval.yaml)")
    ap.add_argument("--consistency", action="store_true",
                    help="run the anchored-vs-naive consistency study instead of the grid")
    ap.add_argument("--force-encoders", action="store_true",
                    help="use VAE/CLIP models other than the checkpoint was trained on (loud warning)")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. grid=cpu max_clips=2")
    args = ap.parse_args(argv)
    ec = load_eval_config(args.config, args.overrides)
    ec.force_encoders = ec.force_encoders or args.force_encoders
    if args.consistency:
        from model.consistency import consistency_study

        consistency_study(Path(args.data), ec.ckpt or None, ec.models, seeds=ec.consistency_seeds,
                          clips=ec.consistency_clips, n_frames=ec.consistency_frames, clip_x0=ec.clip_x0,
                          force_encoders=ec.force_encoders)
    else:
        run(Path(args.data), ec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
