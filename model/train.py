"""sDiT trainer: one flat loop, DDP under torchrun (gloo on CPU, NCCL on GPU), or a plain process.

Run through `python -m model.launch` (which starts torchrun); `python -m model.train` alone trains in
one process. Per-step randomness (timesteps, noise) is drawn for the GLOBAL batch from a generator
seeded by (seed, step), and each rank takes its slice: the run does not depend on the world size, and
a resume continues exactly (the data stream itself is re-seeded by step so a resume never replays it).

Speed (GPU): bf16 autocast (`train.precision`), attention through the fused SDPA kernels (flash /
memory-efficient / cuDNN; never the unfused math path), fused AdamW, TF32 matmuls, `torch.compile`
behind `train.compile`, activation checkpointing behind `model.grad_checkpoint`. Every log line
carries the step rate and MFU (model/meter.py).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import sys
from pathlib import Path

log = logging.getLogger("reenactfaces.train")


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine down to min_ratio at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    prog = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * prog))


def set_lr(opt, cfg, step: int) -> float:
    f = lr_factor(step, cfg.train.warmup_steps, cfg.train.max_steps, cfg.train.min_lr_ratio)
    for g, base in zip(opt.param_groups, (cfg.train.lr, cfg.train.lr_mapping)):
        g["lr"] = base * f
    return f


def step_noise(cfg, step: int, rank: int, local: int, shape, T: int):
    """(t, noise) for this rank's slice of the global batch, a pure function of (seed, step)."""
    import torch

    g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
    t = torch.randint(0, T, (cfg.train.global_batch,), generator=g)
    noise = torch.randn((cfg.train.global_batch, *shape), generator=g)
    sl = slice(rank * local, (rank + 1) * local)
    return t[sl], noise[sl]


def compute_losses(net, diffusion, batch, t, noise, cfg, device):
    """Local-batch mean of loss terms (the expressive-region weight built from the landmarks)."""
    from model.diffusion import expressive_mask
    from model.sdit import Conditioning

    x0 = batch["latents"].to(device, non_blocking=True)
    B, Fr, C, H, W = x0.shape
    lm, ok = batch["landmarks"].to(device), batch["landmarks_ok"].to(device)
    weight = 1.0 + cfg.diffusion.lambda_ex * expressive_mask(lm, ok, H, W)[:, :, None]  # (B, F, 1, H, W)
    cond = Conditioning.from_batch(batch).to(device)
    clean = batch["clean_reference"].to(device) if "clean_reference" in batch else None   # (B,) bool, data.clean_reference_p
    terms = diffusion.training_losses(net, x0, t.to(device), cond, noise=noise.to(device), weight=weight,
                                      clean_reference=clean)
    return {k: v.float().mean() for k, v in terms.items()}


def update_ema(ema, model, decay: float) -> None:
    import torch

    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)


def build_optimizer(model, cfg, fused: bool = False):
    """AdamW with the paper's two learning rates (denoiser, mapping network); `fused`: one kernel for
    all parameters (CUDA)."""
    import torch

    mapping = {id(p) for p in model.mapping_parameters()}
    rest = [p for p in model.parameters() if id(p) not in mapping]
    tc = cfg.train
    return torch.optim.AdamW([{"params": rest, "lr": tc.lr}, {"params": model.mapping_parameters(), "lr": tc.lr_mapping}],
                             betas=tuple(tc.betas), eps=tc.eps, weight_decay=tc.weight_decay,
                             **({"fused": True} if fused else {}))


def fast_math(device, bf16: bool):
    """Context for forward + loss: bf16 autocast when asked (CUDA or CPU) and, on CUDA, attention only
    through the fused SDPA kernels (a silent fallback to the unfused math kernel costs ~2x memory and
    time; this way it is an error instead)."""
    import torch

    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16))
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        stack.enter_context(sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                         SDPBackend.CUDNN_ATTENTION]))
    return stack


