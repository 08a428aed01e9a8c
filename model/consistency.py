"""Consistency study (`make eval` with --consistency): anchored vs naive chunks on far-apart frames.

For a trained (tiny) model and held-out clips: how similar each generated frame stays to the anchor
frame as the distance grows (ASIM, defined below), under Anchored Diffusion vs independent chunks,
with the real clip as the reference; and the landmark error with vs without landmark guidance.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model.heldout import driving_of, load_heldout, real_frames


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


def _curves(frames: np.ndarray, enc, F: int) -> dict:
    """ASIM / ACLIP by distance to frame 0, and the near / far ASIM means (first / last third)."""
    from model.metrics import cosine
    from model.reenact import clip_embed

    T = len(frames)
    asim = anchor_similarity(frames)
    emb = clip_embed(enc, frames)
    return {"asim": by_distance(asim, 0, F), "aclip": by_distance(cosine(emb, emb[0][None]), 0, F),
            "asim_far": float(asim[T - T // 3:].mean()), "asim_near": float(asim[1:1 + T // 3].mean())}


def _clip_inputs(clip: dict, n_frames: int, enc, F: int) -> dict:
    """What every seed of one clip shares: the driving inputs (cut to n_frames) and the real curve."""
    from model.reenact import video_conditioning

    T = min(len(clip["time_s.npy"]), n_frames)
    filled, lm, ok, times, lat = driving_of({k: (v[:T] if isinstance(v, np.ndarray) else v) for k, v in clip.items()}, 0)
    src_emb = clip["clip_emb.npy"][0].astype(np.float32)
    return {"video": video_conditioning(filled, times, src_emb), "lm": lm, "ok": ok, "frames": T,
            "real": _curves(real_frames(enc, lat), enc, F)}


def _one_consistency_run(clip: dict, inp: dict, sc, gen) -> dict:
    """Anchored vs naive ASIM/ACLIP curves (the real one from `inp`), and LMSE with vs without landmark
    guidance, for one (held-out clip, seed = sc.seed): self-reenactment, source = the clip's own first
    frame. `sc`: the SampleConfig the three runs share; `gen`: model.reenact.Reenactor."""
    from dataclasses import replace

    from model.metrics import LMSE_SIZE, landmarks_of, lmse_landmarks

    gens = {}
    for name, sampler, guidance in (("anchored", "anchored", "clip+landmarks"), ("naive", "naive", "clip+landmarks"),
                                    ("anchored_no_landmarks", "anchored", "clip")):
        _, gens[name], _ = gen.generate(inp["video"], replace(sc, sampler=sampler, guidance=guidance))
    F, enc, seed = gen.cfg.model.frames, gen.enc, sc.seed
    out = {"clip": clip["__key__"], "video_id": clip["meta.json"]["video_id"], "seed": seed, "frames": inp["frames"],
           "curves": {"real": inp["real"], "anchored": _curves(gens["anchored"], enc, F),
                      "naive": _curves(gens["naive"], enc, F)}, "lmse": {}}
    for name in ("anchored", "anchored_no_landmarks"):
        glm, gok = landmarks_of(gens[name])
        r = lmse_landmarks(glm, inp["lm"] * LMSE_SIZE, gok, inp["ok"])
        out["lmse"][name] = {"lmse": r["lmse"], "frames_used": r["frames_used"], "frames": r["frames_total"]}
    return out


def _mean_sd(xs: list[float]) -> dict:
    a = np.asarray([x for x in xs if x is not None], dtype=np.float64)
    return {"mean": float(a.mean()) if a.size else None, "sd": float(a.std(ddof=1)) if a.size > 1 else None,
            "n": int(a.size)}


def consistency_study(data: Path, ckpt: str | None = None, models: str = "", steps: int = 50,
                      n_frames: int = 32, seeds: int = 3, clips: int = 4, clip_key: str | None = None,
                      plot: bool = True, clip_x0: float = 0.0, force_encoders: bool = False) -> dict:
    """For a trained (tiny) model: how consistent far-apart frames are under anchored vs naive sampling,
    and the landmark error with vs without landmark guidance, over the `clips` longest held-out clips
    (one per video, at least `n_frames` long, all cut to `n_frames`; or just `clip_key`) x `seeds`
    seeds. Self-reenactment (source = the clip's own first frame), so the real clip's curve is the
    reference.

    Anchor similarity ASIM(d): mean Pearson pixel correlation of frame i with frame 0 (the anchor) for
    frames at distance d (binned by F); ACLIP(d): the same with cosine of CLIP embeddings; `asim_far`:
    mean ASIM over the last third of the frames. Summary: mean and sd over the runs, and in how many
    runs anchored beat naive (paired: same clip, same seed).
    Writes <data>/eval/consistency.json (+ .png); returns the dict."""
    from model.anchored import SampleConfig
    from model.reenact import load_all
    from pipeline.paths import DataRoot, atomic_write_text

    root = DataRoot.of(data)
    gen = load_all(root.root, ckpt, models, force_encoders=force_encoders)
    info = gen.info
    held, split_note = load_heldout(root.root, gen.cfg, info["heldout"])
    F = gen.cfg.model.frames
    if clip_key:
        chosen = [s for s in held if s["__key__"] == clip_key]
        if not chosen:
            raise SystemExit(f"evaluate: error: clip {clip_key!r} not among the held-out clips")
    else:  # the longest clip of each held-out video with a face and >= n_frames frames, longest first;
        # every run is cut to n_frames, so the distance bins of all runs are the same and can be averaged
        best: dict[str, dict] = {}
        for s in held:
            v = s["meta.json"]["video_id"]
            if s["landmarks_ok.npy"].any() and len(s["time_s.npy"]) >= n_frames and \
                    (v not in best or len(s["time_s.npy"]) > len(best[v]["time_s.npy"])):
                best[v] = s
        chosen = sorted(best.values(), key=lambda s: -len(s["time_s.npy"]))[:clips]
        if not chosen:
            raise SystemExit(f"evaluate: error: no held-out clip with a face and >= {n_frames} frames "
                             f"(n_frames={n_frames}; F={F})")
    runs = []
    for clip in chosen:
        inp = _clip_inputs(clip, n_frames, gen.enc, F)   # the real clip's decode and curve: once, not per seed
        for seed in range(seeds):
            sc = SampleConfig(steps=steps, seed=seed, plan_seed=seed, anchor=0, clip_x0=clip_x0)
            r = _one_consistency_run(clip, inp, sc, gen)
            runs.append(r)
            c = r["curves"]
            print(f"consistency [{len(runs)}/{len(chosen) * seeds}] clip {r['clip']} seed {seed}: far ASIM anchored "
                  f"{c['anchored']['asim_far']:.3f} naive {c['naive']['asim_far']:.3f} real {c['real']['asim_far']:.3f}",
                  flush=True)
    far = {n: [r["curves"][n]["asim_far"] for r in runs] for n in ("real", "anchored", "naive")}
    summary = {
        "asim_far": {n: _mean_sd(v) for n, v in far.items()},
        "anchored_beats_naive": int(sum(a > b for a, b in zip(far["anchored"], far["naive"]))),
        "anchored_closer_to_real": int(sum(abs(a - r) < abs(b - r)
                                           for a, b, r in zip(far["anchored"], far["naive"], far["real"]))),
        "runs": len(runs),
        "lmse": {n: _mean_sd([r["lmse"][n]["lmse"] for r in runs]) for n in ("anchored", "anchored_no_landmarks")},
        "lmse_frames_used": {n: int(sum(r["lmse"][n]["frames_used"] for r in runs))
                             for n in ("anchored", "anchored_no_landmarks")},
        "lmse_frames": int(sum(r["lmse"]["anchored"]["frames"] for r in runs)),
    }
    res = {"clips": [c["__key__"] for c in chosen], "videos": sorted({c["meta.json"]["video_id"] for c in chosen}),
           "seeds": seeds, "n_frames": n_frames, "F": F, "steps": steps, "clip_x0": clip_x0, **info,
           "split": split_note,
           "measure": "ASIM(d) = mean Pearson pixel correlation (64x64 RGB) of frame i with frame 0 at |i| = d; "
                      "asim_far = mean ASIM over the last third of the frames",
           "summary": summary, "runs": runs}
    out_dir = root.dir("eval")
    atomic_write_text(out_dir / "consistency.json", json.dumps(res, indent=1))
    if plot:
        _plot_consistency(runs, out_dir / "consistency.png")
    s = summary
    print(f"consistency over {s['runs']} runs ({len(chosen)} clips x {seeds} seeds): far-frame ASIM anchored "
          f"{s['asim_far']['anchored']['mean']:.3f}, naive {s['asim_far']['naive']['mean']:.3f}, real "
          f"{s['asim_far']['real']['mean']:.3f}; anchored > naive in {s['anchored_beats_naive']}/{s['runs']}; "
          f"LMSE with landmarks {s['lmse']['anchored']['mean']}, without {s['lmse']['anchored_no_landmarks']['mean']}")
    return res


def _plot_consistency(runs: list[dict], path: Path) -> None:
    """ASIM by distance to the anchor, mean over runs (bins are the same for equal-length runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, style in (("real", "k--"), ("anchored", "C0-o"), ("naive", "C1-s")):
        bins: dict[float, list[float]] = {}
        for r in runs:
            for b in r["curves"][name]["asim"]:
                bins.setdefault((b["from"] + b["to"]) / 2, []).append(b["mean"])
        xs = sorted(bins)
        ax.plot(xs, [float(np.mean(bins[x])) for x in xs], style, label=name, ms=4)
    ax.set_xlabel("distance to the anchor frame (frames)")
    ax.set_ylabel("ASIM (pixel correlation)")
    ax.set_title(f"mean over {len(runs)} runs", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
