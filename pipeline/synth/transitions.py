"""Gradual transitions for the test corpus: how shots mix into cross-dissolves and fades through black.

Pure bookkeeping and arithmetic (no rendering): corpus.generate_edit renders each shot on its own,
asks `mix_plan` which frames of which shots make each output frame with what weight, blends them
with `mix`, and takes the ground truth from `edit_truth`.

  cut       shot k's last frame, then shot k+1's first: no mixed frame
  dissolve  `frames` frames of (1 - a) * A + a * B, a = j / (frames + 1) for j = 1..frames, while
            both shots keep moving (the frames just before and after are pure A and pure B)
  fade      A darkens over the first half, `black` frames of black, B brightens over the rest

Every frame that is not a pure frame of one shot belongs to the transition window: a clip must
touch none of them. Mixing is plain numpy float32 arithmetic, so bytes match on every machine.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Part = tuple[int, int, float]      # (shot, frame index within that shot's own render, weight)


@dataclass
class Transition:
    kind: str            # "cut" | "dissolve" | "fade"
    frames: int = 0      # mixed frames: the dissolve, or fade out + black + fade in
    black: int = 0       # fade only: fully black frames in the middle

    def __post_init__(self):
        if self.kind not in ("cut", "dissolve", "fade") or (self.kind != "cut" and self.frames < 1) \
                or not 0 <= self.black <= self.frames:
            raise ValueError(f"bad transition {self}")


def mix_plan(pure_frames: list[int], transitions: list[Transition]) -> list[list[Part]]:
    """Per output frame, the shot frames it mixes; [] is a black frame. pure_frames[k] = frames of
    shot k shown alone; shot k's own render must be as long as the largest frame index used."""
    if len(transitions) != len(pure_frames) - 1:
        raise ValueError(f"{len(pure_frames)} shots need {len(pure_frames) - 1} transitions")
    out: list[list[Part]] = []
    pos = [0] * len(pure_frames)       # next frame of each shot's render

    def take(k: int, w: float) -> Part:
        pos[k] += 1
        return (k, pos[k] - 1, w)

    for k, n in enumerate(pure_frames):
        out += [[take(k, 1.0)] for _ in range(n)]
        if k == len(transitions):
            break
        tr = transitions[k]
        if tr.kind == "dissolve":
            for j in range(1, tr.frames + 1):
                a = j / (tr.frames + 1)
                out.append([take(k, 1.0 - a), take(k + 1, a)])
        elif tr.kind == "fade":
            n_out = (tr.frames - tr.black) // 2
            n_in = tr.frames - tr.black - n_out
            out += [[take(k, 1.0 - j / (n_out + 1))] for j in range(1, n_out + 1)]
            out += [[] for _ in range(tr.black)]
            out += [[take(k + 1, j / (n_in + 1))] for j in range(1, n_in + 1)]
    return out


def mix(images_weights: list[tuple[np.ndarray, float]], shape: tuple[int, int, int]) -> np.ndarray:
    """Weighted sum of uint8 images, rounded back to uint8 (black when the list is empty)."""
    if len(images_weights) == 1 and images_weights[0][1] == 1.0:     # a pure frame: nothing to mix
        return images_weights[0][0]
    acc = np.zeros(shape, np.float32)
    for img, w in images_weights:
        acc += np.float32(w) * img.astype(np.float32)
    return np.clip(np.rint(acc), 0, 255).astype(np.uint8)


def edit_truth(plan: list[list[Part]], transitions: list[Transition]) -> tuple[list[tuple[int, int, int]], list[int],
                                                                                list[dict]]:
    """(scenes [(shot, start, end)] = runs of one shot's pure frames, hard cuts, transition windows
    [{"start", "end", "kind"}]) in output frames, [start, end)."""
    def shot_if_pure(p):
        return p[0][0] if len(p) == 1 and p[0][2] == 1.0 else None

    scenes: list[tuple[int, int, int]] = []
    for i, p in enumerate(plan):
        k = shot_if_pure(p)
        if k is None:
            continue
        if scenes and scenes[-1][0] == k and scenes[-1][2] == i:
            scenes[-1] = (k, scenes[-1][1], i + 1)
        else:
            scenes.append((k, i, i + 1))
    cuts = [b[1] for a, b in zip(scenes, scenes[1:]) if a[2] == b[1]]
    windows = [{"start": a[2], "end": b[1], "kind": tr.kind}
               for a, b, tr in zip(scenes, scenes[1:], transitions) if tr.kind != "cut"]
    return scenes, cuts, windows