def init_distributed():
    """(world, rank, device). torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; absent = one plain process."""
    import torch
    import torch.distributed as dist

    world, rank, local_rank = (int(os.environ.get(k, d)) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True   # fp32 matmuls on tensor cores (as DiT trains)
        torch.backends.cudnn.allow_tf32 = True
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, rank, device


def resume(ckpt_dir: Path, model, ema, opt, cfg, device) -> tuple[int, list | None]:
    """Load the latest step checkpoint of the run if there is one: (step, the held-out record it kept:
    model.split.HeldOut.record; older checkpoints hold a video split)."""
    from model import checkpoint as ckpt

    path = ckpt.latest(ckpt_dir)
    if path is None:
        return 0, None
    state = ckpt.load(path, map_location=device)
    ckpt.check_compatible(state, cfg, path)
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"])
    for g in opt.param_groups:   # the checkpoint's groups carry its hyper-parameters: this config's win
        g["betas"], g["eps"], g["weight_decay"] = tuple(cfg.train.betas), cfg.train.eps, cfg.train.weight_decay
    ckpt.set_rng_state(state["rng"])
    log.info("resumed %s at step %d", path, int(state["step"]))
    return int(state["step"]), state.get("heldout")


class NonFiniteLoss(RuntimeError):
    pass


def parse_args(argv):
    ap = argparse.ArgumentParser(description="Train the sDiT on WebDataset shards (use model.launch for torchrun).")
    ap.add_argument("--data", required=True, help="data root (shards under <data>/shards, runs under <data>/train)")
    ap.add_argument("--config", default="dags/train.yaml")
    ap.add_argument("--run", default=None, help="run name (default: train.run)")
    ap.add_argument("overrides", nargs="*", help="section.key=value, e.g. model.size=S/2 train.max_steps=100")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)  # before the heavy imports: --help stays instant
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from model import checkpoint as ckpt
    from model.config import load_config, with_shard_dims
    from model.data import check_schema, make_batches, resolve_shards
    from model.diffusion import GaussianDiffusion, linear_betas
    from model.meter import Meter, device_peak
    from model.samples import SampleGrids
    from model.sdit import SDiT, forward_flops
    from model.split import training_split
    from pipeline.paths import DataRoot, atomic_write_text, safe_name
    from pipeline.shards.encode import encoder_identity

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # ---- DDP, config (decided once, for this device), the shards' contract ----
    world, rank, device = init_distributed()
    is_main = rank == 0
    cfg = load_config(args.config, args.overrides + ([f"train.run={args.run}"] if args.run else []), device.type)
    tc, root = cfg.train, DataRoot.of(args.data)
    # an object-store root: checkpoints go straight there; logs, samples, TensorBoard are written to a local
    # copy of the run folder (pulled first, so a resumed run appends) and pushed at every checkpoint
    run_key = root.key("train", safe_name(tc.run))
    run_dir = root.dir(run_key) if not root.remote else root.pull_tree(run_key, skip="checkpoints/")
    ckpt_dir = run_dir / "checkpoints" if not root.remote else root.join(run_key, "checkpoints")
    urls = resolve_shards(cfg.data.shards, root.url)
    dims = check_schema(urls, cfg)                      # fails fast, on every rank, with the mismatch named
    with_shard_dims(cfg, dims.latent_size, dims.clip_dim)
    encoders = encoder_identity(dims.meta)              # which VAE/CLIP made these latents: reenact/eval check
    # ---- model, EMA, optimizer, diffusion; resume ----
    torch.manual_seed(tc.seed)
    model = SDiT(cfg.model).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = build_optimizer(model, cfg, fused=device.type == "cuda")
    diffusion = GaussianDiffusion(linear_betas(cfg.diffusion.steps))
    step, recorded = resume(ckpt_dir, model, ema, opt, cfg, device)
    first_step = step
    # held-out videos (make eval's split) never reach the model; a resumed run keeps its recorded set
    heldout, urls, split_note = training_split(urls, cfg.data.heldout_fraction, cfg.data.heldout_min_clips, recorded)
    net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    net = torch.compile(net, backend=tc.compile_backend, dynamic=False) if tc.compile else net   # fixed shapes
    batches = make_batches(urls, cfg, rank, world, start_step=step, exclude=heldout)
    bf16 = tc.precision == "bf16" or (tc.precision == "auto" and device.type == "cuda")
    peak, peak_src = device_peak(device, tc.peak_flops)
    meter = Meter(3 * forward_flops(cfg.model, batch=tc.global_batch), tc.global_batch, peak, world)
    writer = grids = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"))
        grids = SampleGrids(cfg, diffusion, run_dir, root, device, float(dims.meta["vae_scaling_factor"]), writer)
        atomic_write_text(run_dir / "heldout.json", json.dumps(heldout.record(), indent=1))
        for note in [*cfg.notes, split_note, f"MFU peak: {peak_src}"]:
            log.info("%s", note)
        log.info("run %s: model %s (%.2fM params), F=%d, world %d, global batch %d, %s%s, %d shards, %.1f GFLOP/step",
                 run_dir, cfg.model.size, sum(p.numel() for p in model.parameters()) / 1e6, cfg.model.frames, world,
                 tc.global_batch, "bf16" if bf16 else "fp32", f", compiled ({tc.compile_backend})" if tc.compile else "",
                 len(urls), meter.flops_per_step / 1e9)

    def save(kind: str = "step") -> Path | None:
        path = None
        if is_main:
            path = ckpt.save(ckpt.join(ckpt_dir, f"{kind}_{step:07d}.pt"), model=model, ema=ema, opt=opt, step=step,
                             cfg=cfg, schedule={"name": "warmup_cosine", "step": step}, heldout=heldout.record(),
                             encoders=encoders)
            if kind == "step":
                ckpt.prune(ckpt_dir, tc.keep_last)
            if root.remote:
                root.put_tree(run_dir, run_key)
        if world > 1:
            dist.barrier()
        return path

    def all_reduce_sum(x):
        dist.all_reduce(x)

    # ---- the loop: batch -> forward -> backward -> step -> EMA -> log -> samples -> checkpoint ----
    shape = (cfg.model.frames, cfg.model.latent_channels, cfg.model.latent_size, cfg.model.latent_size)
    local, last = tc.global_batch // world, {}
    model.train()
    while step < tc.max_steps:
        with meter.waiting():
            batch, counters = next(batches)
        meter.saw(counters)
        key = step % cfg.data.overfit_batches if cfg.data.overfit_batches else step   # overfit: the same noise too
        t, noise = step_noise(cfg, key, rank, local, shape, diffusion.num_timesteps)
        lr_f = set_lr(opt, cfg, step)
        with fast_math(device, bf16):
            losses = compute_losses(net, diffusion, batch, t, noise, cfg, device)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        check_finite(losses["loss"], gnorm, step, save, world)
        opt.step()
        update_ema(ema, model, tc.ema_decay)
        step += 1
        meter.add(losses, gnorm)
        if step % tc.log_every == 0 or step == tc.max_steps:
            last = meter.report(step, all_reduce_sum, lr=tc.lr * lr_f, lr_mapping=tc.lr_mapping * lr_f)
            if is_main:
                log_line(last, run_dir, writer)
        if is_main and tc.sample_every and step % tc.sample_every == 0:
            grids(step, ema, batch)
        if tc.ckpt_every and (step % tc.ckpt_every == 0 or step == tc.max_steps):
            save()
    stats = dict(run=str(run_dir), world_size=world, device=device.type, start_step=first_step, steps=step,
                 checkpoint=str(ckpt.latest(ckpt_dir)), config=cfg.to_dict(), last=last, heldout=split_note)
    if is_main:
        writer.close()
        atomic_write_text(run_dir / "stats.json", json.dumps(stats, indent=1))
        if root.remote:
            root.put_tree(run_dir, run_key)
        print(f"trained {cfg.model.size} F={cfg.model.frames} steps {first_step}->{step} on {world} x {device.type}; "
              f"loss {last.get('loss', float('nan')):.4f}; checkpoint {stats['checkpoint']}")
    if world > 1:
        dist.destroy_process_group()
    return stats


