"""`make gpu-check`: the trainer and the shard encoders at GPU speed, in one command (no network, about
5 of its 8-minute budget on one H100-class GPU).

1. sDiT-XL/2 training steps at F = 4 and F = 8 (about 8192 tokens per step: batch 8 and 4), bf16, eager
   and torch.compile'd: step time, samples/s, TFLOP/s, MFU (3 x the counted forward FLOPs over the
   device's peak, model/meter.py), peak memory. The step is the trainer's own code (compute_losses under
   fast_math, clipping, fused AdamW, EMA).
2. bf16 vs fp32 loss agreement: the real trainer (model.train.main, data loader included) for 50 steps
   on generated shards that follow the shard contract (smooth random latents, 512-d CLIP embeddings,
   face-like landmarks), once per precision with the same data and noise; the data-wait share comes
   from the same runs. (fp32 on a GPU means TF32 matmuls, as the trainer runs it.)
3. VAE and CLIP encode throughput (images/s at 256 px) through pipeline.shards.encode.Encoders, on
   the real architectures (SD's AutoencoderKL, open_clip ViT-B-32) with random weights: speed does not
   depend on the weights, and no download is needed.
Writes JSON (--out) and prints a table. Without a GPU the same code runs on tiny sizes (the tiny sDiT,
the tiny VAE/CLIP, compile with the aot_eager backend since inductor's C++ code generation takes minutes
on a small CPU); tests/test_gpu_check.py runs it that way. CPU figures say nothing about GPU speed.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGETS = {"mfu_bf16": 0.40, "data_wait": 0.05, "vae_images_per_s": 300.0}   # issue 15's GPU targets


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_batch(cfg, B: int, device, seed: int = 0) -> dict:
    """One training batch of the loader's layout (random latents, face-like landmarks)."""
    import torch

    m, g = cfg.model, torch.Generator().manual_seed(seed)
    S, Fr = m.latent_size, m.frames
    return {"latents": torch.randn(B, Fr, m.latent_channels, S, S, generator=g),
            "landmarks": 0.25 + 0.5 * torch.rand(B, Fr, m.num_landmarks, 3, generator=g),
            "landmarks_ok": torch.ones(B, Fr, dtype=torch.bool), "offsets": torch.rand(B, Fr, generator=g),
            "clip_emb": torch.randn(B, m.clip_dim, generator=g),
            "drop_landmarks": torch.zeros(B, dtype=torch.bool), "drop_clip": torch.zeros(B, dtype=torch.bool)}


