"""dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`) run by torch.

The same weights and the same arithmetic as `dlib.face_recognition_model_v1.compute_face_descriptor`, at a
fraction of the CPU: the `dlib-bin` wheel is built without BLAS, so its convolutions cost ~0.13 s a face,
half of curation's CPU on the test corpus. Here the .dat file is read directly (no dlib needed to load it)
and the network is rebuilt in torch; `tests/test_identity.py` checks that both give the same 128-D
descriptor on real faces.

The file is dlib's serialisation of the network, innermost layer first. What we read of it:
- integers: one byte holding the byte count (0x80 set when negative), then that many little-endian bytes;
- strings: an integer length, then the bytes (each layer starts with its name and version, e.g. "con_4");
- floats (the input layer's channel means): an integer mantissa and an integer base-2 exponent;
- tensors: version 2, then num_samples, k, nr, nc as integers, then the values as little-endian float32.
Each layer's parameters are one tensor: a convolution's filters (out, in, kh, kw) then its biases; an
affine layer's (frozen batch norm) per-channel scales then shifts; the last fully connected layer's
(256 inputs x 128 outputs) matrix, no bias.

The architecture (what dlib's face recognition example defines): a 7x7/2 convolution with 32 filters,
affine, relu, 3x3/2 max pool; then residual blocks of two 3x3 convolutions each followed by affine,
3 x 32, [down, 3] x 64, [down, 2] x 128, [down, 2] x 256, [down] x 256 channels, a relu after each block;
a global average and the 256 -> 128 matrix. A "down" block's first convolution has stride 2 and its
shortcut is a 2x2/2 average pool of the block's input. Strided layers have no padding, 3x3 stride-1
convolutions pad by 1. dlib adds two tensors of different shapes over their overlap into a tensor of the
larger shape (zeros elsewhere): a down block's output can have more channels than its shortcut and, once,
a smaller grid (3x3 against 4x4).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

# the stages of residual blocks, 32, 64, 128, 256, 256 channels: (blocks, first block downsamples)
STAGES = [(3, False), (4, True), (3, True), (3, True), (1, True)]
CHIP = 150     # the input side the network was trained at


class _Reader:
    """A cursor over dlib's serialised bytes."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def int(self) -> int:
        if self.pos >= len(self.data):
            raise ValueError("the file ends inside a layer (truncated?)")
        head = self.data[self.pos]
        n, neg = head & 0x0F, bool(head & 0x80)
        if n > 8:
            raise ValueError(f"not a dlib integer at byte {self.pos}")
        v = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -v if neg else v

    def float(self) -> float:
        mantissa = self.int()
        return float(np.ldexp(float(mantissa), self.int()))

    def tensor(self) -> np.ndarray:
        if self.int() != 2:
            raise ValueError(f"unknown dlib tensor version at byte {self.pos}")
        shape = [self.int() for _ in range(4)]
        n = int(np.prod(shape))
        if self.pos + 4 * n > len(self.data):
            raise ValueError(f"a tensor of {n} values runs beyond the end of the file (truncated?)")
        out = np.frombuffer(self.data, "<f4", count=n, offset=self.pos).reshape(shape)
        self.pos += 4 * n
        return out


def read_dat(path: str | Path) -> dict:
    """The weights of the face-recognition ResNet in a .dat file: {"mean": (3,) RGB means,
    "convs": [(filters (out, in, k, k), biases (out,), stride, padding)], "affines": [(scale, shift)],
    "fc": (256, 128)}, in input-to-output order. ValueError when the file is not that network."""
    data = Path(path).read_bytes()
    names = rb"\x01[\x03-\x20]((?:con|affine|fc)_\d*|input_rgb_image_sized)"   # a layer's serialised name
    layers = [(m.group(1).decode(), m.end()) for m in re.finditer(names, data)]
    out: dict = {"convs": [], "affines": [], "fc": None}
    for name, pos in layers:
        try:
            _read_layer(out, name, _Reader(data, pos))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    blocks = sum(n for n, _ in STAGES)
    if "mean" not in out or out["fc"] is None or len(out["convs"]) != 1 + 2 * blocks \
            or len(out["affines"]) != 1 + 2 * blocks:
        raise ValueError(f"{path} is not dlib's face-recognition ResNet ({len(out['convs'])} convolutions)")
    return out


