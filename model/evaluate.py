"""`make eval`: the supplementary's Table 1 grid (timesteps x CFG x guidance) on held-out shard clips.

Held-out split (model/split.py): the videos the checkpoint's training run never saw, as recorded in
the checkpoint (`data.heldout_fraction` of the videos by sha1(video_id), topped up on small corpora);
a checkpoint from before that record gets the same rule recomputed on today's shards, with a warning.
Cross-identity, as in the paper: driving clip k is reenacted with the source taken from the first
frame of the next held-out clip of another video (same video only if the split has one video).
Per grid row:
  LMSE  landmarks of the generated frames vs the driving clip's stored landmarks, pixels of a 256
        crop (model.metrics), over frames with a face on both sides;
  CSIM  per clip the minimum cosine between the source's CLIP embedding and each generated
        frame's, averaged over clips;
  FID   generated frames of all clips vs the real held-out frames (VAE reconstructions of the
        shards' posterior means: shards hold no pixels), or "unavailable: <why>" without weights.
Also `consistency_study`: anchored vs naive similarity to the anchor over distance, and LMSE with
and without landmark guidance (figures for the README).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

LABEL = {"none": "None", "landmarks": "Landmarks", "clip": "CLIP", "clip+landmarks": "CLIP+Landmarks"}


@dataclass
class EvalConfig:
    ckpt: str = ""
    models: str = ""
    max_clips: int = 4
    max_frames: int = 16
    sampler: str = "anchored"
    anchor: int = 0
    max_batch: int = 0
    seed: int = 0
    clip_x0: float = 0.0
    inception: str = ""
    fid_size: int = 299
    grid: str = "auto"
    grids: dict = field(default_factory=lambda: {"cpu": [{"steps": 50, "cfg": 1, "guidance": "clip+landmarks"}]})


def load_eval_config(path: str | None, overrides: list[str] = ()) -> EvalConfig:
    import yaml

    doc = yaml.safe_load(Path(path).read_text()) if path and Path(path).is_file() else {}
    if path and not Path(path).is_file() and path != "dags/eval.yaml":
        raise SystemExit(f"evaluate: error: config file not found: {path}")
    for ov in overrides:
        k, _, v = ov.partition("=")
        doc[k] = yaml.safe_load(v)
    known = {f.name: f for f in fields(EvalConfig)}
    cfg = EvalConfig()
    for k, v in (doc or {}).items():
        if k not in known:
            raise SystemExit(f"evaluate: error: unknown eval config key {k!r} (known: {', '.join(known)})")
        cur = getattr(cfg, k)
        setattr(cfg, k, v if isinstance(cur, dict) else type(cur)(v))
    return cfg


def load_heldout(data: Path, cfg, record: dict | None) -> tuple[list[dict], str]:
    """Decoded held-out samples (all shard members) sorted by clip id, and a note on the split.

    `record`: the checkpoint's held-out record ({fraction, min_clips, videos}); None for a checkpoint
    that predates it (the rule is recomputed from its config and the note says it may have seen them)."""
    from model.data import decode, resolve_shards
    from model.split import HeldOut, heldout_videos
    from pipeline.shardio import read_samples

    samples = []
    for url in resolve_shards("", data):
        for key, members in read_samples(Path(url)):
            samples.append(decode({"__key__": key, **{suffix: data_ for suffix, data_ in members}}))
    if not samples:
        raise SystemExit(f"evaluate: error: no shard samples under {data / 'shards'}")
    counts: dict[str, int] = {}
    for s in samples:
        counts[s["meta.json"]["video_id"]] = counts.get(s["meta.json"]["video_id"], 0) + 1
    if record is None:
        f, m = cfg.data.heldout_fraction, cfg.data.heldout_min_clips
        held = HeldOut(heldout_videos(counts, f, m), f)
        note = (f"split recomputed (sha1(video_id) < {f}, topped up to {m} clips): WARNING the checkpoint "
                f"predates held-out records and may have trained on these clips")
    elif record["videos"] is None:
        held = HeldOut(None, record["fraction"])
        note = f"split: sha1(video_id) < {record['fraction']}, excluded from training"
    else:
        if not record["videos"]:
            raise SystemExit("evaluate: error: the checkpoint's training run held out no video "
                             "(data.heldout_fraction=0): every shard clip was trained on")
        held = HeldOut(set(record["videos"]), record["fraction"])
        note = f"split: the {len(record['videos'])} videos the training run held out"
    out = sorted((s for s in samples if s["meta.json"]["video_id"] in held), key=lambda s: s["__key__"])
    if not out:
        raise SystemExit("evaluate: error: none of the checkpoint's held-out videos is in the shards any more")
    return out, note


def pairs(held: list[dict], max_clips: int) -> list[tuple[dict, dict]]:
    """(driving, source) with the source from another video where possible."""
    out = []
    for k, drv in enumerate(held[:max_clips]):
        others = held[k + 1:] + held[:k]
        src = next((s for s in others if s["meta.json"]["video_id"] != drv["meta.json"]["video_id"]),
                   others[0] if others else drv)
        out.append((drv, src))
    return out


def driving_of(s: dict, max_frames: int):
    """(landmarks filled (T,478,3), raw landmarks, ok, times, latent_mean) on <= max_frames spread frames."""
    from model.reenact import fill_missing

    T = len(s["time_s.npy"])
    idx = np.unique(np.linspace(0, T - 1, min(T, max_frames)).round().astype(int)) if max_frames else np.arange(T)
    lm, ok = s["landmarks.npy"][idx].astype(np.float32), s["landmarks_ok.npy"][idx].astype(bool)
    filled, _ = fill_missing(lm, ok)
    return filled, lm, ok, s["time_s.npy"][idx].astype(np.float32), s["latent_mean.npy"][idx].astype(np.float32)


def real_frames(enc, latent_mean: np.ndarray) -> np.ndarray:
    import torch

    from model.reenact import decode_latents

    return decode_latents(enc, torch.from_numpy(latent_mean) * enc.scaling_factor)


def evaluate_row(row: dict, jobs, model, cfg, diffusion, enc, ec: EvalConfig, real, net, mesh) -> dict:
    from model.anchored import SampleConfig
    from model.metrics import LMSE_SIZE, csim_embeddings, fid_from_features, inception_features, landmarks_of
    from model.reenact import clip_embed, generate

    sc = SampleConfig(steps=int(row["steps"]), cfg=float(row["cfg"]), guidance=str(row["guidance"]),
                      max_batch=ec.max_batch, seed=ec.seed, clip_x0=ec.clip_x0)
    se, n_used, csims, gens = 0.0, 0, [], []
    for k, (filled, lm, ok, times, src_emb) in enumerate(jobs):
        _, gen, _ = generate(model, cfg, diffusion, enc, filled, times, src_emb, sc, ec.sampler, ec.anchor,
                             ec.seed + k)
        gens.append(gen)
        glm, gok = landmarks_of(gen, mesh=mesh)
        use = gok & ok
        if use.any():
            se += float(((glm[use] - lm[use] * LMSE_SIZE) ** 2).sum())
            n_used += int(use.sum())
        csims.append(csim_embeddings(src_emb, clip_embed(enc, gen)))
    n_coord = n_used * lm.shape[1] * 3
    out = {"Timesteps": sc.steps, "CFG": sc.cfg, "Guidance": LABEL[sc.guidance],
           "LMSE": se / n_coord if n_coord else None, "CSIM": float(np.mean(csims)),
           "lmse_frames": n_used, "frames": int(sum(len(g) for g in gens))}
    if isinstance(net, str):
        out["FID"] = net
    else:
        out["FID"] = fid_from_features(inception_features(np.concatenate(gens), net, ec.fid_size), real)
    return out


def _fmt(v, nd):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    return f"{v:.{nd}f}" if abs(v) < 1000 else f"{v:.0f}"


def markdown(rows: list[dict], note: str) -> str:
    lines = ["| Timesteps | CFG | Guidance | FID | LMSE | CSIM |", "|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        fid = "unavailable" if isinstance(r["FID"], str) else _fmt(r["FID"], 1)
        lines.append(f"| {r['Timesteps']} | {r['CFG']:g} | {r['Guidance']} | {fid} | {_fmt(r['LMSE'], 2)} | "
                     f"{_fmt(r['CSIM'], 2)} |")
    return "\n".join(lines) + "\n\n" + note + "\n"


def run(data: Path, ec: EvalConfig) -> dict:
    import torch

    from model.metrics import find_inception_weights, inception_features, load_inception
    from model.reenact import ReenactError, load_all
    from pipeline.landmarks import FaceMesh478
    from pipeline.paths import DataRoot, atomic_write_text

    t0 = time.time()
    root = DataRoot.of(data)
    grid_name = ec.grid if ec.grid != "auto" else ("paper" if torch.cuda.is_available() else "cpu")
    if grid_name not in ec.grids:
        raise SystemExit(f"evaluate: error: grid {grid_name!r} not in grids ({', '.join(ec.grids)})")
    grid = ec.grids[grid_name]
    try:
        model, cfg, diffusion, enc, info = load_all(root.root, ec.ckpt or None, ec.models)
    except ReenactError as e:
        raise SystemExit(f"evaluate: error: {e}") from None
    held, split_note = load_heldout(root.root, cfg, info["heldout"])
    jobs, real, used = [], [], []
    for drv, src in pairs(held, ec.max_clips):
        filled, lm, ok, times, lat = driving_of(drv, ec.max_frames)
        if len(times) < cfg.model.frames or not ok.any():
            continue  # too short for one sequence, or no face at all: recorded in the stats
        jobs.append((filled, lm, ok, times, src["clip_emb.npy"][0].astype(np.float32)))
        real.append(real_frames(enc, lat))
        used.append({"driving": drv["__key__"], "source": src["__key__"], "frames": int(len(times)),
                     "cross_identity": drv["meta.json"]["video_id"] != src["meta.json"]["video_id"]})
    if not jobs:
        raise SystemExit("evaluate: error: no held-out clip long enough with a face (need >= F frames)")
    weights = Path(ec.inception) if ec.inception else find_inception_weights(root.root)[0]
    if weights is None or not weights.is_file():
        net = "unavailable: " + (find_inception_weights(root.root)[1] if weights is None
                                 else f"no Inception-v3 weights at {weights}")
        real_feats = None
    else:
        net = load_inception(weights)
        real_feats = inception_features(np.concatenate(real), net, ec.fid_size)
    rows = []
    with FaceMesh478(static=True) as mesh:
        for i, row in enumerate(grid):
            tr = time.time()
            r = evaluate_row(row, jobs, model, cfg, diffusion, enc, ec, real_feats, net, mesh)
            r["seconds"] = round(time.time() - tr, 2)
            rows.append(r)
            print(f"eval [{i + 1}/{len(grid)}] steps {r['Timesteps']} cfg {r['CFG']:g} {r['Guidance']}: "
                  f"FID {_fmt(r['FID'], 1)[:40]}, LMSE {_fmt(r['LMSE'], 2)}, CSIM {r['CSIM']:.3f} "
                  f"({r['seconds']}s)", flush=True)
    note = (f"Grid `{grid_name}` on {len(jobs)} held-out clips ({sum(u['frames'] for u in used)} frames; "
            f"{split_note}), {ec.sampler} sampling, checkpoint "
            f"`{Path(info['ckpt']).name}`, models `{info['models']}`. LMSE in pixels of a 256 crop; CSIM = "
            f"min cosine of CLIP embeddings (source vs generated) averaged over clips; FID against VAE "
            f"reconstructions of the held-out frames.")
    if isinstance(net, str):
        note += f" FID {net}."
    out_dir = root.dir("eval")
    result = {"rows": rows, "grid": grid_name, "clips": used, "config": asdict(ec), **info,
              "seconds": round(time.time() - t0, 2), "note": note}
    atomic_write_text(out_dir / "table1.md", markdown(rows, note))
    atomic_write_text(out_dir / "table1.json", json.dumps(result, indent=1))
    print(f"eval: wrote {out_dir / 'table1.md'} and table1.json ({len(rows)} rows, {result['seconds']}s)")
    return result


# ----------------------------------------------------------------------------- consistency study

def anchor_similarity(frames: np.ndarray, anchor: int = 0, size: int = 64) -> np.ndarray:
    """ASIM_i: Pearson correlation of the pixels (RGB, resized to size x size) of frame i with the anchor
    frame. 1 = the same picture up to brightness/contrast; it falls as the content drifts away."""
    from model.metrics import load_frames

    x = load_frames(frames, size=size).reshape(len(frames), -1).astype(np.float64)
    x -= x.mean(1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    return x @ x[anchor]


def by_distance(values: np.ndarray, anchor: int, width: int) -> list[dict]:
    """Mean of values[i] over |i - anchor| in bins [1, width], [width+1, 2 width], ..."""
    d = np.abs(np.arange(len(values)) - anchor)
    out = []
    for lo in range(1, int(d.max()) + 1, width):
        m = (d >= lo) & (d < lo + width)
        if m.any():
            out.append({"from": lo, "to": int(min(lo + width - 1, d.max())), "mean": float(values[m].mean())})
    return out


def consistency_study(data: Path, ckpt: str | None = None, models: str = "", steps: int = 50,
                      n_frames: int = 48, seed: int = 0, clip_key: str | None = None, plot: bool = True,
                      clip_x0: float = 0.0) -> dict:
    """For a trained (tiny) model: how consistent far-apart frames are under anchored vs naive sampling,
    and the landmark error with vs without landmark guidance. Self-reenactment of the longest held-out
    clip (source = its own first frame), so the real clip's curve is the reference.

    Anchor similarity ASIM(d): mean Pearson pixel correlation of frame i with frame 0 (the anchor) for
    frames at distance d (binned by F); ACLIP(d): the same with cosine of CLIP embeddings.
    Writes <data>/eval/consistency.json (+ .png); returns the dict."""
    from model.anchored import SampleConfig
    from model.metrics import LMSE_SIZE, cosine, landmarks_of, lmse_landmarks
    from model.reenact import clip_embed, generate, load_all
    from pipeline.paths import DataRoot, atomic_write_text

    root = DataRoot.of(data)
    model, cfg, diffusion, enc, info = load_all(root.root, ckpt, models)
    held, split_note = load_heldout(root.root, cfg, info["heldout"])
    clip = next((s for s in held if s["__key__"] == clip_key), None) if clip_key else \
        max(held, key=lambda s: len(s["time_s.npy"]))
    if clip is None:
        raise SystemExit(f"evaluate: error: clip {clip_key!r} not among the held-out clips")
    T = min(len(clip["time_s.npy"]), n_frames)
    filled, lm, ok, times, lat = driving_of({k: (v[:T] if isinstance(v, np.ndarray) else v) for k, v in clip.items()}, 0)
    src_emb = clip["clip_emb.npy"][0].astype(np.float32)
    F = cfg.model.frames
    real = real_frames(enc, lat)
    res = {"clip": clip["__key__"], "frames": int(T), "F": F, "steps": steps, "seed": seed, "clip_x0": clip_x0, **info,
           "split": split_note,
           "measure": "ASIM(d) = mean Pearson pixel correlation (64x64 RGB) of frame i with frame 0 at |i| = d",
           "curves": {}, "lmse": {}}
    gens = {"real": real}
    for name, sampler, guidance in (("anchored", "anchored", "clip+landmarks"), ("naive", "naive", "clip+landmarks"),
                                    ("anchored_no_landmarks", "anchored", "clip")):
        sc = SampleConfig(steps=steps, guidance=guidance, seed=seed, clip_x0=clip_x0)
        _, gens[name], _ = generate(model, cfg, diffusion, enc, filled, times, src_emb, sc, sampler, 0, seed)
    for name in ("real", "anchored", "naive"):
        asim = anchor_similarity(gens[name])
        emb = clip_embed(enc, gens[name])
        res["curves"][name] = {"asim": by_distance(asim, 0, F), "aclip": by_distance(cosine(emb, emb[0][None]), 0, F),
                               "asim_far": float(asim[T - T // 3:].mean()), "asim_near": float(asim[1:1 + T // 3].mean())}
    for name in ("anchored", "anchored_no_landmarks"):
        glm, gok = landmarks_of(gens[name])
        r = lmse_landmarks(glm, lm * LMSE_SIZE, gok, ok)
        res["lmse"][name] = {"lmse": r["lmse"], "frames_used": r["frames_used"], "frames": r["frames_total"]}
    out_dir = root.dir("eval")
    atomic_write_text(out_dir / "consistency.json", json.dumps(res, indent=1))
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        for name, style in (("real", "k--"), ("anchored", "C0-o"), ("naive", "C1-s")):
            c = res["curves"][name]["asim"]
            ax.plot([(b["from"] + b["to"]) / 2 for b in c], [b["mean"] for b in c], style, label=name, ms=4)
        ax.set_xlabel("distance to the anchor frame (frames)")
        ax.set_ylabel("ASIM (pixel correlation)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "consistency.png", dpi=120)
        plt.close(fig)
    c = res["curves"]
    print(f"consistency: far-frame ASIM anchored {c['anchored']['asim_far']:.3f}, naive {c['naive']['asim_far']:.3f}, "
          f"real {c['real']['asim_far']:.3f}; LMSE with landmarks {res['lmse']['anchored']['lmse']}, "
          f"without {res['lmse']['anchored_no_landmarks']['lmse']}")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data")
    ap.add_argument("--config", default="dags/eval.yaml", help="eval config (default dags/eval.yaml)")
    ap.add_argument("--consistency", action="store_true",
                    help="run the anchored-vs-naive consistency study instead of the grid")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. grid=cpu max_clips=2")
    args = ap.parse_args(argv)
    ec = load_eval_config(args.config, args.overrides)
    if args.consistency:
        consistency_study(Path(args.data), ec.ckpt or None, ec.models, seed=ec.seed, clip_x0=ec.clip_x0)
    else:
        run(Path(args.data), ec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
