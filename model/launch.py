"""Start the trainer under real torchrun: one process per GPU, or one on CPU (or --nproc N, gloo).

    python -m model.launch --data DATA --config dags/train.yaml [--nproc N] [--run NAME] [section.key=value ...]
"""
from __future__ import annotations

import argparse
import subprocess
import sys


def torchrun_cmd(nproc: int, train_args: list[str]) -> list[str]:
    # --standalone: a local rendezvous on a free port; -m: run model.train as a module in every worker
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "model.train", *train_args]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Train the sDiT on the shards with torchrun (DDP).")
    ap.add_argument("--data", required=True, help="data root")
    ap.add_argument("--config", default="dags/train.yaml")
    ap.add_argument("--nproc", type=int, default=0, help="processes (default: #GPUs, or 1 without a GPU)")
    ap.add_argument("--run", default=None, help="run name under <data>/train (default: train.run)")
    ap.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=100")
    args = ap.parse_args(argv)
    nproc = args.nproc
    if nproc <= 0:
        import torch
        nproc = torch.cuda.device_count() or 1
    # the run name travels as an override: torchrun's own parser would take "--run" for "--run-path"
    train_args = ["--data", args.data, "--config", args.config, *args.overrides,
                  *([f"train.run={args.run}"] if args.run else [])]
    cmd = torchrun_cmd(nproc, train_args)
    print("launch:", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
