"""Sampling cost per generated frame: Anchored Diffusion vs naive independent chunks, same tiny sDiT.

Anchored sampling runs ceil((N-1)/(F-1)) sequences of F frames (every sequence re-generates the shared
anchor), naive ceil(N/F) chunks, so the expected overhead per frame is about F/(F-1) = 1 + 1/(F-1);
the target is anchored <= (1 + 1/(F-1)) x naive. With N chosen so that neither plan has spare slots the
plans predict F(N-1) / (N(F-1)), just under the target, so timing noise decides borderline cases;
`overhead_vs_plan` isolates what the synchronisation itself costs. Both are timed in the same run on the same model,
conditioning, steps and seed, one thread, as `repeats` back-to-back pairs; the figure is the median
paired ratio (with its quartiles), robust to the machine's drift between runs.

Two ways to feed the model, both reported:
  per_call_batch  both samplers evaluate `per_call` sequences per model call (the sampler's
                  `max_batch` knob); with 1, every model call on both sides has exactly the same shape,
                  so the ratio is the algorithm's and nothing else. The target is judged here. (With
                  4, a 9-row plan ends on a 1-row call and an 8-row one does not: remainder calls,
                  not the algorithm, would decide.)
  whole_batch     every sequence in one call (13 vs 10 rows at F = 4). On this CPU the per-row cost
                  of a forward pass depends on the batch size itself (measured below on identical
                  inputs as `forward_ms_per_row`), which moves the ratio by a few percent either way.
Source anchor (`source_anchor`): the same video sampled with the source latent as the anchor vs the
generated anchor, paired the same way. The source is one more frame of the plan (N + 1 frames, so one
more sequence when N - 1 fills the sequences exactly, as here) whose slot is set, not generated: the
target is no extra cost per frame beyond that plan difference (`overhead_vs_plan` ~ 1.0) plus one VAE
encode of the source per video (not timed here: the tiny sDiT has no VAE; the SD VAE encodes a 256 px
image in ~5 s on this CPU, DESIGN.md).
"""
from __future__ import annotations

import time
from pathlib import Path


def _time_pairs(model, diffusion, plans, cond, shape, sc, repeats: int) -> list[tuple[float, float]]:
    """(anchored, naive) wall times of `repeats` back-to-back pairs. Pairs, not independent bests: on
    a shared CPU a single run's time wanders by +-5%, which is more than the margin being measured,
    while the two runs of a pair see nearly the same machine, so the median paired ratio is stable."""
    from model.anchored import sample

    for p in plans:  # warm-up: allocator and kernels for both batch sizes
        sample(model, diffusion, p, cond, shape, type(sc)(steps=2))
    pairs = []
    for r in range(repeats):
        t = {}
        for k in ((0, 1) if r % 2 == 0 else (1, 0)):  # alternate the order: no first-runner advantage
            t0 = time.perf_counter()
            sample(model, diffusion, plans[k], cond, shape, sc)
            t[k] = time.perf_counter() - t0
        pairs.append((t[0], t[1]))
    return pairs


