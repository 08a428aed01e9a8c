"""sDiT: DiT (Peebles & Xie) over a sequence of F frames, conditioned per frame.

Where the parameters go (`python -m model.sdit --sizes` prints the table):
  trunk        = patch embedding + N DiT blocks (attention, MLP, adaLN-Zero modulation) + final layer
                 + timestep embedder: DiT's network minus its class-label table. For XL/2 it is
                 673,681,568; adding back DiT's 1001 x 1152 label table and its frozen 256 x 1152
                 position table (DiT counts it as a parameter, here it is a buffer) gives 675,129,632,
                 DiT-XL/2's published count.
  conditioning = what sDiT adds instead of class labels: the landmark MLP (478*3 -> D -> D, per frame),
                 the time-offset embedder (sinusoid(256) -> D -> D, per frame), the CLIP embedder
                 (clip_dim -> D -> D, global), two learned null vectors (dropped landmarks / CLIP) and
                 the mapping network (4 residual blocks of D -> D -> D) that turns global + per-frame
                 conditioning into the per-frame adaLN-Zero signal. For XL/2 that is 17.16M, 10.64M
                 of it the mapping network: the whole difference between sDiT-XL/2 and DiT-XL/2.
  Attention over F frames adds no parameters, only compute: F * 256 tokens. One XL/2 forward is
  237 GFLOP at F = 1 (DiT's 118.6 GMACs) and 2372 GFLOP at F = 8 (attention grows with F^2).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.config import ModelConfig


def sinusoid(x: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """(...,) float -> (..., dim) [cos | sin] at geometric frequencies (transformer/DDPM embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[..., None] * freqs  # (..., half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_2d(dim: int, grid: int) -> np.ndarray:
    """Fixed 2-D sin-cos position table (grid*grid, dim): half the channels for rows, half for columns."""
    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)  # (grid*grid, d/2)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    return np.concatenate([one_axis(dim // 2, rows), one_axis(dim // 2, cols)], axis=1).astype(np.float32)


@dataclass
class Conditioning:
    """What the sDiT is conditioned on, one row per sequence (DiT's `model_kwargs`, as one object).

    landmarks (B, F, 478, 3): driving landmarks, x, y in [0, 1] of the crop; all zero = no face
    offsets (B, F): seconds of each frame relative to slot 0 (the reference frame)
    clip_emb (B, D): CLIP embedding of the source face
    drop_landmarks, drop_clip (B,) bool: use the learned null embedding instead (conditioning dropout,
        guidance modes); None = drop nothing
    Every method maps over the fields, so a new input (a source latent, ...) is one more field here and
    one more use in `SDiT.condition`; training, sampling and evaluation carry it unchanged.
    """
    landmarks: torch.Tensor
    offsets: torch.Tensor
    clip_emb: torch.Tensor
    drop_landmarks: torch.Tensor | None = None
    drop_clip: torch.Tensor | None = None

    def map(self, fn) -> Conditioning:
        """The same conditioning with fn applied to every tensor field (None stays None)."""
        return dataclasses.replace(self, **{f.name: fn(v) for f in dataclasses.fields(self)
                                            if (v := getattr(self, f.name)) is not None})

    def to(self, device) -> Conditioning:
        return self.map(lambda v: v.to(device, non_blocking=True))

    def rows(self, idx) -> Conditioning:
        """Rows `idx` (an index tensor or slice) of every field."""
        return self.map(lambda v: v[idx])

    def dropped(self, landmarks: bool, clip: bool) -> Conditioning:
        """Every row with the drop flags set to (landmarks, clip)."""
        B = self.offsets.shape[0]
        flag = lambda on: torch.full((B,), on, dtype=torch.bool, device=self.offsets.device)  # noqa: E731
        return dataclasses.replace(self, drop_landmarks=flag(landmarks), drop_clip=flag(clip))

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """Rows of several conditionings, in order (a field None in every part stays None)."""
        names = [f.name for f in dataclasses.fields(parts[0])]
        vals = {n: [getattr(p, n) for p in parts] for n in names}
        return dataclasses.replace(parts[0], **{n: None if all(v is None for v in vs) else torch.cat(vs)
                                                for n, vs in vals.items()})

    @classmethod
    def from_batch(cls, batch: dict) -> Conditioning:
        """The conditioning of a training batch (model.data), keyed by field name."""
        return cls(**{f.name: batch[f.name] for f in dataclasses.fields(cls) if f.name in batch})


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class Embedder(nn.Sequential):
    """in -> D -> D MLP used for every conditioning input."""

    def __init__(self, d_in: int, d: int):
        super().__init__(nn.Linear(d_in, d), nn.SiLU(), nn.Linear(d, d))


