"""sDiT trainer: one flat loop, DDP under torchrun (gloo on CPU, NCCL on GPU), or a plain process.

Run through `python -m model.launch` (which starts torchrun); `python -m model.train` alone trains in
one process. Per-step randomness (timesteps, noise) is drawn for the GLOBAL batch from a generator
seeded by (seed, step), and each rank takes its slice: the run does not depend on the world size, and
a resume continues exactly (the data stream itself is re-seeded by step so a resume never replays it).
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
import time
from pathlib import Path

log = logging.getLogger("reenactfaces.train")

# dense bf16 peak per device (FLOP/s) for MFU; substring of torch.cuda.get_device_name()
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "A10": 125e12,
              "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine down to min_ratio at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    prog = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * prog))


def device_peak(device, override: float) -> float | None:
    import torch

    if override > 0:
        return override
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    return None  # CPU: no meaningful table entry; set train.peak_flops to get an MFU


def step_noise(cfg, step: int, rank: int, local: int, shape, T: int):
    """(t, noise) for this rank's slice of the global batch, a pure function of (seed, step)."""
    import torch

    g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
    t = torch.randint(0, T, (cfg.train.global_batch,), generator=g)
    noise = torch.randn((cfg.train.global_batch, *shape), generator=g)
    sl = slice(rank * local, (rank + 1) * local)
    return t[sl], noise[sl]


def compute_losses(net, diffusion, batch, t, noise, cfg, device, amp):
    """Local-batch mean of loss terms (the expressive-region weight built from the landmarks)."""
    from model.diffusion import expressive_mask

    x0 = batch["latents"].to(device, non_blocking=True)
    B, Fr, C, H, W = x0.shape
    lm, ok = batch["landmarks"].to(device), batch["landmarks_ok"].to(device)
    weight = 1.0 + cfg.diffusion.lambda_ex * expressive_mask(lm, ok, H, W)[:, :, None]  # (B, F, 1, H, W)
    kw = dict(landmarks=lm, offsets=batch["offsets"].to(device), clip_emb=batch["clip_emb"].to(device),
              drop_landmarks=batch["drop_landmarks"].to(device), drop_clip=batch["drop_clip"].to(device))
    with amp:
        terms = diffusion.training_losses(net, x0, t.to(device), kw, noise=noise.to(device), weight=weight)
    return {k: v.float().mean() for k, v in terms.items()}


def update_ema(ema, model, decay: float) -> None:
    import torch

    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)


def build_optimizer(model, cfg):
    import torch

    mapping = {id(p) for p in model.mapping_parameters()}
    rest = [p for p in model.parameters() if id(p) not in mapping]
    tc = cfg.train
    return torch.optim.AdamW([{"params": rest, "lr": tc.lr}, {"params": model.mapping_parameters(), "lr": tc.lr_mapping}],
                             betas=tuple(tc.betas), eps=tc.eps, weight_decay=tc.weight_decay)


