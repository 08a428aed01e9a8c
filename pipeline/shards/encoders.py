"""Per-clip features for the shards: VAE posterior, CLIP image embedding, 478x3 landmarks.

A clip's crop is decoded once at `size` x `size`; the three models then see the same frames.
Real weights load by their usual names for users online (diffusers / open_clip hub ids) or from
local directories offline. On a GPU the VAE and CLIP run in half precision (autocast; a batch whose
output is not finite is redone in fp32) on batches of `gpu_batch_frames`, fed from pinned memory, while
decoding stays on CPU workers (pipeline/shards/writer.py); on a CPU they run in fp32 as before.
`build_tiny_models` makes small models of the same classes (used by tests and the offline demo);
vaefit.py teaches the tiny VAE just enough to reconstruct faces.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.video_io import VideoError, crop_square, iter_timed_frames

DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"   # paper: Stable Diffusion's VAE (8x down, 4 channels)
DEFAULT_CLIP = ("ViT-B-32", "laion2b_s34b_b79k")


@dataclass
class EncoderConfig:
    size: int = 256                 # crop side fed to every model (paper: 256)
    stride: int = 1                 # keep every stride-th frame of the clip
    max_frames: int = 0             # 0 = keep all; else evenly spaced subset of at most this many
    vae: str = DEFAULT_VAE          # hub id or local diffusers dir
    clip_model: str = DEFAULT_CLIP[0]      # open_clip name, or a local dir (open_clip_config.json)
    clip_pretrained: str = DEFAULT_CLIP[1]  # tag or checkpoint file; ignored for a local dir
    batch_frames: int = 16          # frames per model forward (CPU)
    gpu_batch_frames: int = 64      # frames per model forward on a GPU
    device: str = "auto"            # auto | cpu | cuda
    precision: str = "auto"         # auto = fp16 on a GPU, fp32 on a CPU; or fp32 | fp16 | bf16 (autocast)


# ---------------------------------------------------------------- frames

def pick_indices(start: int, end: int, stride: int, max_frames: int) -> np.ndarray:
    idx = np.arange(start, end, max(1, stride), dtype=np.int64)
    if max_frames and len(idx) > max_frames:
        # evenly spaced, always keeping the first and last kept frame
        idx = idx[np.unique(np.round(np.linspace(0, len(idx) - 1, max_frames)).astype(np.int64))]
    return idx


def decode_clip(row: dict, media: Path, cfg: EncoderConfig):
    """(frames uint8 (T,S,S,3), frame_index int64 (T,), time_s float32 (T,)) for one clips.parquet row."""
    for _, got in decode_clips([row], media, cfg):
        if isinstance(got, Exception):
            raise got
        return got
    raise VideoError("nothing decoded")


def decode_clips(rows: list[dict], media: Path, cfg: EncoderConfig):
    """One decoding pass over a video for several of its clips (the decoder cannot seek cheaply, so
    clip-by-clip decoding would re-read the video's start for every clip). Yields (row, (frames,
    frame_index, time_s)) as soon as a clip's last frame has passed, or (row, VideoError).

    Frames come in display geometry (video_io: rotation and sample aspect ratio applied), so the
    clip's crop box, stored in display pixels, is square on screen whatever the stored pixel shape.
    time_s comes from the frames' timestamps (video_io.FrameClock, as curation's clip times do):
    seconds from the clip's first frame, right for variable frame rate and lying headers."""
    todo = sorted(range(len(rows)), key=lambda k: (int(rows[k]["end_frame"]), k))   # positions, by end
    want = [set(pick_indices(int(r["start_frame"]), int(r["end_frame"]), cfg.stride, cfg.max_frames).tolist())
            for r in rows]
    acc: list[tuple[list, list, list]] = [([], [], []) for _ in rows]

    def finish(k):
        r, (frames, got, stamps) = rows[k], acc[k]
        acc[k] = ([], [], [])
        if not frames:
            return VideoError(f"no frames in span {r['start_frame']}:{r['end_frame']} of {media.name}")
        # pick_indices always keeps the clip's first frame: times count from it
        t = np.asarray(stamps, dtype=np.float64) - stamps[0]
        return np.stack(frames), np.asarray(got, dtype=np.int64), t.astype(np.float32)

    lo, hi = min(int(r["start_frame"]) for r in rows), max(int(r["end_frame"]) for r in rows)
    frames_iter = iter_timed_frames(media, lo, hi)
    while todo:
        try:
            i, img, stamp = next(frames_iter)
        except StopIteration:
            break
        except VideoError as e:   # unreadable from here on: every unfinished clip gets the reason
            for k in todo:
                yield rows[k], e
            return
        for k in todo:
            if i in want[k]:
                r = rows[k]
                acc[k][0].append(crop_square(img, int(r["crop_x0"]), int(r["crop_y0"]), int(r["crop_size"]), cfg.size))
                acc[k][1].append(i)
                acc[k][2].append(stamp)
        while todo and int(rows[todo[0]]["end_frame"]) <= i + 1:
            k = todo.pop(0)
            yield rows[k], finish(k)
    for k in todo:   # the video ended before these spans did
        yield rows[k], finish(k)