class ResBlock(nn.Module):
    """Mapping-network block: x + W2 SiLU(W1 LN(x))."""

    def __init__(self, d: int):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc2(F.silu(self.fc1(self.norm(x))))


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        B, Fr, N, D = x.shape
        qkv = self.qkv(x.reshape(B, Fr * N, D))                             # (B, F*N, 3D): all frames' tokens
        qkv = qkv.reshape(B, Fr * N, 3, self.heads, D // self.heads)        # (B, L, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                                # 3 x (B, H, L, hd)
        o = F.scaled_dot_product_attention(q, k, v)                         # (B, H, L, hd)
        o = o.transpose(1, 2).reshape(B, Fr * N, D)                         # (B, L, D)
        return self.proj(o).reshape(B, Fr, N, D)                            # (B, F, N, D)


class Block(nn.Module):
    """DiT block with adaLN-Zero; the modulation is per frame (c is (B, F, D))."""

    def __init__(self, d: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, heads)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hid = int(d * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hid), nn.GELU(approximate="tanh"), nn.Linear(hid, d))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x, c):
        # x (B, F, N, D), c (B, F, D) -> six (B, F, 1, D) signals broadcast over a frame's tokens
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).unsqueeze(2).chunk(6, dim=-1)
        x = x + g1 * self.attn(modulate(self.norm1(x), sh1, sc1))
        return x + g2 * self.mlp(modulate(self.norm2(x), sh2, sc2))


class FinalLayer(nn.Module):
    def __init__(self, d: int, out: int):
        super().__init__()
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.linear = nn.Linear(d, out)

    def forward(self, x, c):
        shift, scale = self.ada(c).unsqueeze(2).chunk(2, dim=-1)           # (B, F, 1, D) each
        return self.linear(modulate(self.norm(x), shift, scale))