def set_lr(opt, cfg, step: int) -> float:
    f = lr_factor(step, cfg.train.warmup_steps, cfg.train.max_steps, cfg.train.min_lr_ratio)
    for g, base in zip(opt.param_groups, (cfg.train.lr, cfg.train.lr_mapping)):
        g["lr"] = base * f
    return f


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
    from model.config import load_config
    from model.data import check_schema, make_batches, resolve_shards
    from model.diffusion import GaussianDiffusion, linear_betas
    from model.sdit import SDiT, forward_flops
    from model.split import training_split
    from pipeline.paths import DataRoot, atomic_write_text, safe_name
    from pipeline.shards.encoders import encoder_identity

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # ---- distributed setup: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; absent = one plain process ----
    world, rank, local_rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    overrides = args.overrides + ([f"train.run={args.run}"] if args.run else [])
    cfg = load_config(args.config, overrides)
    explicit_preset = any(o.startswith("preset=") for o in overrides)   # a preset asked for by name wins
    if not cuda and cfg.train.cpu_preset and cfg.preset != cfg.train.cpu_preset and not explicit_preset:
        wanted = cfg.model.size
        cfg = load_config(args.config, overrides, preset=cfg.train.cpu_preset)
        if rank == 0:
            log.warning("no GPU: training the %r preset (model %s) instead of %s; set train.cpu_preset='' to override",
                        cfg.preset, cfg.model.size, wanted)
    tc, is_main = cfg.train, rank == 0
    root = DataRoot.of(args.data)
    # an object-store root: checkpoints go straight there; logs, samples, TensorBoard are written to a local
    # copy of the run folder (pulled first, so a resumed run appends) and pushed at every checkpoint
    run_key = root.key("train", safe_name(tc.run))
    run_dir = root.dir(run_key) if not root.remote else root.pull_tree(run_key, skip="checkpoints/")
    ckpt_dir = run_dir / "checkpoints" if not root.remote else root.join(run_key, "checkpoints")
    urls = resolve_shards(cfg.data.shards, root.url)
    meta = check_schema(urls, cfg)  # fails fast, on every rank, with the mismatch named
    encoders = encoder_identity(meta)   # which VAE/CLIP made these latents: reenact/eval refuse others
    # ---- model, EMA, optimizer, diffusion ----
    torch.manual_seed(tc.seed)
    model = SDiT(cfg.model).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = build_optimizer(model, cfg)
    diffusion = GaussianDiffusion(linear_betas(cfg.diffusion.steps))
    step, recorded = 0, None
    resume = ckpt.latest(ckpt_dir)
    if resume is not None:
        state = ckpt.load(resume, map_location=device)
        recorded = (state.get("heldout") or {}).get("videos")
        ckpt.check_compatible(state, cfg, resume)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        for g in opt.param_groups:   # the checkpoint's groups carry its hyper-parameters: this config's win
            g["betas"], g["eps"], g["weight_decay"] = tuple(tc.betas), tc.eps, tc.weight_decay
        ckpt.set_rng_state(state["rng"])
        step = int(state["step"])
        if is_main:
            log.info("resumed %s at step %d (world size now %d)", resume, step, world)
    # held-out videos (make eval's split) never reach the model; a resumed run keeps its recorded set
    heldout, urls, split_note = training_split(urls, cfg.data.heldout_fraction, cfg.data.heldout_min_clips, recorded)
    if is_main:
        log.info("%s", split_note)
        atomic_write_text(run_dir / "heldout.json", json.dumps(heldout.record(), indent=1))
    net = DDP(model, device_ids=[local_rank] if cuda else None) if world > 1 else model
    local = tc.global_batch // world
    batches = make_batches(urls, cfg, rank, world, start_step=step, exclude=heldout)
    use_bf16 = tc.precision == "bf16" or (tc.precision == "auto" and cuda)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    mult = 4 if cfg.model.grad_checkpoint else 3  # forward + backward (2x) (+ recomputed forward)
    flops_step = mult * forward_flops(cfg.model, batch=tc.global_batch)
    peak = device_peak(device, tc.peak_flops)
    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / "tensorboard"))
        n_params = sum(p.numel() for p in model.parameters())
        log.info("run %s: model %s (%.2fM params), F=%d, world %d, global batch %d, %d shards, %.1f GFLOP/step",
                 run_dir, cfg.model.size, n_params / 1e6, cfg.model.frames, world, tc.global_batch, len(urls), flops_step / 1e9)

    def save(kind: str = "step") -> Path | None:
        path = None
        if is_main:
            path = ckpt.save(ckpt.join(ckpt_dir, f"{kind}_{step:07d}.pt"), model=model, ema=ema, opt=opt, step=step, cfg=cfg,
                             schedule={"name": "warmup_cosine", "step": step},
                             heldout=heldout.record(), encoders=encoders)
            if kind == "step":
                ckpt.prune(ckpt_dir, tc.keep_last)
            if root.remote:
                root.put_tree(run_dir, run_key)
        if world > 1:
            dist.barrier()
        return path

    def all_mean(x: torch.Tensor) -> torch.Tensor:
        if world > 1:
            dist.all_reduce(x)
            x = x / world
        return x

    # ---- the loop ----
    acc, n_acc, wait, t_last, bad = None, 0, 0.0, time.perf_counter(), {}
    shape = (cfg.model.frames, cfg.model.latent_channels, cfg.model.latent_size, cfg.model.latent_size)
    first_step, last = step, {}
    grid_vae = None   # the VAE decoding sample grids: None = not looked for yet, False = none found
    while step < tc.max_steps:
        t0 = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t0
        for w, s1, s2 in zip(batch["worker"].tolist(), batch["bad_shards"].tolist(), batch["bad_samples"].tolist()):
            bad[w] = (max(bad.get(w, (0, 0))[0], s1), max(bad.get(w, (0, 0))[1], s2))
        key = step % cfg.data.overfit_batches if cfg.data.overfit_batches else step
        t, noise = step_noise(cfg, key, rank, local, shape, diffusion.num_timesteps)
        lr_f = set_lr(opt, cfg, step)
        model.train()
        losses = compute_losses(net, diffusion, batch, t, noise, cfg, device, amp)
        finite = torch.isfinite(losses["loss"]).float()
        if world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:  # every rank stops at the same step; the last finite state is kept
            path = save("nonfinite")
            raise NonFiniteLoss(f"loss is {losses['loss'].item()} at step {step}; state before this step saved to {path}")
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        if not torch.isfinite(gnorm):
            path = save("nonfinite")
            raise NonFiniteLoss(f"gradient norm is {gnorm.item()} at step {step}; state before this step saved to {path}")
        opt.step()
        update_ema(ema, model, tc.ema_decay)
        step += 1
        vals = torch.stack([losses["loss"].detach(), losses["mse"].detach(), losses["vb"].detach(), gnorm.detach()])
        acc, n_acc = (vals if acc is None else acc + vals), n_acc + 1
        if step % tc.log_every == 0 or step == tc.max_steps:
            dt = time.perf_counter() - t_last
            bad_t = torch.tensor([float(sum(v[0] for v in bad.values())), float(sum(v[1] for v in bad.values())), wait / dt])
            acc, bad_t = all_mean(acc / n_acc), all_mean(bad_t.to(device))
            sps = n_acc / dt
            last = dict(step=step, loss=acc[0].item(), mse=acc[1].item(), vb=acc[2].item(), grad_norm=acc[3].item(),
                        lr=tc.lr * lr_f, lr_mapping=tc.lr_mapping * lr_f, steps_per_s=sps,
                        samples_per_s=sps * tc.global_batch, data_wait=bad_t[2].item(), flops_per_step=flops_step,
                        mfu=(flops_step * sps / (peak * world)) if peak else None,
                        bad_shards=int(round(bad_t[0].item() * world)), bad_samples=int(round(bad_t[1].item() * world)),
                        time=time.time())
            if is_main:
                with open(run_dir / "log.jsonl", "a") as f:
                    f.write(json.dumps(last) + "\n")
                for k, v in last.items():
                    if k not in ("step", "time") and v is not None:
                        writer.add_scalar(f"train/{k}", v, step)
                log.info("step %d loss %.4f (mse %.4f vb %.4f) lr %.2e %.2f it/s data-wait %.0f%%%s", step,
                         last["loss"], last["mse"], last["vb"], last["lr"], sps, 100 * last["data_wait"],
                         f" MFU {100 * last['mfu']:.1f}%" if last["mfu"] else "")
            acc, n_acc, wait, t_last = None, 0, 0.0, time.perf_counter()
        if tc.sample_every and step % tc.sample_every == 0 and is_main:
            if grid_vae is None:   # found and loaded once, at the first grid
                vae_dirs = [Path(tc.vae_path)] if tc.vae_path else [root.mirror("models/vae"),
                                                                    root.mirror("models/tiny") / "vae"]
                grid_vae = find_vae(vae_dirs, device) or False
            grid = sample_grid(ema, diffusion, batch, cfg, run_dir / "samples" / f"step_{step:07d}.png", device,
                               float(meta["vae_scaling_factor"]), grid_vae) if grid_vae else None
            if grid is not None:
                writer.add_image("samples/real_landmarks_generated", grid, step)
        if step % tc.ckpt_every == 0 or step == tc.max_steps:
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


