"""Test videos for how footage is filmed and stored, not what it shows: a handheld camera, a weak
face in the background, non-square pixels, variable frame rate and a container whose header lies
about the frame rate. The scenes themselves come from corpus.py's renderer; this module films them.

- Handheld (`shake`): the camera wanders (0.2-0.8 Hz), trembles (2-6 Hz) and jerks about 1.4 times
  a second: the picture snaps 0.08-0.15 of the frame in two frames and drifts back (tau 0.4 s), with
  a little roll and a motion blur of a quarter of the frame interval's travel. The scene is rendered on a
  canvas 40% larger than the frame and the camera's window moves over it; the window never lets the
  main face leave the frame (whoever holds the phone keeps the face in view).
- Background face (`poster`): a faded, blurred photo of another person on the wall, fixed in the
  scene (it shakes with it) and hidden behind the main head where they overlap, its face about 0.66
  the main face's height. MediaPipe finds it on ~1 frame in 10 with a confidence of about 0.5-0.7,
  against 0.9+ for the real face: a weak detection, like a real background false positive.
- Non-square pixels (`sar`): rendered in display pixels, stored squeezed to `width / sar` columns with
  the sample aspect ratio in the H.264 stream and the MP4 header, as DV/PAL anamorphic files are.
- Variable frame rate (`steps`): rendered at `fps` and kept every steps[k % len(steps)]-th frame, the
  timestamps those of the kept frames (1/30 s and 1/15 s mixed, like a phone dropping frames).
- Wrong header (`header_fps`): an AVI (MPEG-4 Part 2) whose header says `header_fps` while frames
  come at `fps`; the gaps are empty chunks, so the frames' timestamps are right and the header is not.

Ground truth (on top of corpus.py's): `frame_times` (seconds of every stored frame), `header_fps` (the
rate the container was told; null for VFR),
`sar` [num, den], `coded_width`/`coded_height`, `container`, `camera` (per-frame window shift in
display pixels and roll in degrees, or null) and `background_faces` (per-frame box of the weak face or
null). `fps` is the measured mean rate, (frames - 1) / (last time - first time).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

MARGIN = 0.2          # handheld: the rendered canvas extends this fraction of the frame beyond each side


@dataclass
class Capture:
    """How a corpus VideoSpec's scenes are filmed and stored (defaults: a tripod, square pixels, CFR MP4).
    The spec's width x height is the display size and its fps the rate the scenes are rendered at."""
    shake: float = 0.0                       # handheld camera: 1 = a walking selfie (jerks of 0.08-0.15 frame)
    poster: str = ""                         # identity of a weak background face ("" = none)
    sar: tuple[int, int] = (1, 1)            # stored sample aspect ratio (pixel width : height)
    steps: tuple[int, ...] = ()              # VFR: keep every steps[k % n]-th rendered frame
    container: str = "mp4"                   # "mp4" (H.264) | "avi" (MPEG-4 Part 2, null frames)
    header_fps: float = 0.0                  # avi: the rate the header claims


# ---------------------------------------------------------------- the handheld camera

def handheld_path(rng: np.random.Generator, n: int, fps: float, amount: float) -> np.ndarray:
    """(n, 3): camera window shift x, y (fractions of the frame) and roll (degrees) per frame."""
    t = np.arange(n) / fps

    def tones(band, amp, k):
        out = np.zeros(n)
        for _ in range(k):
            out += amp / k * np.sin(2 * np.pi * rng.uniform(*band) * t + rng.uniform(0, 2 * np.pi))
        return out

    dx = tones((0.2, 0.8), 0.08, 2) + tones((2.0, 6.0), 0.03, 4)        # wander + tremor
    dy = tones((0.2, 0.8), 0.06, 2) + tones((2.0, 6.0), 0.03, 4)
    roll = tones((0.2, 0.8), 3.0, 2) + tones((2.0, 6.0), 0.8, 3)
    jerk = rng.uniform(0.2, 0.6)
    while jerk < t[-1]:                                                   # snap in 2 frames, drift back
        size, ang = rng.uniform(0.08, 0.15), rng.uniform(0, 2 * np.pi)
        profile = np.clip((t - jerk) * fps / 2, 0, 1) * np.exp(-np.maximum(t - jerk - 2 / fps, 0) / 0.4)
        dx += size * math.cos(ang) * profile
        dy += size * math.sin(ang) * profile
        jerk += 0.3 + rng.exponential(0.4)
    return np.stack([dx, dy, roll], 1) * amount


def _motion_blur(img: np.ndarray, vx: float, vy: float):
    """Blur along the image's travel (pixels) during the exposure."""
    import cv2

    length = math.hypot(vx, vy)
    if length < 1.0:
        return img
    r = int(math.ceil(length / 2))
    k = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    for s in np.linspace(-0.5, 0.5, 4 * r + 1):
        x, y = r + s * vx, r + s * vy
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        for xx, yy, w in ((x0, y0, (1 - fx) * (1 - fy)), (x0 + 1, y0, fx * (1 - fy)),
                          (x0, y0 + 1, (1 - fx) * fy), (x0 + 1, y0 + 1, fx * fy)):
            if 0 <= xx <= 2 * r and 0 <= yy <= 2 * r:
                k[yy, xx] += w
    return cv2.filter2D(img, -1, k / k.sum(), borderType=cv2.BORDER_REFLECT)