def bench_step(size: str, frames: int, batch: int, device, compiled: bool, backend: str, steps: int,
               warmup: int, peak: float | None, grad_checkpoint: bool = False) -> dict:
    """Time `steps` trainer steps (bf16) after `warmup` (compilation happens there)."""
    import torch

    from model.config import load_config
    from model.diffusion import GaussianDiffusion, linear_betas
    from model.sdit import SDiT, forward_flops
    from model.train import build_optimizer, compute_losses, fast_math, step_noise, update_ema

    cfg = load_config(None, [f"model.size={size}", f"model.frames={frames}", f"train.global_batch={batch}",
                             f"model.grad_checkpoint={str(grad_checkpoint).lower()}",
                             "model.latent_size=32" if size != "tiny" else "model.latent_size=8",
                             "model.clip_dim=512" if size != "tiny" else "model.clip_dim=16"])
    torch.manual_seed(0)
    model = SDiT(cfg.model).to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = build_optimizer(model, cfg, fused=device.type == "cuda")
    net = torch.compile(model, backend=backend, dynamic=False) if compiled else model
    diffusion, b = GaussianDiffusion(linear_betas(1000)), _random_batch(cfg, batch, device)
    m = cfg.model
    t, noise = step_noise(cfg, 0, 0, batch, (m.frames, m.latent_channels, m.latent_size, m.latent_size), 1000)

    def step():
        with fast_math(device, bf16=True):
            losses = compute_losses(net, diffusion, b, t, noise, cfg, device)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        update_ema(ema, model, 0.9999)
        return losses["loss"]

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    _sync(device)
    step_s = (time.perf_counter() - t0) / steps
    flops = 3 * forward_flops(cfg.model, batch=batch)
    out = {"size": size, "frames": frames, "batch": batch, "tokens": frames * (m.latent_size // m.arch()["patch"]) ** 2 * batch,
           "precision": "bf16", "compiled": backend if compiled else "eager", "step_ms": round(1000 * step_s, 2),
           "samples_per_s": _sig(batch / step_s), "tflops_per_s": _sig(flops / step_s / 1e12),
           "mfu": _sig(flops / step_s / peak) if peak else None, "warmup_s": round(warm_s, 1),
           "peak_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
           "loss": float(loss.detach())}
    return out      # the model, EMA and optimizer go with this frame (the next configuration needs the memory)


def synth_shards(root: Path, n_clips: int, latent: int, clip_dim: int, frames: int = 24, seed: int = 0) -> Path:
    """Shards that follow the contract (pipeline.schema.SHARD_MEMBERS), demo-like in shape: per clip a
    smooth random latent drifting over time, unit-norm CLIP embeddings, landmarks inside the crop."""
    from pipeline.schema import SCHEMA_VERSION
    from pipeline.shards import io as shardio

    rng = np.random.default_rng(seed)
    sdir = Path(root) / "shards"
    sdir.mkdir(parents=True, exist_ok=True)
    index = shardio.load_index(sdir)
    per = 8
    for s in range(0, n_clips, per):
        samples = []
        for i in range(s, min(n_clips, s + per)):
            base = rng.standard_normal((1, 4, latent // 4, latent // 4))
            drift = rng.standard_normal((frames, 4, latent // 4, latent // 4)).cumsum(0) * 0.05
            mean = np.repeat(np.repeat(base + drift, 4, axis=2), 4, axis=3)        # (T, 4, latent, latent)
            emb = rng.standard_normal((frames, clip_dim))
            lm = 0.25 + 0.5 * rng.random((frames, 478, 3))
            feats = {"latent_mean": mean, "latent_std": np.full_like(mean, 0.1), "clip_emb": emb / np.linalg.norm(
                emb, axis=1, keepdims=True), "landmarks": lm, "landmarks_ok": np.ones(frames, bool),
                "frame_index": np.arange(frames), "time_s": np.arange(frames) / 25.0,
                "identity": np.zeros(0, np.float32)}                              # (0,): no identity
            meta = {"clip_id": f"c{i:05d}", "video_id": f"v{i // 2:05d}", "origin": "video", "fps": 25.0,
                    "size": latent * 8, "vae": "synthetic", "vae_scaling_factor": 1.0, "clip_model": "synthetic",
                    "clip_dim": clip_dim, "weights": "", "identity_id": f"video:v{i // 2:05d}", "identity_model": "",
                    "schema_version": SCHEMA_VERSION}
            samples.append((meta["clip_id"], shardio.sample_members(feats, meta)))
        index["shards"].append(shardio.write_shard(sdir / shardio.shard_name("synth", s // per), samples))
    shardio.save_index(sdir, index)
    return sdir


def loss_agreement(work: Path, size: str, frames: int, batch: int, steps: int, workers: int) -> dict:
    """The trainer twice on the same shards, data and noise: fp32 and bf16; per-step relative loss gap."""
    from model.train import main

    latent, clip_dim = (32, 512) if size != "tiny" else (8, 16)
    synth_shards(work, n_clips=64, latent=latent, clip_dim=clip_dim)
    curves, waits, rates = {}, {}, {}
    for precision in ("fp32", "bf16"):
        stats = main(["--data", str(work), "--config", "", "--run", precision, f"model.size={size}",
                      f"model.frames={frames}", f"model.latent_size={latent}", f"model.clip_dim={clip_dim}",
                      f"train.global_batch={batch}", f"train.max_steps={steps}", "train.log_every=1",
                      "train.ckpt_every=0", "train.warmup_steps=10", "train.lr=1e-4", "train.lr_mapping=1e-5",
                      f"train.precision={precision}", "train.cpu_preset=", f"data.num_workers={workers}",
                      "data.heldout_fraction=0.0", "data.heldout_min_clips=0"])
        log = [json.loads(x) for x in (Path(stats["run"]) / "log.jsonl").read_text().splitlines()]
        curves[precision] = np.array([r["loss"] for r in log])
        later = log[len(log) // 5:]                      # the first steps include start-up and the first fetches
        waits[precision] = float(np.mean([r["data_wait"] for r in later]))
        rates[precision] = float(np.median([r["steps_per_s"] for r in later]))
    rel = np.abs(curves["bf16"] - curves["fp32"]) / np.abs(curves["fp32"])
    return {"size": size, "frames": frames, "batch": batch, "steps": steps,
            "max_rel_diff": _sig(float(rel.max())), "mean_rel_diff": _sig(float(rel.mean())),
            "loss_first": round(float(curves["fp32"][0]), 4),
            "loss_last": {k: round(float(v[-1]), 4) for k, v in curves.items()},
            "data_wait": {k: round(v, 4) for k, v in waits.items()},
            "steps_per_s": {k: round(v, 3) for k, v in rates.items()}}


def _real_size_models(out: Path) -> Path:
    """SD's AutoencoderKL and open_clip ViT-B-32, random weights, saved where Encoders loads local models."""
    import open_clip
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sd_vae = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  block_out_channels=(128, 256, 512, 512), sample_size=256)  # stabilityai/sd-vae-ft-mse's config
    AutoencoderKL(**sd_vae).save_pretrained(out / "vae", safe_serialization=True)
    model_cfg = open_clip.get_model_config("ViT-B-32")
    clip = open_clip.CLIP(**model_cfg)
    (out / "clip").mkdir(parents=True, exist_ok=True)
    (out / "clip" / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(out / "clip" / "open_clip_model.safetensors"))
    return out


def encode_throughput(work: Path, gpu: bool, n_images: int) -> list[dict]:
    """images/s of the VAE posterior, the CLIP embedding and both, per precision, through Encoders."""

    from pipeline.shards.config import EncoderConfig
    from pipeline.shards.encode import Encoders
    from pipeline.shards.model_sets import build_tiny_models, resolve_models

    size = 256 if gpu else 64
    models = _real_size_models(work / "models") if gpu else build_tiny_models(work / "models", sample_size=64)
    frames = np.random.default_rng(0).integers(0, 256, (n_images, size, size, 3), dtype=np.uint8)
    rows = []
    for precision in (("fp16", "bf16", "fp32") if gpu else ("fp32", "bf16")):
        cfg = EncoderConfig(size=size, precision=precision, batch_frames=16, gpu_batch_frames=64)
        enc = Encoders(resolve_models(str(models), cfg), cfg, with_landmarks=False)
        row = {"precision": precision, "size": size, "images": n_images, "batch": enc.batch_frames}
        row.update(_encoder_rates(enc, frames))
        row["fp32_redone_batches"] = enc.fp32_redone
        rows.append(row)
    return rows


def _encoder_rates(enc, frames: np.ndarray) -> dict:
    """images/s of the VAE posterior alone, CLIP alone and both (Encoders.forward_models), after a warm-up."""
    import torch

    dev = torch.device(enc.device)
    parts = {"vae": lambda: [enc._vae(x) for x in enc._batches(frames)],
             "clip": lambda: enc.clip_embed(frames), "vae+clip": lambda: enc.forward_models(frames)}
    out = {}
    with torch.inference_mode():
        for name, fn in parts.items():
            fn()                                     # warm-up: cuDNN autotuning, allocator
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            out[f"{name}_images_per_s"] = round(len(frames) / (time.perf_counter() - t0), 1)
    return out


def _table(res: dict) -> str:
    lines = [f"gpu-check on {res['device']} (torch {res['torch']}; MFU peak: {res['peak_source']})", "",
             f"{'model':8} {'F':>2} {'B':>3} {'mode':10} {'step ms':>9} {'samples/s':>10} {'TFLOP/s':>8} "
             f"{'MFU':>6} {'mem GB':>7} {'warm-up s':>9}"]
    for r in res["steps"]:
        if "skipped" in r:
            lines.append(f"{r['size']:8} {r['frames']:>2} {r['batch']:>3} {r['compiled']:10} skipped: {r['skipped']}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        mem = f"{r['peak_mem_gb']:.1f}" if r["peak_mem_gb"] is not None else "n/a"
        lines.append(f"{r['size']:8} {r['frames']:>2} {r['batch']:>3} {r['compiled']:10} {r['step_ms']:>9.1f} "
                     f"{r['samples_per_s']:>10.4g} {r['tflops_per_s']:>8.4g} {mfu:>6} {mem:>7} {r['warmup_s']:>9.1f}")
    a = res["agreement"]
    lines += ["", f"bf16 vs fp32 ({a['size']}, F={a['frames']}, B={a['batch']}, {a['steps']} trainer steps): loss gap "
              f"max {100 * a['max_rel_diff']:.2f}%, mean {100 * a['mean_rel_diff']:.2f}%; final loss fp32 "
              f"{a['loss_last']['fp32']} bf16 {a['loss_last']['bf16']} (first {a['loss_first']}); data wait "
              f"{100 * a['data_wait']['bf16']:.1f}% of the bf16 step time", "",
              f"{'encoders':10} {'px':>4} {'batch':>5} {'VAE img/s':>10} {'CLIP img/s':>10} {'both img/s':>10}"]
    for r in res["encode"]:
        lines.append(f"{r['precision']:10} {r['size']:>4} {r['batch']:>5} {r['vae_images_per_s']:>10.1f} "
                     f"{r['clip_images_per_s']:>10.1f} {r['vae+clip_images_per_s']:>10.1f}")
    lines += ["", "targets: " + ", ".join(f"{k} {v}" for k, v in res["targets"].items())]
    return "\n".join(lines)


def run(out: Path, frames: list[int], steps: int, warmup: int, agreement_steps: int, budget_s: float,
        peak_tflops: float = 0.0, work: Path | None = None, modes: tuple[str, ...] = ("eager", "compiled"),
        encode_images: int = 0) -> dict:
    import torch

    from model.meter import device_peak

    t_start = time.perf_counter()
    gpu = torch.cuda.is_available()
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak, peak_src = device_peak(device, peak_tflops * 1e12)
    size, backend = ("XL/2", "inductor") if gpu else ("tiny", "aot_eager")
    res = {"device": torch.cuda.get_device_name(device) if gpu else f"CPU ({platform.processor() or platform.machine()}, "
           f"{torch.get_num_threads()} threads)", "gpu": gpu, "torch": torch.__version__, "peak_flops": peak,
           "peak_source": peak_src, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": []}
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_", dir=work))
    try:
        for F in frames:
            batch = max(1, 32 // F) if gpu else 2           # ~8192 tokens per step on a GPU
            for compiled in (m == "compiled" for m in modes):
                left = budget_s - (time.perf_counter() - t_start)
                if compiled and left < 150:                 # an XL/2 compile takes minutes; keep the budget
                    res["steps"].append({"size": size, "frames": F, "batch": batch, "compiled": backend,
                                         "skipped": f"time budget ({left:.0f}s left)"})
                    continue
                r = bench_step(size, F, batch, device, compiled, backend, steps, warmup, peak)
                res["steps"].append(r)
                print(f"gpu-check: {size} F={F} B={batch} {r['compiled']}: {r['step_ms']} ms/step, "
                      f"MFU {r['mfu']}", flush=True)
                if compiled:
                    torch._dynamo.reset()                   # the next shape compiles afresh (no dynamic shapes)
        res["agreement"] = loss_agreement(tmp / "train", size, frames[0], max(1, 32 // frames[0]) if gpu else 2,
                                          agreement_steps, workers=4 if gpu else 0)
        res["encode"] = encode_throughput(tmp / "encode", gpu, n_images=encode_images or (512 if gpu else 8))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    best_bf16 = max((r["mfu"] or 0.0 for r in res["steps"] if "mfu" in r), default=0.0)
    fp16 = next((r for r in res["encode"] if r["precision"] == "fp16"), None)
    res["targets"] = {"mfu_bf16": (f"{100 * best_bf16:.1f}% vs >= {100 * TARGETS['mfu_bf16']:.0f}%" if gpu else "n/a (CPU)"),
                      "data_wait": (f"{100 * res['agreement']['data_wait']['bf16']:.1f}% vs < "
                                    f"{100 * TARGETS['data_wait']:.0f}%" if gpu else "n/a (CPU)"),
                      "vae_images_per_s": (f"{fp16['vae_images_per_s']} vs >= {TARGETS['vae_images_per_s']:.0f} (fp16)"
                                           if gpu and fp16 else "n/a (CPU)")}
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(_table(res))
    print(f"gpu-check: wrote {out} ({res['seconds']}s)")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/bench/gpu_check.json")
    ap.add_argument("--frames", type=int, nargs="+", default=[4, 8], help="sequence lengths F to time")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens there)")
    ap.add_argument("--agreement-steps", type=int, default=50, help="trainer steps per precision")
    ap.add_argument("--budget-s", type=float, default=420, help="compiled runs are skipped past this")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (0 = model/meter.py's table)")
    ap.add_argument("--work", default=None, help="scratch directory (default: the system temp dir)")
    ap.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    ap.add_argument("--encode-images", type=int, default=0, help="images per encoder timing (0 = 512 GPU, 8 CPU)")
    args = ap.parse_args(argv)
    run(Path(args.out), args.frames, args.steps, args.warmup, args.agreement_steps, args.budget_s, args.peak_tflops,
        Path(args.work) if args.work else None, tuple(args.modes), args.encode_images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