class SDiT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        a = cfg.arch()
        if cfg.latent_size <= 0 or cfg.clip_dim <= 0:
            raise ValueError("model.latent_size / clip_dim are 0 (= from the shards): resolve them first "
                             "(model.data.check_schema does)")
        self.cfg, self.patch, self.frames = cfg, a["patch"], cfg.frames
        d, C = a["hidden"], cfg.latent_channels
        self.out_channels = 2 * C if cfg.learn_sigma else C
        self.grid = cfg.latent_size // self.patch
        # --- trunk (DiT) ---
        self.x_embed = nn.Conv2d(C, d, kernel_size=self.patch, stride=self.patch)
        self.register_buffer("pos_embed", torch.tensor(sincos_2d(d, self.grid))[None], persistent=False)
        self.t_embed = Embedder(256, d)
        self.blocks = nn.ModuleList([Block(d, a["heads"], cfg.mlp_ratio) for _ in range(a["depth"])])
        self.final = FinalLayer(d, self.patch * self.patch * self.out_channels)
        # --- conditioning (new in sDiT) ---
        self.lm_embed = Embedder(cfg.num_landmarks * 3, d)
        self.offset_embed = Embedder(256, d)
        self.clip_embed = Embedder(cfg.clip_dim, d)
        self.null_landmarks = nn.Parameter(torch.zeros(d))
        self.null_clip = nn.Parameter(torch.zeros(d))
        self.mapping = nn.Sequential(*[ResBlock(d) for _ in range(cfg.mapping_blocks)])
        self.initialize()

    @torch.no_grad()
    def initialize(self):
        """ViT init (xavier-uniform linears, zero biases); adaLN-Zero: modulation and output start at 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # the patch conv is a linear map of a flattened patch
        nn.init.zeros_(self.x_embed.bias)
        for emb in (self.t_embed, self.offset_embed):
            for lin in (emb[0], emb[2]):
                nn.init.normal_(lin.weight, std=0.02)   # DiT's timestep-embedder init
        nn.init.normal_(self.null_landmarks, std=0.02)
        nn.init.normal_(self.null_clip, std=0.02)
        for blk in self.blocks:   # every block starts as the identity map
            nn.init.zeros_(blk.ada[-1].weight)
            nn.init.zeros_(blk.ada[-1].bias)
        for lin in (self.final.ada[-1], self.final.linear):   # so the whole output starts at exactly 0
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def condition(self, t, cond: Conditioning):
        """-> (B, F, D) per-frame modulation signal from the mapping network."""
        B, Fr = cond.offsets.shape
        clip = self._maybe_null(self.clip_embed(cond.clip_emb), self.null_clip, cond.drop_clip)
        g = self.t_embed(sinusoid(t)) + clip                                # (B, D) global
        lm = cond.landmarks.reshape(B, Fr, -1)                              # (B, F, 478*3)
        absent = (lm == 0).all(dim=-1)                                      # (B, F) frames without a face (NaN->0)
        if cond.drop_landmarks is not None:
            absent = absent | cond.drop_landmarks.bool()[:, None]
        le = torch.where(absent[..., None], self.null_landmarks.to(lm.dtype), self.lm_embed(lm))  # (B, F, D)
        oe = self.offset_embed(sinusoid(cond.offsets * self.cfg.offset_scale))  # (B, F, D)
        return self.mapping(g[:, None] + le + oe)                           # (B, F, D)

    @staticmethod
    def _maybe_null(emb, null, drop):
        if drop is None:
            return emb
        # torch.where keeps `null` in the graph every step, so DDP never sees an unused parameter
        return torch.where(drop.bool()[:, None], null.to(emb.dtype), emb)

    def forward(self, x, t, cond: Conditioning):
        """x (B, F, C, H, W) noisy latents, t (B,) timesteps -> (B, F, Cout, H, W) eps (+ variance)."""
        B, Fr, C, H, W = x.shape
        p, g = self.patch, self.grid
        c = self.condition(t, cond)                                         # (B, F, D)
        h = self.x_embed(x.reshape(B * Fr, C, H, W))                       # (B*F, D, g, g)
        h = h.flatten(2).transpose(1, 2) + self.pos_embed                   # (B*F, g*g, D): same table per frame
        h = h.reshape(B, Fr, g * g, -1)                                     # (B, F, N, D)
        for blk in self.blocks:
            if self.cfg.grad_checkpoint and self.training:
                h = checkpoint(blk, h, c, use_reentrant=False)
            else:
                h = blk(h, c)
        out = self.final(h, c)                                              # (B, F, N, p*p*Cout)
        out = out.reshape(B, Fr, g, g, p, p, self.out_channels)             # (B, F, gh, gw, p, p, Cout)
        out = out.permute(0, 1, 6, 2, 4, 3, 5)                              # (B, F, Cout, gh, p, gw, p)
        return out.reshape(B, Fr, self.out_channels, H, W)                  # (B, F, Cout, H, W)

    def mapping_parameters(self):
        return list(self.mapping.parameters())


# ---------- counting (meta device: no memory, works for XL) ----------

TRUNK = ("x_embed", "t_embed", "blocks", "final")
CONDITIONING = ("lm_embed", "offset_embed", "clip_embed", "null_landmarks", "null_clip", "mapping")


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    with torch.device("meta"):
        m = SDiT(cfg)
    out = {k: 0 for k in TRUNK + CONDITIONING}
    for name, p in m.named_parameters():
        out[name.split(".")[0]] += p.numel()
    out["trunk"] = sum(out[k] for k in TRUNK)
    out["conditioning"] = sum(out[k] for k in CONDITIONING)
    out["total"] = out["trunk"] + out["conditioning"]
    a, n_tok = cfg.arch(), (cfg.latent_size // cfg.arch()["patch"]) ** 2
    out["dit_equivalent"] = out["trunk"] + 1001 * a["hidden"] + n_tok * a["hidden"]  # + labels, + DiT's pos param
    return out


def forward_flops(cfg: ModelConfig, batch: int = 1) -> int:
    """FLOPs (multiply-add = 2) of one forward pass on `batch` sequences, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        m = SDiT(cfg)
        B, Fr, C, S = batch, cfg.frames, cfg.latent_channels, cfg.latent_size
        cond = Conditioning(torch.zeros(B, Fr, cfg.num_landmarks, 3), torch.zeros(B, Fr), torch.zeros(B, cfg.clip_dim))
        with FlopCounterMode(display=False) as fc:
            m(torch.zeros(B, Fr, C, S, S), torch.zeros(B, dtype=torch.long), cond)
    return int(fc.get_total_flops())


def main(argv=None):
    import argparse

    from model.config import SIZES

    ap = argparse.ArgumentParser(description="sDiT parameter counts and forward FLOPs per registered size")
    ap.add_argument("--sizes", action="store_true", help="print the table for every registered size")
    ap.add_argument("--frames", type=int, default=8)
    args = ap.parse_args(argv)
    if not args.sizes:
        ap.print_help()
        return
    print(__doc__.split("\n\n", 1)[1].split('"""')[0])
    print(f"{'size':6} {'trunk':>9} {'cond':>8} {'mapping':>8} {'total':>9} {'DiT-equiv':>10} {'GFLOP/fwd(F=%d)' % args.frames:>16}")
    for name in SIZES:
        cfg = ModelConfig(size=name, frames=args.frames)
        c = param_counts(cfg)
        gf = forward_flops(cfg) / 1e9
        print(f"{name:6} {c['trunk']/1e6:8.2f}M {c['conditioning']/1e6:7.2f}M {c['mapping']/1e6:7.2f}M "
              f"{c['total']/1e6:8.2f}M {c['dit_equivalent']/1e6:9.2f}M {gf:16.1f}")


if __name__ == "__main__":
    main()
