"""`make estimate N=1000000`: what N clips cost in cores, GPUs, hours and bytes, from `make bench`'s figures.

    python -m benchmarks.estimate --clips 1000000 --data data [--cores 512 --gpus 16] [--gpu A100 ...]

Every number is printed with its basis: measured here (<data>/bench/bench.json, written by `make bench`),
counted on the real architectures (the FLOPs of the SD VAE encoder and CLIP ViT-B/32, built with random
weights: the same operations as the real weights), read off the shard contract (pipeline/schema.py), a
figure of the paper, or an assumption you can change on the command line. Nothing is fitted.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.schema import SHARD_MEMBERS

IDENTITY_BYTES = 128 * 4     # identity.npy: one dlib 128-D float32 embedding per sample
# the shard encoders measured by `make gpu-check` (benchmarks/gpu_check.py) on a real GPU, committed beside
# the figures: {gpu name: that run's JSON}; the estimate uses its VAE+CLIP images/s instead of a FLOP model
MEASURED_GPU = {"H200": Path(__file__).resolve().parent / "figures" / "gpu_check_h200.json"}
PAPER = {"clips": 1_000_000, "hours": 920.0, "clip_s_mean": 3.29, "crop_px_mean": 745}   # ReenactFaces-1M
# dense bf16 tensor peak, FLOP/s (NVIDIA datasheets; the same table as model/train.py's MFU)
GPU_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "T4": 65e12}


def shard_bytes_per_frame(size: int = 256, clip_dim: int = 512) -> tuple[float, str]:
    """Bytes one stored frame adds to a shard sample, from the contract (pipeline.schema.SHARD_MEMBERS)."""
    lat = 4 * (size // 8) ** 2 * 2 * 2          # latent mean + std, float16, 4 x S/8 x S/8
    emb, lm, rest = clip_dim * 2, 478 * 3 * 4, 1 + 8 + 4   # clip_emb f16, landmarks f32, ok/index/time
    return float(lat + emb + lm + rest), (f"contract at {size}px: latents 2x4x{size // 8}^2 f16 = {lat} B, CLIP {emb} B, "
                                          f"landmarks 478x3 f32 = {lm} B, index/time/ok {rest} B")


def encoder_flops(size: int = 256) -> dict[str, float]:
    """FLOPs of one frame through the SD VAE encoder at size^2 and CLIP ViT-B/32 at 224^2, counted by
    torch's FlopCounterMode on the real architectures with random weights (no download)."""
    import torch
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=size,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(128, 256, 512, 512), layers_per_block=2).eval()   # SD's VAE config
    out = {}
    with torch.no_grad():
        fc = FlopCounterMode(display=False)
        with fc:
            vae.encode(torch.zeros(1, 3, size, size))
        out["vae"] = float(fc.get_total_flops())
        import open_clip

        clip = open_clip.create_model("ViT-B-32", pretrained=None).eval()
        fc = FlopCounterMode(display=False)
        with fc:
            clip.encode_image(torch.zeros(1, 3, 224, 224))
        out["clip"] = float(fc.get_total_flops())
    return out


