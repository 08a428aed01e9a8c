"""What the trainer measures between two log lines: losses, gradient norm, the share of time spent
waiting for data, the loader's bad shards/samples, throughput, and MFU.

MFU (model FLOPs utilisation) = model FLOPs per second / the devices' peak. Model FLOPs per step are
counted, not estimated: 3 x `model.sdit.forward_flops` of the global batch (forward + a backward of
twice the forward). Activation checkpointing's recomputed forward is not counted (that would be HFU,
hardware FLOPs utilisation). The peak comes from `train.peak_flops` or the table below.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from model.data import WorkerCounters

# Dense bf16 tensor-core peak per GPU (FLOP/s, no sparsity), from NVIDIA's data sheets. The first entry
# whose key is in torch.cuda.get_device_name() wins: specific names before the names they contain.
PEAK_FLOPS: list[tuple[str, float]] = [
    ("H200", 989e12),          # H200 SXM: the H100 SXM's tensor cores with more memory
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),          # H100 SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),      # bf16 with fp32 accumulation
]


def device_peak(device: torch.device, override: float = 0.0) -> tuple[float | None, str]:
    """(peak FLOP/s of one device, where it came from); (None, why) when unknown (CPU, unlisted GPU)."""
    if override > 0:
        return override, "train.peak_flops"
    if device.type != "cuda":
        return None, "no peak for a CPU; set train.peak_flops for an MFU"
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_FLOPS:
        if key in name:
            return peak, f"table: {key} ({name})"
    return None, f"{name} is not in model.meter.PEAK_FLOPS; set train.peak_flops for an MFU"


@dataclass
class Meter:
    """The loop's bookkeeping. Losses are summed on the device (no host sync per step); `report`
    reduces everything across ranks once per log line and starts a new interval."""
    flops_per_step: float               # model FLOPs of one global step
    samples_per_step: int               # the global batch
    peak_flops: float | None = None     # one device's peak FLOP/s (None: no MFU)
    world: int = 1
    sums: torch.Tensor | None = None    # (4,) loss, mse, vb, grad_norm summed over the interval's steps
    steps: int = 0
    wait_s: float = 0.0                 # time spent waiting for batches in this interval
    since: float = field(default_factory=time.perf_counter)
    workers: dict[int, WorkerCounters] = field(default_factory=dict)   # latest totals per loader worker

    @contextlib.contextmanager
    def waiting(self):
        """Time the block as data wait (fetching the next batch)."""
        t0 = time.perf_counter()
        yield
        self.wait_s += time.perf_counter() - t0

    def saw(self, counters: WorkerCounters) -> None:
        self.workers[counters.worker] = counters   # running totals: the latest of each worker is the total

    def add(self, losses: dict, grad_norm: torch.Tensor) -> None:
        vals = torch.stack([losses["loss"], losses["mse"], losses["vb"], grad_norm]).detach().float()
        self.sums = vals if self.sums is None else self.sums + vals
        self.steps += 1

    def report(self, step: int, all_reduce_sum=None, **extra) -> dict:
        """The interval's figures as a dict (rank means for losses and wait, rank sums for bad data), and
        a fresh interval. `all_reduce_sum(tensor)` sums a tensor over ranks in place (None: one process)."""
        elapsed = max(time.perf_counter() - self.since, 1e-9)
        bad = [sum(c.bad_shards for c in self.workers.values()), sum(c.bad_samples for c in self.workers.values())]
        vals = torch.cat([self.sums / self.steps, self.sums.new_tensor([self.wait_s / elapsed, *bad])])
        if all_reduce_sum is not None and self.world > 1:
            all_reduce_sum(vals)
            vals[:5] /= self.world                                   # losses, grad norm, wait share: means
        loss, mse, vb, gnorm, wait, bad_shards, bad_samples = vals.tolist()
        sps = self.steps / elapsed
        achieved = self.flops_per_step * sps
        out = dict(step=step, loss=loss, mse=mse, vb=vb, grad_norm=gnorm, **extra, steps_per_s=sps,
                   samples_per_s=sps * self.samples_per_step, data_wait=wait, flops_per_step=self.flops_per_step,
                   tflops_per_s=achieved / 1e12,
                   mfu=achieved / (self.peak_flops * self.world) if self.peak_flops else None,
                   bad_shards=int(round(bad_shards)), bad_samples=int(round(bad_samples)), time=time.time())
        self.sums, self.steps, self.wait_s, self.since = None, 0, 0.0, time.perf_counter()
        return out