def work_units(items: list[dict]) -> list[list[dict]]:
    """Clips grouped by source video (decoded in one pass); each still on its own."""
    units: dict[tuple, list[dict]] = {}
    for it in items:
        # a clip kept as its own file (media.keep) is its own unit; else the clips of one download share one
        key = ((it["origin"], it.get("clip_path") or it["media_path"]) if it["origin"] == "video"
               else ("still", it["clip_id"]))
        units.setdefault(key, []).append(it)
    return list(units.values())


def decode_unit(unit: list[dict], root: str, cfg: EncoderConfig, stills_frames: int, stills_fps: float):
    """Yield (item, (frames, frame_index, time_s)) or (item, exception) for every item of a unit."""
    if unit[0]["origin"] == "still":
        from pipeline.shards.stills import pseudo_clip

        for it in unit:
            try:
                yield it, pseudo_clip(Path(it["media_path"]), stills_frames, cfg.size, stills_fps,
                                      seed=int(it["clip_id"][:8], 16))
            except Exception as e:
                yield it, e
        return
    from pipeline.paths import DataRoot

    dr = DataRoot.of(root)
    kept = unit[0].get("clip_path") or ""
    with contextlib.ExitStack() as stack:
        try:     # the file itself, or a scratch copy of an object while the unit decodes
            path = stack.enter_context(dr.local_file(dr.key(kept or unit[0]["media_path"])))
        except (ValueError, OSError) as e:   # a hostile path (never read outside the data root), or no file
            for it in unit:
                yield it, (VideoError(f"media not found: {e}") if isinstance(e, OSError) else e)
            return
        if not kept:
            yield from decode_clips(unit, path, cfg)
            return
        # the kept crop file: frame k is source frame start_frame + k, already cropped square
        from pipeline.video_io import probe

        it = unit[0]
        start, side = int(it["start_frame"]), probe(path).width
        local = {**it, "start_frame": 0, "end_frame": int(it["end_frame"]) - start, "crop_x0": 0, "crop_y0": 0,
                 "crop_size": side}
        for _, got in decode_clips([local], path, cfg):
            yield it, got if isinstance(got, Exception) else (got[0], got[1] + start, got[2])


# ---------------------------------------------------------------- models

@dataclass
class ModelSet:
    vae: str               # what to load (hub id or dir)
    clip_model: str
    clip_pretrained: str | None
    vae_label: str         # what meta.json records
    clip_label: str
    clip_trained: bool | None = None   # False: random weights (build_tiny_models); None: not known


def resolve_models(spec: str, cfg: EncoderConfig) -> ModelSet:
    """'default' -> the config's names; a directory -> <dir>/vae and <dir>/clip (build_tiny_models layout)."""
    if spec in ("", "default"):
        if Path(cfg.clip_model).is_dir():
            return ModelSet(cfg.vae, cfg.clip_model, cfg.clip_pretrained, cfg.vae, cfg.clip_model)
        # a hub name: open_clip loads the pretrained tag's weights, or initialises at random without one
        return ModelSet(cfg.vae, cfg.clip_model, cfg.clip_pretrained, cfg.vae,
                        f"{cfg.clip_model}/{cfg.clip_pretrained}", bool(cfg.clip_pretrained))
    d = Path(spec)
    if not (d / "vae").is_dir() or not (d / "clip").is_dir():
        raise FileNotFoundError(f"model dir {d} needs vae/ and clip/ subdirectories")
    info = json.loads((d / "models.json").read_text()) if (d / "models.json").exists() else {}
    clip_label = info.get("clip", f"local:{d.name}/clip")
    # build_tiny_models records clip_trained: false; dirs it made before that are known by their label
    trained = info.get("clip_trained", False if clip_label.startswith("tiny-") else None)
    return ModelSet(str(d / "vae"), str(d / "clip"), None, info.get("vae", f"local:{d.name}/vae"), clip_label,
                    trained)


