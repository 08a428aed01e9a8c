"""Anchored Diffusion sampling (and the naive chunked baseline) for the sDiT.

A video of N frames is generated as ONE batch of S sequences of F frames.

Sequence plan (`plan_anchored`): every sequence holds the anchor frame in slot 0 and F-1 other
frames. The N-1 non-anchor frames are sorted in time and cut into F-1 consecutive strata of S
frames; each sequence receives one frame of every stratum, chosen by a seeded permutation. So every
sequence spans the whole video at random, non-uniform spacing (as the training sequences are
sampled), and time offsets are seconds relative to the anchor. S = ceil((N-1)/(F-1)); when the
slots outnumber the frames, the spare slots re-use frames (evenly spread) as *context only*: their
outputs are discarded, so every non-anchor frame is written by exactly one sequence (its owner).

Synchronisation rule (the anchor is identical in every sequence at every step):
  1. x_T: the anchor slot gets ONE noise draw, copied into all S sequences.
  2. At step t the model is run on all sequences (in chunks of `max_batch` rows if needed; the
     rule below is applied only after every chunk of the step has been evaluated).
  3. The anchor's model output (eps and learned-variance channels, after classifier-free guidance)
     is replaced in every sequence by its MEAN over the S sequences.
  4. p(x_{t-1} | x_t) is computed from that averaged output, and the step's noise for the anchor
     is ONE draw z_a shared by all sequences:  x_{t-1}^a = mean_a + sigma_a * z_a.
  5. That single x_{t-1}^a is written into slot 0 of every sequence (exactly equal tensors).
  All noise of a step is drawn for the whole batch from one seeded generator before any chunking,
  so chunking changes which rows a forward call sees, never the numbers drawn.

Source anchor (`VideoConditioning.anchor_latent` set; `--anchor source`): the anchor is not generated
but known, the source crop's VAE latent x0_src (its landmarks are the anchor frame's landmarks). The
anchor slot then never comes from the model: before every model call at respaced step i, slot 0 of
every sequence is q(x_i | x0_src) = sqrt(abar_i) x0_src + sqrt(1 - abar_i) eps_a, with ONE noise draw
eps_a (made once, first thing from the seeded generator) shared by every sequence and every step, so
the anchor moves along one forward-process path and rules 3-5 hold trivially (the slot is one tensor
everywhere); after the last step slot 0 is x0_src itself. The other frames' updates are unchanged.
`SampleConfig.anchor_noise = "clean"` gives the anchor slot x0_src at every step instead (what a model
trained with `data.clean_reference_p` saw in slot 0).

Time offsets are clamped to +-`SampleConfig.max_offset_s` (the checkpoint's `model.max_offset_s`, which
the training sequences are clamped to as well): a sequence spread over a 30 s video would otherwise
show the model offsets it never saw in training (clips <= 8.5 s). Clamping, not rescaling: the offsets
near the anchor (where consecutive frames must look alike) stay true seconds; rescaling would shrink
every gap by a factor that depends on the video's length (a 30 s video's 40 ms spacing would read as
11 ms), and beyond the clamp the landmarks, not the offset, say what the frame shows.

The naive baseline (`plan_naive`, sync=False) samples consecutive chunks of F frames
independently (offsets relative to each chunk's first frame); a last partial chunk is filled with
the preceding frames as context.

Guidance modes (supplementary Table 1) set the model's drop flags: none = drop landmarks and CLIP,
landmarks = drop CLIP, clip = drop landmarks, clip+landmarks = drop nothing. Classifier-free
guidance with scale w = cfg_scale: out_eps = uncond + w (cond - uncond), the unconditional pass
dropping both; the variance channels come from the conditional pass (as DiT does). w = 1 runs no
extra pass. Each step's x_{t-1} comes from GaussianDiffusion.p_sample, the step the plain loop uses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from model.sdit import Conditioning

GUIDANCE = {  # mode -> (drop_landmarks, drop_clip)
    "none": (True, True),
    "landmarks": (False, True),
    "clip": (True, False),
    "clip+landmarks": (False, False),
}


@dataclass
class SequencePlan:
    frames: np.ndarray        # (S, F) int: driving-frame index in each slot; slot 0 is the offset reference
    owner: np.ndarray         # (S, F) bool: this slot's result is the one written to the output video
    anchor: int | None        # the frame shared by all sequences (None: naive chunks)
    n_frames: int

    @property
    def num_sequences(self) -> int:
        return int(self.frames.shape[0])


def _check(n_frames: int, F: int) -> None:
    if F < 2:
        raise ValueError(f"sequence length F={F} must be at least 2")
    if n_frames < F:
        raise ValueError(f"the driving video has {n_frames} frames, fewer than the sequence length F={F}")


def plan_anchored(n_frames: int, F: int, anchor: int = 0, seed: int = 0) -> SequencePlan:
    _check(n_frames, F)
    if not 0 <= anchor < n_frames:
        raise ValueError(f"anchor frame {anchor} outside the video (0..{n_frames - 1})")
    others = [i for i in range(n_frames) if i != anchor]
    S = math.ceil(len(others) / (F - 1))
    pad = S * (F - 1) - len(others)
    spare = [others[int(round(j))] for j in np.linspace(0, len(others) - 1, pad)] if pad else []
    strata = np.array(sorted(others + spare)).reshape(F - 1, S)
    rng = np.random.default_rng(seed)
    frames = np.full((S, F), anchor, dtype=np.int64)
    for k in range(F - 1):
        for _ in range(100):  # re-draw when a spare copy would land in a sequence holding its original
            perm = rng.permutation(S)
            col = strata[k, perm]
            if not any(col[s] in frames[s, 1:k + 1] for s in range(S)):
                break
        frames[:, k + 1] = col
    owner = _first_owners(frames, first_slot=1)
    owner[0, 0] = True  # the anchor: identical everywhere, taken from sequence 0
    return SequencePlan(frames, owner, anchor, n_frames)


def _first_owners(frames: np.ndarray, first_slot: int = 0) -> np.ndarray:
    """(S, F) bool: the first slot (row-major, from `first_slot` on) where each frame appears owns it."""
    owner = np.zeros(frames.shape, dtype=bool)
    seen: set[int] = set()
    for s in range(frames.shape[0]):
        for f in range(first_slot, frames.shape[1]):
            if int(frames[s, f]) not in seen:
                seen.add(int(frames[s, f]))
                owner[s, f] = True
    return owner


def plan_naive(n_frames: int, F: int) -> SequencePlan:
    _check(n_frames, F)
    starts = list(range(0, n_frames - F + 1, F))
    if starts[-1] + F < n_frames:
        starts.append(n_frames - F)  # last chunk ends at the last frame; its earlier frames are context
    frames = np.array([np.arange(s, s + F) for s in starts], dtype=np.int64)
    return SequencePlan(frames, _first_owners(frames), None, n_frames)


@dataclass
class SampleConfig:
    steps: int = 1000                 # respaced DDPM steps (1000 = the full schedule)
    cfg_scale: float = 1.0            # classifier-free guidance scale (paper: 1 best); 1 = no extra pass
    guidance: str = "clip+landmarks"  # none | landmarks | clip | clip+landmarks
    sampler: str = "anchored"         # anchored | naive (independent consecutive chunks, the baseline)
    anchor: int = 0                   # anchored: the driving frame every sequence shares
    max_batch: int = 0                # rows per model call (CFG doubles the rows); 0 = the whole batch
    seed: int = 0                     # the noise
    plan_seed: int = 0                # anchored: which frames share a sequence
    clip_x0: float = 0.0              # >0: clamp the predicted x_0 to [-clip_x0, clip_x0] (static thresholding);
                                      # 0 = off, as DiT samples latents. Keeps an undertrained model from drifting.
    max_offset_s: float = 0.0         # >0: clamp time offsets to +-this (the checkpoint's model.max_offset_s)
    anchor_noise: str = "step"        # source anchor: "step" = q(x_t | x0_src) at each step; "clean" = x0_src

    def __post_init__(self):
        if self.guidance not in GUIDANCE:
            raise ValueError(f"unknown guidance mode {self.guidance!r}; known: {', '.join(GUIDANCE)}")
        if self.sampler not in ("anchored", "naive"):
            raise ValueError(f"unknown sampler {self.sampler!r}; known: anchored, naive")
        if self.anchor_noise not in ("step", "clean"):
            raise ValueError(f"unknown anchor_noise {self.anchor_noise!r}; known: step, clean")

    def plan(self, n_frames: int, F: int) -> SequencePlan:
        return plan_anchored(n_frames, F, self.anchor, self.plan_seed) if self.sampler == "anchored" \
            else plan_naive(n_frames, F)


@dataclass
class VideoConditioning:
    """What a whole output video is conditioned on, per output frame (the plan cuts it into sequences).
    `anchor_latent` set: the plan's anchor frame is KNOWN (the source crop's latent, scaled space), not
    generated (see "Source anchor" above); its landmarks and time are the anchor frame's entries here."""
    landmarks: torch.Tensor   # (N, 478, 3) float, driving landmarks of every output frame (no NaN)
    times: torch.Tensor       # (N,) float seconds of every output frame
    clip_emb: torch.Tensor    # (D,) CLIP embedding of the source
    anchor_latent: torch.Tensor | None = None   # (C, h, w) the source latent when the anchor is the source

    def sequences(self, plan: SequencePlan, max_offset_s: float = 0.0) -> Conditioning:
        """The model's conditioning for every sequence of `plan` (S rows), nothing dropped; offsets
        clamped to +-max_offset_s when > 0 (the range the model was trained on)."""
        fr = torch.as_tensor(plan.frames)
        t = self.times.float()
        off = t[fr] - t[fr[:, :1]]                                                         # (S, F) s vs slot 0
        if max_offset_s > 0:
            off = off.clamp(-max_offset_s, max_offset_s)
        return Conditioning(landmarks=torch.nan_to_num(self.landmarks.float()[fr]),       # (S, F, 478, 3)
                            offsets=off,
                            clip_emb=self.clip_emb.float()[None].expand(plan.num_sequences, -1))  # (S, D)

    def with_source_anchor(self, latent: torch.Tensor, landmarks: torch.Tensor, time_s: float) -> VideoConditioning:
        """This video with the source prepended as frame 0, the known anchor (plan it with anchor=0 and
        drop frame 0 of the result): its latent, its landmarks, and the time the offsets count from."""
        return VideoConditioning(landmarks=torch.cat([landmarks.float()[None], self.landmarks.float()]),
                                 times=torch.cat([torch.tensor([float(time_s)]), self.times.float()]),
                                 clip_emb=self.clip_emb, anchor_latent=latent.float())