def _source_vs_generated(model, diffusion, n: int, F: int, cond, shape, sc, repeats: int) -> dict:
    """Paired timing of source-anchored vs generated-anchor sampling of the same n frames."""
    import numpy as np
    import torch

    from model.anchored import plan_anchored, sample

    src = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with_src = cond.with_source_anchor(src, cond.landmarks[0], float(cond.times[0]))
    runs = [(plan_anchored(n + 1, F), with_src), (plan_anchored(n, F), cond)]
    for p, c in runs:   # warm-up
        sample(model, diffusion, p, c, shape, type(sc)(steps=2))
    pairs = []
    for r in range(repeats):
        t = {}
        for k in ((0, 1) if r % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            sample(model, diffusion, runs[k][0], runs[k][1], shape, sc)
            t[k] = time.perf_counter() - t0
        pairs.append((t[0], t[1]))
    ratios = np.array([a / b for a, b in pairs])
    slots = runs[0][0].num_sequences / runs[1][0].num_sequences
    ratio = float(np.median(ratios))
    return {"source_sequences": runs[0][0].num_sequences, "generated_sequences": runs[1][0].num_sequences,
            "slot_ratio": round(slots, 3),
            "source_ms_per_frame": round(1000 * float(np.median([a for a, _ in pairs])) / n, 2),
            "generated_ms_per_frame": round(1000 * float(np.median([b for _, b in pairs])) / n, 2),
            "ratio_source_vs_generated": round(ratio, 3),
            "ratio_quartiles": [round(float(q), 3) for q in np.percentile(ratios, [25, 75])],
            "overhead_vs_plan": round(ratio / slots, 3),      # ~1.0: setting the anchor slot costs nothing
            "plus": "one VAE encode of the source per video (not timed: no VAE in this benchmark)"}


def _forward_ms_per_row(model, F: int, latent_size: int, batches: tuple[int, ...], reps: int = 7) -> dict:
    """One forward pass per row at each batch size, identical inputs per row (best of `reps`)."""
    import torch

    from model.sdit import Conditioning

    out = {}
    for b in batches:
        g = torch.Generator().manual_seed(0)
        x = torch.randn((b, F, 4, latent_size, latent_size), generator=g)
        lm, off, clip = torch.rand((b, F, 478, 3), generator=g), torch.rand((b, F), generator=g), torch.randn((b, 512), generator=g)
        t, cond = torch.full((b,), 500), Conditioning(lm, off, clip).dropped(False, False)
        best = float("inf")
        with torch.no_grad():
            for _ in range(reps + 1):
                t0 = time.perf_counter()
                model(x, t, cond)
                best = min(best, time.perf_counter() - t0)
        out[b] = round(1000 * best / b, 2)
    return out


# N per F where both plans are exact (no spare slots): (N-1) % (F-1) == 0 and N % F == 0,
# so the slot ratio is F(N-1) / (N(F-1)), just under the asymptotic 1 + 1/(F-1).
FRAMES = {4: 40, 8: 64}


def run(data_root: Path, steps: int = 10, repeats: int = 11, latent_size: int = 32, per_call: int = 1) -> dict:
    import numpy as np
    import torch

    from model.anchored import SampleConfig, VideoConditioning, plan_anchored, plan_naive
    from model.config import ModelConfig
    from model.diffusion import GaussianDiffusion, linear_betas
    from model.sdit import SDiT

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: far less sensitive to other processes on a shared machine
    out: dict = {"steps": steps, "threads": 1, "model": f"sDiT tiny, latent {latent_size}x{latent_size}", "by_F": {}}
    diffusion = GaussianDiffusion(linear_betas(1000))
    shape = (4, latent_size, latent_size)
    for F, n in FRAMES.items():
        g = torch.Generator().manual_seed(0)
        cond = VideoConditioning(torch.rand((n, 478, 3), generator=g), torch.arange(n) / 25.0,
                            torch.randn((512,), generator=g))
        torch.manual_seed(0)
        model = SDiT(ModelConfig(size="tiny", frames=F, latent_size=latent_size, clip_dim=512)).eval()
        pa, pn = plan_anchored(n, F), plan_naive(n, F)
        slots = pa.num_sequences / pn.num_sequences
        target = 1 + 1 / (F - 1)
        res = {"n_frames": n, "anchored_sequences": pa.num_sequences, "naive_sequences": pn.num_sequences,
               "slot_ratio": round(slots, 3), "target_max": round(target, 3),   # what the plans predict; the goal
               "forward_ms_per_row": _forward_ms_per_row(model, F, latent_size, (pn.num_sequences, pa.num_sequences))}
        for proto, mb in (("per_call_batch", per_call), ("whole_batch", 0)):
            pairs = _time_pairs(model, diffusion, [pa, pn], cond, shape, SampleConfig(steps=steps, max_batch=mb),
                                repeats)
            ratios = np.array([a / b for a, b in pairs])
            ratio = float(np.median(ratios))
            ta, tn = float(np.median([a for a, _ in pairs])), float(np.median([b for _, b in pairs]))
            res[proto] = {
                "rows_per_call": mb or "all",
                "anchored_ms_per_frame": round(1000 * ta / n, 2), "naive_ms_per_frame": round(1000 * tn / n, 2),
                "ratio_anchored_vs_naive": round(ratio, 3),                    # median of the paired ratios
                "ratio_quartiles": [round(float(q), 3) for q in np.percentile(ratios, [25, 75])],
                # sampler cost beyond the extra sequences (synchronisation, bookkeeping): ~1.0 expected
                "overhead_vs_plan": round(ratio / slots, 3),
                "meets_target": bool(ratio <= target),
            }
        res["meets_target"] = res["per_call_batch"]["meets_target"]
        res["source_anchor"] = _source_vs_generated(model, diffusion, n, F, cond, shape,
                                                    SampleConfig(steps=steps, max_batch=per_call), max(3, repeats // 2))
        out["by_F"][F] = res
    torch.set_num_threads(threads)
    out["meets_target"] = all(v["meets_target"] for v in out["by_F"].values())
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(Path("data/bench/reenact")), indent=1))
