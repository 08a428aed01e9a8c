"""One typed config for the sDiT trainer, with the paper's defaults (supplementary §7).

`load_config` is the one place a run's config is decided. Sources of values, applied in order:
dataclass defaults (the paper) -> a preset (`preset: tiny`) -> the YAML sections (dags/train.yaml)
-> a preset named on the command line (`preset=tiny`) or, training on a CPU, `train.cpu_preset`
-> command-line overrides `section.key=value`. The only values decided later are model.latent_size /
clip_dim given as 0, which `with_shard_dims` takes from the shards. Unknown keys and mistyped values
are rejected with a one-line error naming the key, so a typo never silently trains the default.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.configfile import ConfigError, check_keys, load_yaml, set_fields  # shared by every config

# DiT's registry (Peebles & Xie, Table 1): name -> depth, hidden width, heads; "/p" = patch size.
_BASE = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
SIZES: dict[str, dict[str, int]] = {
    f"{n}/{p}": dict(depth=d, hidden=h, heads=k, patch=p) for n, (d, h, k) in _BASE.items() for p in (2, 4, 8)
}
SIZES["tiny"] = dict(depth=2, hidden=64, heads=4, patch=4)  # trains on a laptop CPU in seconds
# The demo's model: patch 2 keeps 16 tokens per frame of an 8x8 demo latent (tiny's patch 4 leaves 4,
# too coarse to denoise at high t); minutes on 2 CPU cores.
SIZES["mini"] = dict(depth=4, hidden=128, heads=4, patch=2)


@dataclass
class ModelConfig:
    size: str = "XL/2"            # paper: sDiT-XL, patch 2x2
    frames: int = 8               # paper trains F = 4 and F = 8
    latent_size: int = 32         # 256 px / VAE factor 8; 0 = take it from the shards
    latent_channels: int = 4      # SD VAE
    clip_dim: int = 512           # CLIP ViT-B/32 image embedding; 0 = take it from the shards' meta.json
    num_landmarks: int = 478      # MediaPipe mesh with irises
    mapping_blocks: int = 4       # paper: mapping network of 4 residual blocks
    mlp_ratio: float = 4.0        # DiT
    learn_sigma: bool = True      # DiT/IDDPM learned variance: 2x output channels
    offset_scale: float = 100.0   # seconds -> sinusoid input; 100 resolves 10 ms with DiT's 10000 max period
    # |time offset| the model is trained and sampled within: training sequences come from one clip
    # (curation's filters.max_duration_s = 8.5 s), and anchored sampling clamps offsets to the same range
    max_offset_s: float = 8.5
    grad_checkpoint: bool = False  # recompute block activations in backward (memory for compute)

    def arch(self) -> dict[str, int]:
        if self.size not in SIZES:
            raise ConfigError(f"unknown model.size {self.size!r}; known: {', '.join(SIZES)}")
        a = SIZES[self.size]
        if self.latent_size < 0 or self.latent_size % a["patch"]:
            raise ConfigError(f"latent_size {self.latent_size} not divisible by patch {a['patch']}")
        return a


@dataclass
class DiffusionConfig:
    steps: int = 1000             # t_max (DiT)
    schedule: str = "linear"      # DiT's linear beta schedule
    lambda_ex: float = 1.0        # paper: expressive (mouth, eyes) latent pixels weighted 1 + lambda_ex
    sample_steps: int = 250       # respaced steps for sample grids during training (DiT samples with 250)


@dataclass
class DataConfig:
    shards: str = ""              # dir / glob / brace pattern / .txt list of URLs; "" = <data>/shards
    cond_dropout: float = 0.1     # paper: 10% conditioning dropout for classifier-free guidance
    # "joint" (paper, supplementary §4): landmarks and CLIP dropped together, so only none and CLIP+landmarks
    # are trained; "independent" (ours): each dropped on its own, which also trains landmarks-only/CLIP-only
    dropout_mode: str = "joint"
    shuffle_buffer: int = 64      # sequences mixed across clips/shards before batching
    num_workers: int = 4          # DataLoader worker processes per rank
    overfit_batches: int = 0      # >0: cycle this many fixed batches (data, t, noise) - a memorisation check
    heldout_fraction: float = 0.1  # videos kept out of training for `make eval` (model/split.py); 0 = train on all
    heldout_min_clips: int = 2    # small corpora: hold out lowest-hash videos until this many clips (<= half the videos)
    # probability that a sequence's reference frame (slot 0) is given CLEAN (not noised) and left out of
    # the loss, so the model learns to copy appearance from slot 0 (`--anchor source` then samples with
    # `--anchor-noise clean`); 0 = the paper's training (every frame noised and scored)
    clean_reference_p: float = 0.0


@dataclass
class TrainConfig:
    global_batch: int = 16        # paper: global batch 16 (4 x A100)
    max_steps: int = 1_000_000    # paper: 1M steps
    lr: float = 6.4e-5            # paper: denoiser
    lr_mapping: float = 6.4e-6    # paper: mapping network
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW defaults (paper: "default parameter values")
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 1000      # not in the paper; a short linear warmup before the cosine
    min_lr_ratio: float = 0.0     # cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0
    ema_decay: float = 0.9999     # DiT
    seed: int = 0
    log_every: int = 100
    ckpt_every: int = 10_000      # 0 = no checkpoints (benchmarks)
    keep_last: int = 2            # older step checkpoints are deleted
    sample_every: int = 0         # >0: save a sample grid every K steps (needs a local VAE to decode)
    vae_path: str = ""            # "" = <data>/models/vae if it exists
    precision: str = "auto"       # "auto": bf16 autocast on GPU, fp32 on CPU; or "fp32" / "bf16" (CPU too)
    compile: bool = False         # torch.compile the model (forward + backward); the first step compiles
    compile_backend: str = "inductor"  # torch.compile backend; "aot_eager" traces without code generation
                                  # (inductor's C++ code generation takes minutes on a small CPU)
    peak_flops: float = 0.0       # per-device peak FLOP/s for MFU; 0 = model.mfu.PEAK_FLOPS by device name
    run: str = "sdit"             # run directory name under <data>/train/
    cpu_preset: str = "tiny"      # applied when no GPU is present ("" = train the YAML's model on CPU anyway)


@dataclass
class Config:
    preset: str = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    notes: list[str] = field(default_factory=list)   # what load_config decided beyond the files (logged)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"]["betas"] = list(d["train"]["betas"])  # plain types only (weights_only checkpoints)
        return d


PRESETS: dict[str, dict] = {
    "paper": {},
    "demo": {
        "model": {"size": "mini", "frames": 4},
        "diffusion": {"sample_steps": 50},
        # a quarter of the 12 demo videos held out: eval and the consistency study get several unseen ones
        "data": {"num_workers": 0, "shuffle_buffer": 16, "heldout_fraction": 0.25},
        "train": {"global_batch": 8, "max_steps": 3000, "lr": 5e-4, "lr_mapping": 5e-5, "warmup_steps": 100,
                  "ema_decay": 0.995, "log_every": 50, "ckpt_every": 1000, "sample_every": 1000},
    },
    "tiny": {
        "model": {"size": "tiny", "frames": 4},
        "diffusion": {"sample_steps": 10},
        "data": {"num_workers": 0, "shuffle_buffer": 8},
        "train": {"global_batch": 4, "max_steps": 200, "lr": 1e-3, "lr_mapping": 1e-4, "warmup_steps": 10,
                  "ema_decay": 0.99, "log_every": 10, "ckpt_every": 100},
    },
}

_SECTIONS = ("model", "diffusion", "data", "train")


def apply(cfg: Config, updates: dict, origin: str) -> Config:
    check_keys(updates, ("preset", *_SECTIONS), origin)
    for sec, vals in updates.items():
        if sec != "preset":
            set_fields(getattr(cfg, sec), vals, origin, sec)   # every value type-checked, the key named
    return cfg


def parse_overrides(items: list[str]) -> dict:
    """['train.lr=1e-4', 'model.size=S/2'] -> {'train': {'lr': 1e-4}, 'model': {'size': 'S/2'}}."""
    import yaml

    out: dict = {}
    for it in items:
        key, sep, val = it.partition("=")
        if sep and key == "preset":
            out["preset"] = val
            continue
        if not sep or key.count(".") != 1:
            raise ConfigError(f"override {it!r}: expected section.key=value")
        sec, k = key.split(".")
        out.setdefault(sec, {})[k] = yaml.safe_load(val) if val else ""   # `key=` sets "" (YAML would say None)
    return out


def _preset(name, origin: str) -> str:
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"{origin}: unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return name


def _assemble(doc: dict, where: str, preset: str | None, overrides: dict) -> Config:
    """defaults -> the YAML's preset -> the YAML -> `preset` (if another) -> overrides."""
    cfg = Config(preset=_preset(doc.get("preset", "paper"), where))
    apply(cfg, PRESETS[cfg.preset], f"preset {cfg.preset}")
    apply(cfg, doc, where)
    if preset and preset != cfg.preset:
        cfg.preset = _preset(preset, "override")
        apply(cfg, PRESETS[preset], f"preset {preset}")
    apply(cfg, overrides, "override")
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                for_device: str | None = None) -> Config:
    """The run's config, decided here once (see the module doc for the order).

    `preset=NAME` among the overrides forces a preset after the YAML: `preset=tiny` on the command line
    trains the tiny model whatever the YAML says. `for_device`: the device type the run trains on; on
    "cpu", `train.cpu_preset` (unless empty, or a preset was named on the command line) replaces the
    YAML's preset the same way, and `cfg.notes` says so. None = no device decision (a config described,
    not trained)."""
    overrides = dict(parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {}))
    named = overrides.pop("preset", None)
    doc = load_yaml(path)
    where = str(path) if path else "defaults"
    cfg = _assemble(doc, where, named, overrides)
    fallback = cfg.train.cpu_preset
    if for_device == "cpu" and named is None and fallback and cfg.preset != fallback:
        wanted = f"{cfg.model.size} ({cfg.preset} preset)"
        cfg = _assemble(doc, where, _preset(fallback, "train.cpu_preset"), overrides)
        cfg.notes.append(f"no GPU: training the {cfg.preset!r} preset (model {cfg.model.size}) instead of {wanted}; "
                         f"set train.cpu_preset='' to override")
    return cfg