def weights_digest(models: ModelSet) -> str:
    """sha256 (16 hex) over the weight and config files of local model dirs; "" for hub names, whose id
    pins the weights. Two tiny sets with the same label but fitted on different data differ here."""
    import hashlib

    h, seen = hashlib.sha256(), False
    for d in (models.vae, models.clip_model):
        if Path(d).is_dir():
            for f in sorted(Path(d).rglob("*")):
                if f.is_file() and f.suffix in (".safetensors", ".bin", ".pt", ".json"):
                    seen = True
                    h.update(f.relative_to(d).as_posix().encode())
                    with open(f, "rb") as fh:
                        for block in iter(lambda: fh.read(1 << 20), b""):
                            h.update(block)
    return h.hexdigest()[:16] if seen else ""


IDENTITY_KEYS = ("vae", "vae_scaling_factor", "clip_model", "size", "weights")


def encoder_identity(meta: dict) -> dict:
    """The encoder set that produced (or would produce) latents: labels, size, scaling factor, weights
    digest, and a 12-hex fingerprint of them (the scaling factor to 6 significant digits, so the same
    VAE read in two processes gives one fingerprint)."""
    import hashlib

    ident = {k: meta.get(k, "") for k in IDENTITY_KEYS}
    ident["vae_scaling_factor"] = float(f"{float(ident['vae_scaling_factor'] or 0):.6g}")
    ident["size"] = int(ident["size"] or 0)
    ident["fingerprint"] = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return ident


def load_vae(name_or_dir: str, device="cpu"):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(name_or_dir).to(device).eval()


def load_clip(name_or_dir: str, pretrained: str | None, device="cpu"):
    import open_clip

    if Path(name_or_dir).is_dir():
        model = open_clip.create_model("local-dir:" + str(Path(name_or_dir).resolve()))
    else:
        model = open_clip.create_model(name_or_dir, pretrained=pretrained)
    return model.to(device).eval()


def pick_device(want: str) -> str:
    import torch

    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return want


def pick_dtype(precision: str, device: str):
    """The autocast dtype for `precision` on `device` (float32 = no autocast)."""
    import torch

    if precision == "auto":
        precision = "fp16" if device.startswith("cuda") else "fp32"
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise ValueError(f"encoder precision must be auto|fp32|fp16|bf16, got {precision!r}")
    return dtypes[precision]


