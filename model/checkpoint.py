"""Checkpoints: the whole training state in a file that `torch.load(weights_only=True)` accepts.

Contents: model and EMA weights, optimizer state, schedule position, step, RNG states (as tensors),
the config (a plain dict), the held-out videos of the run. Written to a temporary sibling, fsynced,
then renamed, so a crash never leaves a half-written checkpoint under the real name (on an object store:
one upload, atomic by itself; every location here may be a path or a URL). Weights are whole (DDP
replicates them), so a checkpoint resumes on any world size.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch

from model.config import Config, from_dict
from pipeline.paths import DataRoot
from pipeline.storage import is_remote, open_url

# keys that change the network or the diffusion chain: a checkpoint that differs on them cannot be resumed
_ARCH_IGNORE = {"grad_checkpoint", "max_offset_s"}   # model.* keys that do not change the weights (the offset
# range is a training/sampling rule; a checkpoint from before it was recorded samples with the default)
_DIFFUSION_ARCH = {"steps", "schedule"}      # diffusion.* keys the model was trained for


class CheckpointMismatch(ValueError):
    pass


def rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor(np_state[4], dtype=torch.float64),
        "python": torch.tensor(py_state[1], dtype=torch.int64),
        "python_gauss": torch.tensor(float("nan") if py_state[2] is None else py_state[2], dtype=torch.float64),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return out


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    pos, has_gauss = (int(v) for v in s["numpy_pos"])
    np.random.set_state(("MT19937", s["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss,
                         float(s["numpy_gauss"])))
    g = float(s["python_gauss"])
    random.setstate((3, tuple(int(v) for v in s["python"]), None if g != g else g))
    if "cuda" in s and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(list(s["cuda"]))


def save(path: Path, *, model, ema, opt, step: int, cfg: Config, schedule: dict, heldout: dict | None = None,
         encoders: dict | None = None) -> Path:
    """`heldout`: the videos this run never trained on (model.split.HeldOut.record), read by `make eval`.
    `encoders`: the encoder identity of the training latents (pipeline.shards.encode.encoder_identity),
    checked by `make reenact` / `make eval` against the encoders they load."""
    folder, name = _split(path)
    state = {
        "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
        "schedule": schedule, "step": int(step), "rng": rng_state(), "config": cfg.to_dict(),
    }
    if heldout is not None:
        state["heldout"] = heldout
    if encoders is not None:
        state["encoders"] = encoders
    with folder.open_atomic(name) as f:
        torch.save(state, f)
    return path


def join(folder, name: str):
    """`folder / name` for a Path, a local path string or a URL."""
    return DataRoot.of(folder).join(name) if is_remote(folder) else Path(folder) / name


def _split(path) -> tuple[DataRoot, str]:
    parent, _, name = str(path).rstrip("/").rpartition("/")
    return DataRoot.of(parent or "."), name


def load(path, map_location="cpu") -> dict:
    if is_remote(path):
        import io

        with open_url(path) as f:
            return torch.load(io.BytesIO(f.read()), map_location=map_location, weights_only=True)
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def mismatched_keys(saved: dict, cfg: Config) -> list[str]:
    """'section.key: checkpoint X != config Y' for every architecture/diffusion key that differs."""
    now, out = cfg.to_dict(), []
    for sec in ("model", "diffusion"):
        for k, v in now[sec].items():
            if k in _ARCH_IGNORE or (sec == "diffusion" and k not in _DIFFUSION_ARCH):
                continue
            if sec == "model" and k in ("latent_size", "clip_dim") and v == 0:
                continue  # 0 = "from the shards": any trained value is compatible
            old = saved.get(sec, {}).get(k, "<absent>")
            if old != v:
                out.append(f"{sec}.{k}: checkpoint {old!r} != config {v!r}")
    return out


def check_compatible(state: dict, cfg: Config, path: Path | str = "checkpoint") -> None:
    bad = mismatched_keys(state["config"], cfg)
    if bad:
        raise CheckpointMismatch(f"{path} was trained with an incompatible config: " + "; ".join(bad))


_STEP = re.compile(r"^step_(\d+)\.pt$")


def list_checkpoints(ckpt_dir) -> list[tuple[int, Path]]:
    """(step, location) of the step checkpoints, oldest first: Paths for a local folder, URLs otherwise."""
    d = DataRoot.of(ckpt_dir)
    found = [(int(m.group(1)), join(ckpt_dir, n)) for n in d.ls("", "step_*.pt") if (m := _STEP.match(n))]
    return sorted(found)


def latest(ckpt_dir) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def prune(ckpt_dir, keep_last: int) -> None:
    for _, p in list_checkpoints(ckpt_dir)[:-keep_last] if keep_last > 0 else []:
        _split(p)[0].rm(_split(p)[1])


def resolve(path) -> Path:
    """A checkpoint file, or the newest one of a run directory / checkpoints directory."""
    if is_remote(path):     # a .pt object, or a run / checkpoints folder
        if str(path).endswith(".pt"):
            return path
        found = latest(join(path, "checkpoints")) or latest(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint at {path}")
        return found
    p = Path(path)
    if p.is_dir():
        p = latest(p / "checkpoints" if (p / "checkpoints").is_dir() else p) or p
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return p


def model_from_state(state: dict, ema: bool = True, device="cpu"):
    """-> (SDiT in eval mode with the EMA (or raw) weights, Config)."""
    from model.sdit import SDiT

    cfg = from_dict(state["config"])
    model = SDiT(cfg.model)
    model.load_state_dict(state["ema" if ema else "model"])
    return model.to(device).eval(), cfg


def load_for_inference(path, ema: bool = True, device="cpu"):
    """-> (SDiT in eval mode with the EMA (or raw) weights, Config). `path` may be a run's checkpoint dir."""
    return model_from_state(load(resolve(path)), ema, device)
