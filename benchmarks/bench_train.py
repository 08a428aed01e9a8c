"""Training throughput: samples/s and FLOPs per step of the tiny and S/2 (F = 4) sDiT, each against a
same-size plain transformer (same depth, width, heads, tokens; no conditioning, no adaLN, plain MSE)
timed in the same run on the same batch size, plus the shard loader's samples/s when shards exist.
"""
from __future__ import annotations

import time
from pathlib import Path


def _plain_model(cfg):
    """Plain pre-LN transformer of the sDiT's size on the same tokens (the reference)."""
    import torch
    from torch import nn

    from model.sdit import Attention, sincos_2d

    a, C, p = cfg.arch(), cfg.latent_channels, cfg.arch()["patch"]
    D, g = a["hidden"], cfg.latent_size // p

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.n1, self.attn, self.n2 = nn.LayerNorm(D), Attention(D, a["heads"]), nn.LayerNorm(D)
            self.mlp = nn.Sequential(nn.Linear(D, int(D * cfg.mlp_ratio)), nn.GELU(approximate="tanh"),
                                     nn.Linear(int(D * cfg.mlp_ratio), D))

        def forward(self, x):
            x = x + self.attn(self.n1(x))
            return x + self.mlp(self.n2(x))

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(C, D, p, stride=p)
            self.register_buffer("pos", torch.tensor(sincos_2d(D, g))[None])
            self.layers = nn.ModuleList([Layer() for _ in range(a["depth"])])
            self.out = nn.Linear(D, p * p * 2 * C)

        def forward(self, x):
            B, Fr = x.shape[:2]
            h = self.embed(x.flatten(0, 1)).flatten(2).transpose(1, 2) + self.pos  # (B*F, N, D)
            h = h.reshape(B, Fr, g * g, D)                                          # (B, F, N, D)
            for layer in self.layers:
                h = layer(h)
            return self.out(h)                                                     # (B, F, N, p*p*2C)
    return Plain()


def _batch(cfg, B):
    import torch

    m, g = cfg.model, torch.Generator().manual_seed(0)
    S, Fr = m.latent_size, m.frames
    lm = torch.rand(B, Fr, m.num_landmarks, 3, generator=g)
    return {"latents": torch.randn(B, Fr, m.latent_channels, S, S, generator=g), "landmarks": lm,
            "landmarks_ok": torch.ones(B, Fr, dtype=torch.bool), "offsets": torch.rand(B, Fr, generator=g),
            "clip_emb": torch.randn(B, m.clip_dim, generator=g), "drop_landmarks": torch.zeros(B, dtype=torch.bool),
            "drop_clip": torch.zeros(B, dtype=torch.bool)}


def _time_pair(a, b, rounds: int) -> tuple[float, float]:
    """Min step time of a and b, alternated round by round so both see the same machine load
    (the min discards the rounds another process stole the cores)."""
    a(), b()  # warm-up (allocator, kernels)
    ta, tb = [], []
    for _ in range(rounds):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return min(ta), min(tb)


def bench_size(size: str, frames: int, batch: int, steps: int) -> dict:
    import copy

    import torch

    from model.config import load_config
    from model.diffusion import GaussianDiffusion, linear_betas
    from model.sdit import SDiT, forward_flops
    from model.train import build_optimizer, compute_losses, step_noise, update_ema

    cfg = load_config(None, [f"model.size={size}", f"model.frames={frames}", f"train.global_batch={batch}"])
    torch.manual_seed(0)
    model = SDiT(cfg.model)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt, diffusion, b = build_optimizer(model, cfg), GaussianDiffusion(linear_betas(1000)), _batch(cfg, batch)
    m = cfg.model
    t, noise = step_noise(cfg, 0, 0, batch, (m.frames, m.latent_channels, m.latent_size, m.latent_size), 1000)

    def sdit_step():
        losses = compute_losses(model, diffusion, b, t, noise, cfg, torch.device("cpu"))
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        update_ema(ema, model, 0.9999)

    plain = _plain_model(m)
    popt = torch.optim.AdamW(plain.parameters(), lr=1e-4)
    target = torch.randn(batch, m.frames, (m.latent_size // m.arch()["patch"]) ** 2, m.arch()["patch"] ** 2 * 8)

    def plain_step():
        loss = (plain(b["latents"]) - target).pow(2).mean()
        popt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        popt.step()

    ts, tp = _time_pair(sdit_step, plain_step, steps)
    flops = 3 * forward_flops(m, batch=batch)
    return {"size": size, "frames": frames, "batch": batch, "tokens": frames * (m.latent_size // m.arch()["patch"]) ** 2,
            "params": sum(p.numel() for p in model.parameters()), "plain_params": sum(p.numel() for p in plain.parameters()),
            "step_s": round(ts, 4), "samples_per_s": round(batch / ts, 3), "flops_per_step": flops,
            "achieved_gflops": round(flops / ts / 1e9, 2), "plain_step_s": round(tp, 4),
            "sdit_vs_plain_step": round(ts / tp, 3)}


def bench_loader(shards: Path, batches: int = 20) -> dict | None:
    from model.config import load_config, with_shard_dims
    from model.data import check_schema, make_batches, resolve_shards

    if not (shards / "index.json").is_file():
        return None
    urls = resolve_shards(str(shards))
    cfg = load_config(None, ["model.size=tiny", "model.frames=4", "data.num_workers=0", "train.global_batch=4",
                             "model.latent_size=0", "model.clip_dim=0"])   # 0: latent size and CLIP width from the shards
    dims = check_schema(urls, cfg)
    with_shard_dims(cfg, dims.latent_size, dims.clip_dim)
    it = make_batches(urls, cfg)
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t0
    return {"shards": len(urls), "samples_per_s": round(batches * 4 / dt, 1)}


def run(data_root: Path) -> dict:
    import torch

    data_root = Path(data_root)
    out = {"threads": torch.get_num_threads(),
           "tiny": bench_size("tiny", frames=4, batch=4, steps=10),
           "S/2": bench_size("S/2", frames=4, batch=1, steps=2)}
    # <data>/bench/train -> <data>/shards (real shards, when `make shards` has run)
    loader = bench_loader(data_root.parent.parent / "shards")
    out["loader"] = loader if loader else "no shards at <data>/shards"
    for k in ("tiny", "S/2"):
        r = out[k]
        print(f"train {k:5} F={r['frames']} B={r['batch']}: {r['samples_per_s']} samples/s, "
              f"{r['flops_per_step'] / 1e9:.1f} GFLOP/step, sDiT step = {r['sdit_vs_plain_step']}x plain transformer")
    return out


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run(Path(sys.argv[1] if len(sys.argv) > 1 else "data/bench/train")), indent=1))
