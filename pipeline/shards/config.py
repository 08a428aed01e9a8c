"""The shard builder's config: `ShardsConfig` (paper defaults) with its `EncoderConfig`, `load_dag`
(dags/shards.yaml) and `InputProblem`, the one error for unusable inputs. Shared by the run order
(build.py), the encoders' runners (writer.py), decoding (decode.py) and the encoders (encode.py),
so none of them imports another for it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

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


class InputProblem(ValueError):
    """A missing or unusable input given on the command line / DAG; nothing was changed."""


@dataclass
class ShardsConfig:
    name: str = "faces"                 # shard file prefix
    samples_per_shard: int = 64
    min_landmark_rate: float = 0.9      # a clip whose stored frames show the face mesh on fewer is not written
    runner: str = "ray"                 # ray | sequential
    models: str = "default"             # default | tiny | a dir with vae/ and clip/
    clips: str = "curate/clips.parquet"  # relative to the data root
    sources: str = "manifests/sources.csv"
    optout: str = "manifests/optout.csv"
    stills: str = ""                    # folder of portraits -> pseudo-clips ("" = none)
    stills_frames: int = 16
    stills_fps: float = 25.0
    decode_cpus: float = 0.25           # Ray: fractional CPUs, or 2 cores deadlock (DESIGN.md)
    encode_cpus: float = 0.5
    encode_gpus: float = 1.0            # used only when CUDA is present
    max_actors: int = 2
    clips_per_batch: int = 4
    tiny_seed: int = 0
    tiny_fit_steps: int = 300
    tiny_fit_frames: int = 512
    tiny_fit_batch: int = 8
    arcface_model: str = ""             # w600k_r50.onnx, when the clips' identities are ArcFace ones
    optout_max_distance: float = 0.0    # face_photo opt-out: identity distance that is one person; 0 = the
                                        # encoder's rule (dlib: Euclidean < 0.6)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)


# YAML keys that name a field differently (section, key) -> ShardsConfig field
_RENAME = {("stills", "frames"): "stills_frames", ("stills", "fps"): "stills_fps",
           ("decode", "num_cpus"): "decode_cpus", ("encode", "num_cpus"): "encode_cpus",
           ("encode", "num_gpus"): "encode_gpus", ("tiny", "seed"): "tiny_seed",
           ("tiny", "fit_steps"): "tiny_fit_steps", ("tiny", "fit_frames"): "tiny_fit_frames",
           ("tiny", "fit_batch"): "tiny_fit_batch"}
_STAGES = ("decode", "encode", "stills", "write")
# resources belong to the step that runs them: under another stage (or inputs) they are an error, not a
# silent setting of that step's pool (`write: {max_actors: 8}` would size the encode actors)
_STEP_OF_RESOURCE = {"decode_cpus": "decode", "encode_cpus": "encode", "encode_gpus": "encode",
                     "max_actors": "encode", "clips_per_batch": "encode"}


def load_dag(path: str | Path | None) -> ShardsConfig:
    """dags/shards.yaml -> ShardsConfig; an unknown key or a mistyped value is an error naming it.

    Top-level keys and `inputs:` set ShardsConfig fields; `tiny:` and `stages:` (decode, encode,
    stills, write) set their renamed fields (_RENAME), and decode/encode also EncoderConfig's."""
    from pipeline.configfile import ConfigError, check_keys, check_type, field_types, load_yaml

    cfg = ShardsConfig()
    if not path:
        return cfg
    where = str(path)
    doc = load_yaml(path)
    top = {f.name for f in dataclasses.fields(ShardsConfig)} - {"encoder"}
    enc = {f.name for f in dataclasses.fields(EncoderConfig)}
    own = {"": top | {"inputs", "stages", "tiny"}, "inputs": top, "tiny": set(), "decode": enc,
           "encode": enc | top, "stills": set(), "write": top}   # plus each section's _RENAME keys

    def put(section: str, vals) -> None:
        check_keys(vals, own[section] | {k for s, k in _RENAME if s == section}, where, section)
        for k, v in vals.items():
            step = _STEP_OF_RESOURCE.get(_RENAME.get((section, k), k))
            if section and step and section != step:
                raise ConfigError(f"{where}: {section}.{k}: a resource of the {step} step; set it under "
                                  f"stages.{step}")
            if (section, k) in _RENAME:
                obj, name = cfg, _RENAME[(section, k)]
            elif section in ("decode", "encode") and k in enc:
                obj, name = cfg.encoder, k
            else:
                obj, name = cfg, k
            key = f"{section}.{k}" if section else k
            setattr(obj, name, check_type(f"{where}: {key}", v, field_types(type(obj))[name]))

    for k, v in doc.items():          # in file order: a later key wins, as it reads
        if k == "stages":
            check_keys(v or {}, _STAGES, where, "stages")
            for stage, kv in (v or {}).items():
                put(stage, kv or {})
        elif k in ("inputs", "tiny"):
            put(k, v or {})
        else:
            put("", {k: v})
    if cfg.encoder.precision not in ("auto", "fp32", "fp16", "bf16"):
        raise ConfigError(f"{where}: encode.precision must be auto|fp32|fp16|bf16, got {cfg.encoder.precision!r}")
    return cfg