class Encoders:
    """The three models; `encode(frames)` returns the per-frame feature arrays of one clip."""

    def __init__(self, models: ModelSet, cfg: EncoderConfig, with_landmarks: bool = True):
        import torch

        from pipeline.curate.landmarks import FaceMesh478

        self.cfg, self.models = cfg, models
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.precision, self.device)
        self.batch_frames = cfg.gpu_batch_frames if self.device.startswith("cuda") else cfg.batch_frames
        self.fp32_redone = 0          # half-precision batches whose output was not finite, redone in fp32
        torch.manual_seed(0)
        self.vae = load_vae(models.vae, self.device)
        self.clip = load_clip(models.clip_model, models.clip_pretrained, self.device)
        pp = getattr(self.clip.visual, "preprocess_cfg", {}) or {}
        isz = getattr(self.clip.visual, "image_size", 224)
        self.clip_size = int(isz[0] if isinstance(isz, (tuple, list)) else isz)
        self.clip_mean = torch.tensor(pp.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(1, 3, 1, 1)
        self.clip_std = torch.tensor(pp.get("std", (0.26862954, 0.26130258, 0.27577711))).view(1, 3, 1, 1)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.weights = weights_digest(models)
        # static mode: every frame on its own, so a frame's landmarks never depend on its neighbours
        self.mesh = FaceMesh478(static=True) if with_landmarks else None

    def meta(self) -> dict:
        return {"vae": self.models.vae_label, "vae_scaling_factor": self.scaling_factor,
                "clip_model": self.models.clip_label, "size": self.cfg.size, "weights": self.weights}

    def identity(self) -> dict:
        """encoder_identity of this set (what a checkpoint trained on its latents records)."""
        return encoder_identity(self.meta())

    def _batches(self, frames: np.ndarray):
        """uint8 frames (T,S,S,3) -> float (B,3,S,S) in [0, 1] on the device, `batch_frames` at a time.
        To a GPU the uint8 frames go from pinned memory, asynchronously (4x fewer bytes than floats)."""
        import torch

        gpu = self.device.startswith("cuda")
        for s in range(0, len(frames), self.batch_frames):
            x = torch.from_numpy(np.ascontiguousarray(frames[s:s + self.batch_frames]))
            x = x.pin_memory().to(self.device, non_blocking=True) if gpu else x.to(self.device)
            yield x.permute(0, 3, 1, 2).float() / 255.0

    def _autocast(self, dtype):
        import torch

        return torch.autocast(self.device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)

    def _run(self, fn, x):
        """fn(x) -> tensors, under this set's precision; all redone in fp32 if any output is not finite
        (fp16 overflows in a VAE's activations show up as inf/NaN, never as slightly wrong numbers)."""
        import torch

        with self._autocast(self.dtype):
            out = fn(x)
        if self.dtype != torch.float32 and not all(bool(torch.isfinite(o).all()) for o in out):
            self.fp32_redone += 1
            out = fn(x)
        return out

    def _clip(self, x):
        """(B,3,S,S) in [0, 1] -> (B, D) float16 L2-normalised CLIP image embeddings (cpu)."""
        import torch.nn.functional as F

        def embed(x):
            c = F.interpolate(x, size=(self.clip_size, self.clip_size), mode="bicubic",
                              align_corners=False, antialias=True).clamp(0, 1)
            c = (c - self.clip_mean.to(c)) / self.clip_std.to(c)
            return (F.normalize(self.clip.encode_image(c).float(), dim=-1),)

        return self._run(embed, x)[0].half().cpu()

    def _vae(self, x):
        """(B,3,S,S) in [0, 1] -> posterior (mean, std), each (B, C, S/8, S/8) float32 on the device."""
        def encode(x):
            post = self.vae.encode(x * 2 - 1).latent_dist
            return post.mean.float(), post.std.float()

        return self._run(encode, x)

    def forward_models(self, frames: np.ndarray) -> dict:
        """VAE + CLIP on uint8 frames (T,S,S,3), in batches of `batch_frames`."""
        import torch

        means, stds, embs = [], [], []
        with torch.inference_mode():
            for x in self._batches(frames):
                mean, std = self._vae(x)
                means.append(mean.half().cpu())
                stds.append(std.half().cpu())
                embs.append(self._clip(x))
        return {"latent_mean": torch.cat(means).numpy(), "latent_std": torch.cat(stds).numpy(),
                "clip_emb": torch.cat(embs).numpy()}

    def clip_embed(self, frames: np.ndarray) -> np.ndarray:
        """CLIP alone (no VAE pass), exactly as forward_models computes it: (T, D) float16."""
        import torch

        with torch.inference_mode():
            return torch.cat([self._clip(x) for x in self._batches(frames)]).numpy()

    def encode(self, frames: np.ndarray) -> dict:
        import time

        t0 = time.perf_counter()
        out = self.forward_models(frames)
        self.last_vae_clip_s = time.perf_counter() - t0   # the GPU's part (the .cpu() copies synchronise)
        if self.mesh is not None:
            out["landmarks"], out["landmarks_ok"] = self.mesh.batch(frames)
        self.last_s = time.perf_counter() - t0   # pure model time: the stage's overhead is measured against it
        return out

    def close(self):
        if self.mesh is not None:
            self.mesh.close()


# ---------------------------------------------------------------- tiny models for tests and the demo

TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(16, 32, 32, 32), norm_num_groups=8)  # 4 blocks -> 3 downsamples -> 8x
TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1}}


def build_tiny_models(out_dir: str | Path, seed: int = 0, sample_size: int = 64) -> Path:
    """Save a small AutoencoderKL and a small open_clip CLIP (random weights) loadable by the real paths."""
    import open_clip
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    out = Path(out_dir)
    torch.manual_seed(seed)
    vae = AutoencoderKL(sample_size=sample_size, **TINY_VAE)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    clip = open_clip.CLIP(**TINY_CLIP)
    (out / "clip").mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": TINY_CLIP,
           "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}
    (out / "clip" / "open_clip_config.json").write_text(json.dumps(cfg, indent=1))
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(out / "clip" / "open_clip_model.safetensors"))
    info = {"vae": f"tiny-AutoencoderKL{list(TINY_VAE['block_out_channels'])}-seed{seed}",
            "clip": f"tiny-openclip-ViT(w64,l2,p8,d32)-seed{seed}", "seed": seed, "fitted": False,
            "clip_trained": False}   # only the VAE is ever fitted (vaefit.py); the CLIP keeps its random weights
    (out / "models.json").write_text(json.dumps(info, indent=1))
    return out