def _poster(identity: str, face_px: float):
    """A faded, blurred photo of a face: (rgb float32, alpha float32, face box) at the wanted face height."""
    import cv2

    from pipeline.synth.heads import head

    hd = head(identity)
    s = face_px / float(hd.box[3] - hd.box[1])
    side = int(math.ceil(hd.rgb.shape[0] * s))
    rgb = cv2.resize(hd.rgb, (side, side), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(hd.alpha, (side, side), interpolation=cv2.INTER_AREA) * 0.65   # faded print
    grey = rgb.mean(axis=2, keepdims=True)
    rgb = grey + (rgb - grey) * 0.4                                      # washed-out colours
    mean = rgb[alpha > 0.3].mean(0)
    rgb = cv2.GaussianBlur(mean + (rgb - mean) * 0.35, (0, 0), 2.5)      # low contrast, out of focus
    return rgb.astype(np.float32), alpha.astype(np.float32), hd.box * s


def _head_mask(shape, box) -> np.ndarray:
    """Where the main head (corpus heads: an ellipse around the face box) covers the frame."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    x0, y0, x1, y1 = box
    fw, fh = x1 - x0, y1 - y0
    r = ((xx - (x0 + x1) / 2) / (0.9 * fw)) ** 2 + ((yy - (y0 + y1) / 2 + 0.06 * fh) / (0.9 * fh)) ** 2
    return (r <= 1).astype(np.float32)


def _film(spec, seed: int, render):
    """Yield (display rgb, boxes, mouth, eyes, camera, background box) per rendered frame."""
    import cv2

    cap = spec.capture
    W, H = spec.width, spec.height
    if not cap.shake and not cap.poster:
        for img, boxes, m, e in render(spec, seed):
            yield img, boxes, m, e, None, None
        return
    grow = 1 + 2 * MARGIN
    big = replace(spec, width=int(round(W * grow)) // 2 * 2, height=int(round(H * grow)) // 2 * 2,
                  scenes=[replace(sc, face_h=sc.face_h / grow) for sc in spec.scenes])
    n = sum(sc.frames for sc in spec.scenes)
    rng = np.random.default_rng([seed, 7, *spec.name.encode()])
    path = handheld_path(rng, n, spec.fps, cap.shake)
    poster = _poster(cap.poster, 0.25 * H) if cap.poster else None
    # the poster hangs in the upper left of the scene, where the window starts
    p_org = np.array([MARGIN * W + 0.03 * W, MARGIN * H + 0.02 * H]) if poster else None
    prev = None
    for i, (img, boxes, m, e) in enumerate(render(big, seed)):
        frame = img.astype(np.float32)
        bg_box = None
        if poster is not None:
            prgb, palpha, pbox = poster
            x, y = int(p_org[0]), int(p_org[1])
            ph, pw = palpha.shape
            roi = frame[y:y + ph, x:x + pw]
            a = palpha[: roi.shape[0], : roi.shape[1]].copy()
            for b in boxes:   # behind every head of the scene
                local = (b[0] - x, b[1] - y, b[2] - x, b[3] - y)
                a *= 1 - _head_mask(a.shape, local)
            roi += (prgb[: roi.shape[0], : roi.shape[1]] - roi) * a[..., None]
            bg_box = [x + pbox[0], y + pbox[1], x + pbox[2], y + pbox[3]]
        # the window: centred at the canvas centre, moved by the camera, never losing the main face
        cx = big.width / 2 + path[i, 0] * W
        cy = big.height / 2 + path[i, 1] * H
        if boxes:
            b = boxes[0]
            pad_x, pad_y = 0.03 * W, 0.03 * H
            cx = float(np.clip(cx, b[2] + pad_x - W / 2, b[0] - pad_x + W / 2))
            cy = float(np.clip(cy, b[3] + pad_y - H / 2, b[1] - pad_y + H / 2))
        M = cv2.getRotationMatrix2D((cx, cy), float(path[i, 2]), 1.0)
        M[:, 2] += [W / 2 - cx, H / 2 - cy]                      # window centre -> frame centre
        out = cv2.warpAffine(frame, M, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if prev is not None:                                     # travel during a quarter of the interval
            d = (M[:, 2] - prev) * 0.25
            out = _motion_blur(out, float(d[0]), float(d[1]))
        prev = M[:, 2].copy()

        shown = [_place(b, M, W, H) for b in boxes]
        bg = _place(bg_box, M, W, H) if bg_box is not None else None
        if bg is not None and (bg[2] - bg[0]) * (bg[3] - bg[1]) < 0.5 * (bg_box[2] - bg_box[0]) * (bg_box[3] - bg_box[1]):
            bg = None                                            # mostly out of the frame
        camera = [round(cx - big.width / 2, 1), round(cy - big.height / 2, 1), round(float(path[i, 2]), 2)]
        yield cv2.convertScaleAbs(out), shown, m, e, camera, bg


def _place(box, M: np.ndarray, W: int, H: int) -> list[float]:
    """A canvas box seen through the camera (affine M): the extent of its corners, inside the frame."""
    pts = np.array([[box[0], box[1]], [box[2], box[1]], [box[0], box[3]], [box[2], box[3]]]) @ M[:, :2].T + M[:, 2]
    lo, hi = np.clip(pts.min(0), 0, [W, H]), np.clip(pts.max(0), 0, [W, H])
    return [round(float(v), 1) for v in (*lo, *hi)]


# ---------------------------------------------------------------- storing

def _encode(path: Path, frames, spec) -> None:
    """frames: (display rgb, pts in 1/time_base units). Single-threaded: the bytes do not depend on the machine."""
    import av
    import cv2

    cap = spec.capture
    coded_w = int(round(spec.width * cap.sar[1] / cap.sar[0])) // 2 * 2
    tmp = path.with_name(f".{path.name}.tmp")
    with av.open(str(tmp), "w", format=cap.container) as c:
        if cap.container == "avi":
            rate = Fraction(cap.header_fps).limit_denominator(1001)
            vs = c.add_stream("mpeg4", rate=rate)
            vs.bit_rate = 4_000_000
        else:
            rate = Fraction(spec.fps).limit_denominator(1001)
            vs = c.add_stream("libx264", rate=rate)
            vs.options = {"crf": str(spec.crf), "preset": "superfast", "threads": "1"}
        vs.width, vs.height, vs.pix_fmt = coded_w, spec.height, "yuv420p"
        vs.codec_context.thread_count = 1
        vs.codec_context.time_base = Fraction(1, 1) / rate
        if cap.sar != (1, 1):
            vs.codec_context.sample_aspect_ratio = Fraction(*cap.sar)
        for img, pts in frames:
            if coded_w != spec.width:
                img = cv2.resize(img, (coded_w, spec.height), interpolation=cv2.INTER_AREA)
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            f.pts, f.time_base = pts, vs.codec_context.time_base
            for pkt in vs.encode(f):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
    tmp.replace(path)


def generate_captured(spec, out_dir: str | Path, seed: int, render, ground_truth) -> dict:
    """corpus.generate_video for a spec with a `capture`: corpus.py hands in its renderer and ground-truth
    builder (this module sits below corpus.py, which lists these videos among its own)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cap = spec.capture
    file = f"{spec.name}.{cap.container}"
    scene_of = [k for k, sc in enumerate(spec.scenes) for _ in range(sc.frames)]
    keep = np.cumsum([0] + [cap.steps[k % len(cap.steps)] for k in range(len(scene_of))]) if cap.steps \
        else np.arange(len(scene_of) + 1)
    keep = [int(k) for k in keep if k < len(scene_of)]
    # ticks: the stored timestamp unit (1/fps, or 1/header_fps for the AVI whose header lies)
    tick = Fraction(cap.header_fps).limit_denominator(1001) / Fraction(spec.fps).limit_denominator(1001) \
        if cap.header_fps else Fraction(1)
    rec: dict[str, list] = {k: [] for k in ("scene", "boxes", "mouth", "eyes", "camera", "background", "time")}

    def frames():
        wanted = set(keep)
        for i, (img, boxes, m, e, camera, bg) in enumerate(_film(spec, seed, render)):
            if i not in wanted:
                continue
            for k, v in (("scene", scene_of[i]), ("boxes", boxes), ("mouth", m), ("eyes", e), ("camera", camera),
                         ("background", bg), ("time", round(i / spec.fps, 6))):
                rec[k].append(v)
            yield img, int(i * tick)

    _encode(out_dir / file, frames(), spec)
    gt = ground_truth(spec, seed, file, rec["scene"], rec["boxes"], rec["mouth"], rec["eyes"])
    t = rec["time"]
    n = len(t)
    fps = (n - 1) * spec.fps / (keep[n - 1] - keep[0]) if n > 1 else spec.fps
    step = cap.steps[(n - 1) % len(cap.steps)] if cap.steps else 1
    gt.update({
        "fps": round(fps, 6), "duration_s": round(t[-1] + step / spec.fps, 6), "frame_times": t,
        "header_fps": cap.header_fps or (None if cap.steps else spec.fps),      # VFR: no one rate to claim
        "sar": list(cap.sar), "container": cap.container,
        "coded_width": int(round(spec.width * cap.sar[1] / cap.sar[0])) // 2 * 2, "coded_height": spec.height,
        "camera": rec["camera"] if cap.shake else None,
        "background_faces": rec["background"] if cap.poster else None,
    })
    (out_dir / f"{spec.name}.json").write_text(json.dumps(gt, sort_keys=True, separators=(",", ":")))
    return {**gt, "path": str(out_dir / gt["file"])}