def landmark_images(landmarks, size: int):
    """(F, 478, 3) landmarks, x,y in [0, 1] of the crop -> (F, 3, size, size) white dots on black."""
    import torch

    f = landmarks.shape[0]
    img = torch.zeros(f, 3, size, size)
    xy = (landmarks[..., :2].clamp(0, 1) * (size - 1)).round().long()         # (F, 478, 2)
    present = landmarks[..., :2].abs().sum(-1) > 0                              # all-zero = no face
    for i in range(f):
        pts = xy[i][present[i]]
        img[i, :, pts[:, 1], pts[:, 0]] = 1.0
    return img


def find_vae(vae_dirs: list[Path], device):
    """The first local diffusers VAE of `vae_dirs`, loaded; None (sample grids skipped) without one."""
    vae_dir = next((d for d in vae_dirs if (d / "config.json").is_file()), None)
    if vae_dir is None:
        log.info("sample grids skipped: no VAE in %s", ", ".join(map(str, vae_dirs)))
        return None
    from pipeline.shards.encoders import load_vae

    return load_vae(str(vae_dir), device)


def sample_grid(ema, diffusion, batch, cfg, out: Path, device, scaling: float, vae):
    """Sample the first sequence of `batch` with the EMA model (plain DDPM, respaced) and save a grid of
    rows [real frames | their driving landmarks | generated] as a PNG, decoded with `vae` (find_vae).
    Returns the grid (3, H, W) for TensorBoard."""
    import torch
    from torchvision.utils import make_grid, save_image

    from model.diffusion import respace

    sampler = respace(diffusion, cfg.diffusion.sample_steps)
    cond = {k: batch[k][:1].to(device) for k in ("landmarks", "offsets", "clip_emb")}
    x = sampler.p_sample_loop(lambda x, t: ema(x, t, **cond), batch["latents"][:1].shape, device=device,
                              generator=torch.Generator(device).manual_seed(0))
    with torch.no_grad():
        lat = torch.cat([batch["latents"][0].to(device), x[0]]) / scaling          # (2F, 4, h, w)
        img = vae.decode(lat).sample.clamp(-1, 1).cpu() * 0.5 + 0.5                   # (2F, 3, H, W)
    f = cfg.model.frames
    marks = landmark_images(batch["landmarks"][0].cpu(), img.shape[-1])                # (F, 3, H, W)
    rows = torch.cat([img[:f], marks, img[f:]])                                        # (3F, 3, H, W)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(rows, str(out), nrow=f)
    return make_grid(rows, nrow=f)


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