def estimate(bench: dict, n: int, cores: int, gpus: int, gpu: str, gpu_util: float, clip_s: float,
             accepted_fraction: float | None, fps: float, max_frames: int, size: int, flops: dict,
             media_bps: float = 0.0, measured: dict | None = None) -> list:
    """[(name, value, unit, basis)] for N clips. `measured`: a gpu-check run's JSON for this GPU (its
    encoder throughput replaces the FLOP model)."""
    cur = bench["areas"]["curate"]
    rows = []

    def add(name, value, unit, basis):
        rows.append((name, value, unit, basis))
        return value

    acc_s = add("accepted clip time", n * clip_s / 3600, "h", f"N x {clip_s} s mean clip (paper: 3.29 s; 1M clips = 920 h)")
    frac = accepted_fraction if accepted_fraction else cur["accepted_fraction_of_video_s"]
    src_h = add("source video to curate", acc_s / frac, "h",
                f"accepted time / accepted fraction {frac:.3f} ("
                + ("--accepted-fraction" if accepted_fraction else "measured on the generated corpus: it is made of faces, "
                   "real footage accepts far less; pass --accepted-fraction") + ")")
    cpu_per = cur["curate_cpu_s_per_video_s"]
    cur_core_h = add("curate CPU", src_h * cpu_per, "core-h",
                     f"source h x {cpu_per} CPU s per video s (bench curate: every analysis stage, TransNetV2 and identity included, "
                     f"{cur['ratio_to_plain_decode']}x a plain decode; download excluded, network-bound)")
    frames = n * min(clip_s * fps, max_frames or 1e9)
    add("frames encoded", frames / 1e6, "M frames", f"N x min({clip_s} s x {fps} fps, max_frames {max_frames or 'all'})")
    peak = GPU_PEAK[gpu]
    per_frame = flops["vae"] + flops["clip"]
    run = next((e for e in (measured or {}).get("encode", []) if e["precision"] == "fp16" and e["size"] == size), None)
    if run:
        ips = run["vae+clip_images_per_s"]
        gpu_h = add("shard encoders (VAE+CLIP) GPU", frames / ips / 3600, f"{gpu}-h",
                    f"{ips:.0f} frames/s: VAE + CLIP ViT-B/32 at {size}px, fp16, batch {run['batch']}, MEASURED on one "
                    f"{measured['device']} by make gpu-check ({measured['started'][:10]}; "
                    f"benchmarks/figures/); decoding on CPU workers not included")
    else:
        gpu_h = add("shard encoders (VAE+CLIP) GPU", frames * per_frame / (peak * gpu_util) / 3600, f"{gpu}-h",
                    f"{flops['vae'] / 1e9:.0f} GFLOP VAE encoder at {size}px + {flops['clip'] / 1e9:.1f} GFLOP CLIP "
                    f"ViT-B/32 per frame (counted here, FlopCounterMode) / ({peak / 1e12:.0f} TFLOP/s {gpu} bf16 peak, "
                    f"NVIDIA datasheet, x {gpu_util:.0%} utilisation: ASSUMED for this GPU; measured only on "
                    f"{', '.join(MEASURED_GPU)} (--gpu)")
    mesh_s = 0.014
    mesh_core_h = add("landmarks (face mesh) CPU", frames * mesh_s / 3600, "core-h",
                      f"{mesh_s * 1000:.0f} ms per {size}px crop, MediaPipe 478-point mesh on CPU (measured here, DESIGN.md)")
    rate = media_bps or cur["media_bytes_per_video_s"]
    media_tb = add("source media (media.keep: all)", src_h * 3600 * rate / 1e12, "TB",
                   f"source s x {rate / 1e3:.0f} kB/s (" + ("--media-kBps" if media_bps else
                   "mean of the generated corpus, flat synthetic scenes: real footage is larger; pass --media-kBps") + ")")
    kept = cur["kept_clip_bytes_per_accepted_s"]
    kept_tb = add("kept clip crops (media.keep: accepted_clips)", n * clip_s * kept / 1e12, "TB",
                  f"accepted s x {kept / 1e3:.0f} kB/s (corpus, crops <= 512 px, CRF 18; paper crops average 745 px)")
    bpf, basis = shard_bytes_per_frame(size)
    # per sample, not per frame: one tar header per member and the identity embedding (128 x f32)
    per_sample = len(SHARD_MEMBERS) * 512 + IDENTITY_BYTES
    shards_tb = add("shards", frames * (bpf + per_sample / max(clip_s * fps, 1)) / 1e12, "TB",
                    f"frames x {bpf / 1e3:.1f} kB ({basis}) + per sample {len(SHARD_MEMBERS)} tar headers x 512 B "
                    f"and identity {IDENTITY_BYTES} B")
    add("storage with media.keep: all", media_tb + shards_tb, "TB", "source media + shards")
    add("storage with media.keep: accepted_clips", kept_tb + shards_tb, "TB", "kept crops + shards")
    add("storage with media.keep: none", shards_tb, "TB", "shards only (a rebuild re-downloads)")
    cpu_total = cur_core_h + mesh_core_h
    wall = max(cpu_total / cores, gpu_h / gpus)
    add(f"wall time on {cores} cores + {gpus} GPUs", wall, "h",
        f"max(CPU {cpu_total:.0f} core-h / {cores}, GPU {gpu_h:.0f} h / {gpus}): the stages stream (Ray Data), so the "
        f"slower pool sets the pace; download bandwidth not included")
    add("  of which, stages one after another", cpu_total / cores + gpu_h / gpus, "h", "no overlap (upper bound)")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.estimate", description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=1_000_000)
    ap.add_argument("--data", default="data", help="data root whose bench/bench.json `make bench` wrote")
    ap.add_argument("--cores", type=int, default=512, help="CPU cores of the cluster")
    ap.add_argument("--gpus", type=int, default=16, help="GPUs of the cluster")
    ap.add_argument("--gpu", choices=sorted(GPU_PEAK), default="H200",
                    help=f"GPU kind; measured encoder throughput for {', '.join(MEASURED_GPU)}, a FLOP model otherwise")
    ap.add_argument("--gpu-util", type=float, default=0.3, help="assumed fraction of bf16 peak the encoders reach "
                    "(GPUs without a measured run)")
    ap.add_argument("--clip-s", type=float, default=PAPER["clip_s_mean"], help="mean accepted clip length, s")
    ap.add_argument("--accepted-fraction", type=float, default=None, help="accepted / source video time "
                    "(default: measured on the corpus)")
    ap.add_argument("--media-kBps", type=float, default=0.0, help="source video bytes per second / 1000 "
                    "(default: measured on the corpus)")
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--max-frames", type=int, default=0, help="frames kept per clip by the shards (0 = all)")
    ap.add_argument("--size", type=int, default=256, help="shard crop side (paper 256)")
    a = ap.parse_args(argv)
    path = Path(a.data) / "bench" / "bench.json"
    try:
        bench = json.loads(path.read_text())
        bench["areas"]["curate"]["accepted_fraction_of_video_s"]   # noqa: B018 - fail here if bench is old
    except (OSError, ValueError, KeyError) as e:
        print(f"estimate: no usable {path} ({type(e).__name__}: {e}); run `make bench` first", file=sys.stderr)
        return 2
    rows = estimate(bench, a.clips, a.cores, a.gpus, a.gpu, a.gpu_util, a.clip_s, a.accepted_fraction, a.fps,
                    a.max_frames, a.size, encoder_flops(a.size), a.media_kBps * 1e3, _measured(a.gpu))
    print(f"estimate for {a.clips:,} clips (bench of {bench.get('started', '?')} on {bench['machine']}):")
    for name, value, unit, basis in rows:
        print(f"  {name:46s} {value:12,.1f} {unit:9s} {basis}")
    print(f"paper (ReenactFaces-1M): {PAPER['clips']:,} clips, {PAPER['hours']:.0f} h of clips, mean "
          f"{PAPER['clip_s_mean']} s, crops average {PAPER['crop_px_mean']} px; no compute or storage figures given")
    out = Path(a.data) / "bench" / "estimate.json"
    out.write_text(json.dumps({"clips": a.clips, "args": vars(a), "rows": [dict(zip(("name", "value", "unit", "basis"), r))
                                                                            for r in rows]}, indent=1))
    return 0


def _measured(gpu: str) -> dict | None:
    p = MEASURED_GPU.get(gpu)
    return json.loads(p.read_text()) if p is not None and p.is_file() else None


if __name__ == "__main__":
    sys.exit(main())