def with_shard_dims(cfg: Config, latent_size: int, clip_dim: int) -> Config:
    """model.latent_size / clip_dim given as 0 (= from the shards) take the shards' values (from
    model.data.check_schema, which has checked the ones given); returns cfg."""
    if cfg.model.latent_size == 0:
        cfg.model.latent_size = int(latent_size)
        cfg.model.arch()    # the adopted size must suit the patch
    if cfg.model.clip_dim == 0:
        cfg.model.clip_dim = int(clip_dim)
    return cfg


def from_dict(d: dict) -> Config:
    """Rebuild a Config from `Config.to_dict()` (what checkpoints store)."""
    cfg = Config(preset=d.get("preset", "paper"))
    return apply(cfg, {k: v for k, v in d.items() if k in _SECTIONS}, "checkpoint config")


def validate(cfg: Config) -> None:
    cfg.model.arch()
    if not 0.0 <= cfg.data.heldout_fraction < 1.0:
        raise ConfigError(f"data.heldout_fraction must be in [0, 1), got {cfg.data.heldout_fraction}")
    if cfg.data.dropout_mode not in ("independent", "joint"):
        raise ConfigError(f"data.dropout_mode must be independent|joint, got {cfg.data.dropout_mode!r}")
    if cfg.diffusion.schedule != "linear":
        raise ConfigError(f"diffusion.schedule {cfg.diffusion.schedule!r}: only 'linear' (DiT) is implemented")
    if cfg.train.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"train.precision must be auto|fp32|bf16, got {cfg.train.precision!r}")
    if cfg.train.cpu_preset and cfg.train.cpu_preset not in PRESETS:
        raise ConfigError(f"train.cpu_preset: unknown preset {cfg.train.cpu_preset!r}; known: {', '.join(PRESETS)}")
    if not 0.0 <= cfg.data.clean_reference_p <= 1.0:
        raise ConfigError(f"data.clean_reference_p must be in [0, 1], got {cfg.data.clean_reference_p}")
    if cfg.model.max_offset_s <= 0:
        raise ConfigError(f"model.max_offset_s must be > 0, got {cfg.model.max_offset_s}")
    if not 0.0 <= cfg.data.cond_dropout < 1.0:
        raise ConfigError("data.cond_dropout must be in [0, 1)")
