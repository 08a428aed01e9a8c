"""Which VAE and CLIP a run loads: `ModelSet`, `resolve_models` ('default' = the config's hub names,
or a local directory with vae/ and clip/), `weights_digest` of local weights, and `build_tiny_models`,
small models of the real classes in that directory layout (tests and the offline demo; vaefit.py
teaches the tiny VAE just enough to reconstruct faces).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.shards.config import EncoderConfig


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

