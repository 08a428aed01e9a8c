"""Anchor x retargeting study: {generated, source} anchor x {none, relative} landmarks on held-out,
cross-identity pairs of a trained checkpoint (the demo's), CPU-sized.

    python -m benchmarks.anchor_modes --data DATA [--ckpt ...] [--pairs 4] [--frames 8] [--steps 20]

For every mode the same pairs, frames, seed and steps go through model.evaluate's scoring
(`job_of` + `evaluate_row`): identity CSIM (dlib, model/csim.py) of the generated frames to the SOURCE
(mean and min over frames) and to the DRIVER (mean), and LMSE to the landmarks the model was asked to
follow (the retargeted ones under `relative`). Identities come from the REAL crops (the first frame of
each clip, decoded from DATA/media with the clip's crop box), written into the samples as shards of
schema v2 carry them, so older shards without identity.npy work too. Pairs are cross-identity by
those embeddings (cosine below csim.SAME_PERSON_BELOW), not by video id. Two reference lines: the
source frame's own VAE reconstruction (the ceiling the decoder allows) and the driver's reconstructed
frames (what a model that copies the driver's face scores).
Writes DATA/eval/<figure name>.{json,md} and the figure (source, driving frames, each mode's frames).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

MODES = [("generated", "none"), ("generated", "relative"), ("source", "none"), ("source", "relative")]
SAME_PERSON_BELOW = 0.93   # dlib cosine: below ~0.93 is another person (model/csim.py's scale)


def real_identities(data: Path, held: list[dict]) -> dict[str, np.ndarray]:
    """{clip key: dlib identity of the clip's first real frame}, from the media and clips.parquet crop."""
    import pandas as pd

    from model.csim import identity_of_crops
    from pipeline.shards.config import EncoderConfig
    from pipeline.shards.decode import decode_clip

    rows = pd.read_parquet(data / "curate" / "clips.parquet").set_index("clip_id")
    out = {}
    for s in held:
        if s["__key__"] not in rows.index:
            continue    # a still pseudo-clip: no video to decode
        row = rows.loc[s["__key__"]].to_dict() | {"clip_id": s["__key__"]}
        frames, _, _ = decode_clip(row, data / row["media_path"], EncoderConfig(size=256, max_frames=2))
        out[s["__key__"]] = identity_of_crops(frames[:1])[0]
    return out


def cross_pairs(held: list[dict], ident: dict, n: int) -> list[tuple[dict, dict]]:
    """(driving, source) pairs of different people: each driving clip with the next clip whose identity
    cosine to it is below SAME_PERSON_BELOW."""
    from pipeline.curate.identity import cosine_similarity

    clips = [s for s in held if s["__key__"] in ident]
    out = []
    for k, drv in enumerate(clips):
        for src in clips[k + 1:] + clips[:k]:
            c = float(np.ravel(cosine_similarity(ident[drv["__key__"]][None], ident[src["__key__"]][None]))[0])
            if c < SAME_PERSON_BELOW:
                out.append((drv, src))
                break
        if len(out) == n:
            break
    return out


def run(data: Path, ckpt: str | None, n_pairs: int, frames: int, steps: int, seed: int, out_png: Path,
        anchor_noise: str = "step", split_ckpt: str | None = None) -> dict:
    import torch

    from model.csim import identity_csim, identity_encoder, identity_of_crops
    from model.evaluate import EvalConfig, GridRow, Scoring, evaluate_row, job_of
    from model.heldout import load_heldout, real_frames
    from pipeline.curate.landmarks import FaceMesh478
    from pipeline.paths import atomic_write_text

    torch.set_num_threads(1)
    t0 = time.time()
    from model.reenact import load_all

    gen = load_all(data, ckpt)
    record = gen.info["heldout"]
    if split_ckpt:   # another run's held-out clips (a fine-tune scored on its parent's pairs; it must hold them out too)
        from model.checkpoint import load

        record = load(Path(split_ckpt))["heldout"]
    held, split_note = load_heldout(data, gen.cfg, record)
    ident = real_identities(data, held)
    name = identity_encoder().name
    for s in held:             # what schema v2 shards carry: the clip's identity and its encoder's name
        if s["__key__"] in ident:
            s["identity.npy"] = ident[s["__key__"]]
            s["meta.json"] = {**s["meta.json"], "identity_model": name}
    chosen = cross_pairs(held, ident, n_pairs)
    if not chosen:
        raise SystemExit("anchor_modes: no cross-identity pair among the held-out clips")
    base = EvalConfig(max_frames=frames, seed=seed, anchor_noise=anchor_noise)
    rows, gens = [], {}
    with FaceMesh478(static=True) as mesh:
        scoring = Scoring(mesh, "unavailable: not computed in this study")
        for anchor, retarget in MODES:
            ec = replace(base, anchor=anchor, retarget=retarget)
            made = [job_of(d, s, ec, gen.cfg.model.frames) for d, s in chosen]
            jobs = [m[0] for m in made if m is not None]
            tr = time.time()
            kept = []
            r = evaluate_row(GridRow(steps=steps), jobs, _Keep(gen, kept), ec, scoring)
            r["seconds"] = round(time.time() - tr, 1)
            rows.append(r)
            gens[(anchor, retarget)] = kept
            print(f"anchor_modes: {anchor:9s} {retarget:8s} CSIM->source mean {_f(r['CSIM_mean'])} min {_f(r['CSIM'])}"
                  f"  CSIM->driver mean {_f(r['CSIM_driver_mean'])}  LMSE {_f(r['LMSE'], 2)} (raw driving "
                  f"{_f(r['LMSE_driving_raw'], 2)}, {r['lmse_frames']}/{r['frames']} frames)  ({r['seconds']}s)",
                  flush=True)
        # reference lines: the source frame through the VAE (ceiling), the driver's own frames (copying it)
        refs = {"source_reconstructed": [], "driver_reconstructed": []}
        for drv, src in chosen:
            s_img = real_frames(gen.enc, src["latent_mean.npy"][:1].astype(np.float32))
            d_img = real_frames(gen.enc, job_of(drv, src, base, gen.cfg.model.frames)[1])
            refs["source_reconstructed"].append(identity_csim(ident[src["__key__"]], identity_of_crops(s_img))["mean"])
            refs["driver_reconstructed"].append(identity_csim(ident[src["__key__"]], identity_of_crops(d_img))["mean"])
    refs = {k: float(np.mean(v)) for k, v in refs.items()}
    recon = [(real_frames(gen.enc, s["latent_mean.npy"][:1].astype(np.float32)),
              real_frames(gen.enc, job_of(d, s, base, gen.cfg.model.frames)[1])) for d, s in chosen]
    for mode, r in zip(MODES, rows):
        clips = gens[mode]
        r["PIX_source"] = float(np.mean([pixel_corr(g, s_img).mean() for g, (s_img, _) in zip(clips, recon)]))
        r["PIX_driver"] = float(np.mean([pixel_corr(g, d_img).mean() for g, (_, d_img) in zip(clips, recon)]))
    refs["pix_driver_vs_source"] = float(np.mean([pixel_corr(d_img, s_img).mean() for s_img, d_img in recon]))
    figure(chosen[:2], gens, gen, base, out_png)
    res = {"rows": rows, "pairs": [{"driving": d["__key__"], "source": s["__key__"],
                                    "driving_video": d["meta.json"]["video_id"], "source_video": s["meta.json"]["video_id"]}
                                   for d, s in chosen],
           "frames_per_clip": frames, "steps": steps, "seed": seed, "anchor_noise": anchor_noise, "references": refs, "split": split_note,
           "ckpt": gen.info["ckpt"], "figure": str(out_png), "seconds": round(time.time() - t0, 1)}
    out = data / "eval"
    out.mkdir(parents=True, exist_ok=True)
    stem = out_png.stem
    atomic_write_text(out / f"{stem}.json", json.dumps(res, indent=1, default=str))
    atomic_write_text(out / f"{stem}.md", markdown(res))
    print(markdown(res))
    return res


def pixel_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(T,) Pearson correlation of the RGB pixels of frames a (T, S, S, 3) with b (T or 1, S, S, 3)."""
    def z(x):
        x = x.reshape(len(x), -1).astype(np.float64)
        x = x - x.mean(1, keepdims=True)
        return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)
    return (z(a) * z(b)).sum(1)


class _Keep:
    """The Reenactor, keeping each generated clip (for the figure)."""

    def __init__(self, gen, kept: list):
        self.gen, self.kept, self.enc = gen, kept, gen.enc

    def generate(self, video, sc, progress: bool = False):
        lat, frames, plan = self.gen.generate(video, sc, progress)
        self.kept.append(frames)
        return lat, frames, plan


def _f(v, nd=3):
    return "n/a" if v is None else f"{v:.{nd}f}"


def markdown(res: dict) -> str:
    lines = ["| anchor | retarget | CSIM to source, mean | CSIM to source, min | CSIM to driver, mean | LMSE (asked) | "
             "LMSE (raw driving) | frames with a face | pixel corr. to source | pixel corr. to driver |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['Anchor']} | {r['Retarget']} | {_f(r['CSIM_mean'])} | {_f(r['CSIM'])} | "
                     f"{_f(r['CSIM_driver_mean'])} | {_f(r['LMSE'], 1)} | {_f(r['LMSE_driving_raw'], 1)} | "
                     f"{r['lmse_frames']}/{r['frames']} | {_f(r['PIX_source'], 2)} | {_f(r['PIX_driver'], 2)} |")
    ref = res["references"]
    lines.append("")
    lines.append(f"{len(res['pairs'])} cross-identity held-out pairs x {res['frames_per_clip']} frames, {res['steps']} "
                 f"respaced steps, seed {res['seed']}, CFG 1, CLIP+landmarks, source anchor noise `{res['anchor_noise']}`; "
                 f"checkpoint `{Path(res['ckpt']).name}`. "
                 f"References (CSIM to the source, mean): the source frame's own VAE reconstruction "
                 f"{ref['source_reconstructed']:.3f}; the driver's reconstructed frames {ref['driver_reconstructed']:.3f}; "
                 f"pixel correlation of the driver's frames with the source {ref['pix_driver_vs_source']:.2f}. "
                 f"Pixel corr.: Pearson correlation of the RGB pixels (64 px) of each generated frame with the source "
                 f"frame / with the co-timed driving frame (VAE reconstructions), mean over frames and pairs. "
                 f"LMSE (pixels of a 256 crop) is against the landmarks asked for: the driver's under `none`, the "
                 f"retargeted ones under `relative`.")
    return "\n".join(lines) + "\n"


def figure(pairs: list, gens: dict, gen, ec, out_png: Path, shown: int = 4) -> None:
    """For each pair: the source, its driving frames, and each mode's frames for the same times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from model.evaluate import job_of
    from model.heldout import real_frames

    rows = []
    for k, (drv, src) in enumerate(pairs):
        src_img = real_frames(gen.enc, src["latent_mean.npy"][:1].astype(np.float32))[0]
        drv_img = real_frames(gen.enc, job_of(drv, src, ec, gen.cfg.model.frames)[1])
        pick = np.unique(np.linspace(0, len(drv_img) - 1, shown).round().astype(int))
        rows.append((f"pair {k + 1}: driving", src_img, drv_img[pick]))
        rows += [(f"{a} / {r}", None, gens[(a, r)][k][pick]) for a, r in MODES]
    fig, axes = plt.subplots(len(rows), shown + 1, figsize=(1.0 * (shown + 1), 1.0 * len(rows)))
    for i, (label, first, imgs) in enumerate(rows):
        if first is not None:
            axes[i, 0].imshow(first)
            axes[i, 0].set_title("source", fontsize=5, pad=2)
        else:
            axes[i, 0].set_axis_off()
        axes[i, 1].set_ylabel(label, fontsize=5)
        for j, img in enumerate(imgs):
            axes[i, j + 1].imshow(img)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("anchor / retarget, demo model (64 px): generated frames at the driving frames' times", fontsize=6)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 0.985))   # room for the title
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=72)
    plt.close(fig)
    from PIL import Image

    with Image.open(out_png) as im:   # a 256-colour palette: a third of the bytes, no visible change at 64 px
        im.convert("RGB").quantize(256).save(out_png, optimize=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.anchor_modes", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--anchor-noise", default="step", choices=("step", "clean"))
    ap.add_argument("--split-ckpt", default=None, help="checkpoint whose held-out clips to use (default: --ckpt's)")
    ap.add_argument("--figure", default="benchmarks/figures/anchor_modes.png")
    a = ap.parse_args(argv)
    run(Path(a.data), a.ckpt, a.pairs, a.frames, a.steps, a.seed, Path(a.figure), a.anchor_noise, a.split_ckpt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