def check_finite(loss, gnorm, step: int, save, world: int) -> None:
    """Stop every rank at the same step when the loss or the gradient norm is not finite, saving the
    state before this step (the optimizer has not stepped). One host sync per step."""
    import torch
    import torch.distributed as dist

    bad = (~torch.isfinite(torch.stack([loss.detach().float(), gnorm.detach().float()]))).float()
    if world > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    bad_loss, bad_norm = bad.tolist()
    if bad_loss or bad_norm:
        path = save("nonfinite")
        what = f"loss is {loss.item()}" if bad_loss else f"gradient norm is {gnorm.item()}"
        raise NonFiniteLoss(f"{what} at step {step}; state before this step saved to {path}")


def log_line(last: dict, run_dir: Path, writer) -> None:
    """One line of log.jsonl, the same figures in TensorBoard, and a human line."""
    with open(run_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(last) + "\n")
    for k, v in last.items():
        if k not in ("step", "time") and v is not None:
            writer.add_scalar(f"train/{k}", v, last["step"])
    log.info("step %d loss %.4f (mse %.4f vb %.4f) lr %.2e %.2f it/s data-wait %.0f%% %.2f TFLOP/s%s", last["step"],
             last["loss"], last["mse"], last["vb"], last["lr"], last["steps_per_s"], 100 * last["data_wait"],
             last["tflops_per_s"], f" MFU {100 * last['mfu']:.1f}%" if last["mfu"] is not None else "")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except Exception as e:
        from model.checkpoint import CheckpointMismatch  # imported here: torch stays out of --help
        from model.config import ConfigError
        from model.data import SchemaError

        if not isinstance(e, (ConfigError, SchemaError, CheckpointMismatch)):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