def guided_output(model, x, t_model, cond: Conditioning, cfg_scale: float, max_batch: int) -> torch.Tensor:
    """Model output for every sequence (S, F, 2C, h, w), classifier-free guidance applied, evaluated in
    chunks: rows = the S sequences under `cond` (+ S unconditional rows when cfg_scale != 1 and `cond`
    conditions on something); at most `max_batch` rows go into one forward call."""
    S = x.shape[0]
    extra = cfg_scale != 1.0 and not bool(cond.drop_landmarks.all() and cond.drop_clip.all())
    xs, conds = (torch.cat([x, x]), Conditioning.cat([cond, cond.dropped(True, True)])) if extra else (x, cond)
    n = xs.shape[0]
    step = max_batch if max_batch and max_batch > 0 else n
    tt = torch.full((n,), int(t_model), dtype=torch.long)
    out = torch.cat([model(xs[i:i + step], tt[i:i + step], conds.rows(slice(i, i + step))) for i in range(0, n, step)])
    if not extra:
        return out
    on, off = out[:S], out[S:]
    C = x.shape[2]
    eps = off[:, :, :C] + cfg_scale * (on[:, :, :C] - off[:, :, :C])
    return torch.cat([eps, on[:, :, C:]], dim=2)


@torch.no_grad()
def sample(model, diffusion, plan: SequencePlan, video: VideoConditioning, latent_shape: tuple[int, int, int],
           sc: SampleConfig, callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Run the reverse process for the whole plan; returns (N, C, h, w) latents (scaled space).

    `diffusion` is the full GaussianDiffusion; it is respaced here (`sc.steps`) and the model is fed
    the original timesteps through `timestep_map`. `callback(step_index, x)` sees the batch after
    every step (progress, tests). Anchored synchronisation applies when `plan.anchor` is set.
    """
    from model.diffusion import respace

    sp = respace(diffusion, sc.steps)
    tmap = torch.as_tensor(sp.timestep_map).long()
    sync = plan.anchor is not None
    cond = video.sequences(plan, sc.max_offset_s).dropped(*GUIDANCE[sc.guidance])
    S, F = plan.frames.shape
    g = torch.Generator().manual_seed(int(sc.seed))
    known = video.anchor_latent
    if known is not None:
        if not sync:
            raise ValueError("a source anchor needs the anchored sampler (the naive one has no anchor)")
        known = known.float().reshape(latent_shape)
        eps_a = torch.randn(latent_shape, generator=g)                # the ONE anchor noise draw (all steps)
    x = torch.randn((S, F, *latent_shape), generator=g)
    if sync:
        x[:, 0] = x[0, 0].clone()                                     # rule 1

    def known_at(i: int) -> torch.Tensor:
        """The known anchor at respaced step i (i = -1: x_0, the source latent itself)."""
        if i < 0 or sc.anchor_noise == "clean":
            return known
        return sp.q_sample(known[None], torch.tensor([i]), eps_a[None])[0]

    if known is not None:
        x[:, 0] = known_at(len(tmap) - 1)
    for k, i in enumerate(range(len(tmap) - 1, -1, -1)):
        out = guided_output(model, x, tmap[i], cond, sc.cfg_scale, sc.max_batch)
        noise = torch.randn(x.shape, generator=g)                    # drawn for the whole batch, before any use
        if sync:
            out[:, 0] = out[:, 0].mean(dim=0)                        # rule 3
            noise[:, 0] = noise[0, 0].clone()                         # rule 4
        # the clamp of x_0 (clip_x0) is elementwise, so the anchor stays in sync
        x = sp.p_sample(out, x, torch.full((S,), i, dtype=torch.long), noise, sc.clip_x0)
        if sync:
            x[:, 0] = x[0, 0].clone()                                 # rule 5 (already equal; makes it explicit)
        if known is not None:
            x[:, 0] = known_at(i - 1)                                 # the known anchor, noised to the next step
        if callback is not None:
            callback(k, x)
    return assemble(plan, x)


def assemble(plan: SequencePlan, x: torch.Tensor) -> torch.Tensor:
    """(S, F, C, h, w) -> (N, C, h, w) from the owner slots; every frame exactly once."""
    out = torch.empty((plan.n_frames, *x.shape[2:]), dtype=x.dtype)
    count = np.zeros(plan.n_frames, dtype=int)
    for s, f in zip(*np.nonzero(plan.owner)):
        out[plan.frames[s, f]] = x[s, f]
        count[plan.frames[s, f]] += 1
    if not (count == 1).all():
        raise AssertionError(f"plan does not cover every frame exactly once: counts {np.bincount(count)}")
    return out