def _read_layer(out: dict, name: str, r: _Reader) -> None:
    """Add one layer's weights, read from just after its name, to `out`."""
    if name == "input_rgb_image_sized":
        out["mean"] = np.array([r.float(), r.float(), r.float()], np.float32)
    elif name.startswith("con_"):
        params = r.tensor().reshape(-1)
        n_out, kh, kw, sy, sx, py, px = (r.int() for _ in range(7))
        if kh != kw or sy != sx or py != px:
            raise ValueError(f"a non-square convolution ({kh}x{kw}, stride {sy}x{sx})")
        n_in = (params.size - n_out) // (n_out * kh * kw)
        # params: (out, in, kh, kw) filters, then one bias per output channel
        filters = params[:n_out * n_in * kh * kw].reshape(n_out, n_in, kh, kw)
        out["convs"].append((filters, params[n_out * n_in * kh * kw:], sy, py))
    elif name.startswith("affine_"):
        params = r.tensor().reshape(-1)
        k = params.size // 2                  # (k,) scales then (k,) shifts
        out["affines"].append((params[:k], params[k:]))
    else:
        n_outputs, n_inputs = r.int(), r.int()
        params = r.tensor()
        if params.shape[0] != n_inputs or params.shape[1] != n_outputs:
            raise ValueError(f"a fully connected layer with a bias or of shape {params.shape}")
        out["fc"] = params.reshape(n_inputs, n_outputs)


def _add_over_overlap(a, b):
    """dlib's add_prev: a + b where they overlap, in a zero tensor of the larger shape (N, C, H, W)."""
    import torch

    shape = [max(x, y) for x, y in zip(a.shape, b.shape)]
    if list(a.shape) == shape and list(b.shape) == shape:
        return a + b
    out = torch.zeros(shape, dtype=a.dtype)
    out[:, :a.shape[1], :a.shape[2], :a.shape[3]] += a
    out[:, :b.shape[1], :b.shape[2], :b.shape[3]] += b
    return out


class DlibResNet:
    """`embed(chips)`: (N, 150, 150, 3) uint8 RGB face chips (dlib's `get_face_chip`, 0.25 padding) ->
    (N, 128) float32 descriptors, as dlib computes them (no jitter)."""

    def __init__(self, path: str | Path):
        import torch

        w = read_dat(path)
        t = torch.from_numpy
        self.mean = t(w["mean"].copy()).view(1, 3, 1, 1)
        self.convs = [(t(f.copy()), t(b.copy()), s, p) for f, b, s, p in w["convs"]]
        self.affines = [(t(g.copy()).view(1, -1, 1, 1), t(b.copy()).view(1, -1, 1, 1)) for g, b in w["affines"]]
        self.fc = t(w["fc"].copy())

    def _conv_affine(self, x, i: int):
        import torch.nn.functional as F

        f, b, stride, pad = self.convs[i]
        g, beta = self.affines[i]
        return F.conv2d(x, f, b, stride=stride, padding=pad) * g + beta

    def forward(self, x):
        """x: (N, 3, 150, 150) float, 0-255 RGB -> (N, 128)."""
        import torch
        import torch.nn.functional as F

        x = (x - self.mean) / 256.0                                   # dlib's input_rgb_image normalisation
        x = F.max_pool2d(torch.relu(self._conv_affine(x, 0)), 3, 2)   # (N, 32, 35, 35)
        i = 1
        for blocks, down in STAGES:
            for j in range(blocks):
                y = torch.relu(self._conv_affine(x, i))
                y = self._conv_affine(y, i + 1)
                i += 2
                shortcut = F.avg_pool2d(x, 2, 2) if (down and j == 0) else x
                x = torch.relu(_add_over_overlap(y, shortcut))
        return x.mean(dim=(2, 3)) @ self.fc                            # (N, 256) -> (N, 128)

    def embed(self, chips) -> np.ndarray:
        import torch

        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1:] != (CHIP, CHIP, 3):
            raise ValueError(f"face chips must be (N, {CHIP}, {CHIP}, 3), got {chips.shape}")
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()  # (N, 3, 150, 150)
            return self.forward(x).numpy().astype(np.float32)
