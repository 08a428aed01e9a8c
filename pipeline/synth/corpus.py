"""Test corpus: short MP4 videos made from REAL face photos that ship inside installed packages.

Photos: `skimage.data.astronaut()` (Eileen Collins) and matplotlib's `grace_hopper.jpg`; more
"identities" are mirrored, colour-shifted variants of them (same person, different look).
Each face is cut out with a soft elliptical mask, placed on a moving background, moved smoothly
(translation, scale, in-plane rotation) and made to change expression: a local, fold-free
displacement field magnifies the mouth region (mouth opens) and squashes the eye regions
(blinks). The field is centred on MediaPipe face-mesh points found once per photo, so the
landmarks of the rendered face really move.

Every video gets a ground-truth JSON (display coordinates, half-open [start, end) frame intervals):
  cuts (first frame of each new scene), scenes, no_face, multi_face, blur, small_face,
  face_box per frame (largest face: extent of its 478 mesh points, or null), face_boxes (all faces),
  expression (mouth / eyes curves in [0, 1]).
Face checks (`face_check_specs`, `face_check_truth`): scenes of face-like non-faces and turned
heads (pipeline/synth/lookalikes.py) and tightly framed talking heads add `lookalike` (frames showing
a face-like non-face and no real face: there face_box is null, face_boxes empty, and they are not
`no_face`), `yaw_deg` (per scene: how far its faces are turned) and `profile` (frames whose faces
are turned more than PROFILE_DEG). Face boxes are clipped to the frame (a face framed tighter than
the frame shows only in part).
Edits (`transition_specs`, `generate_edit`) join shots with cross-dissolves and fades through black
(pipeline/synth/transitions.py) and add `transitions` [{start, end, kind}]: the frames of each window.
Everything is seeded; the same seed gives the same JSON bytes and the same video bytes.
The heads (photo cut-outs, expression warps) and backgrounds are in pipeline/synth/heads.py.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline.synth.capture import Capture, generate_captured
from pipeline.synth.heads import background, expressed, expressed_mesh, head
from pipeline.synth.lookalikes import is_lookalike, yaw_of
from pipeline.synth.transitions import Transition, edit_truth, mix, mix_plan

GT_VERSION = 1
SMALL_FACE = 0.15   # a face whose box height is below this fraction of the frame height is "small"
PROFILE_DEG = 45.0  # a face turned further than this is not "roughly frontal"


@dataclass
class Scene:
    frames: int
    faces: tuple[str, ...]          # identity names; () = no face, 2+ = multi-face
    bg: str
    face_h: float = 0.38            # face box height / frame height
    blur: float = 0.0               # Gaussian sigma / frame height (0 = sharp)


@dataclass
class VideoSpec:
    name: str
    width: int                      # display size
    height: int
    fps: float
    scenes: list[Scene]
    rotation: int = 0               # display-matrix degrees (counter-clockwise), as PyAV reports
    audio: bool = False
    crf: int = 22
    capture: Capture | None = None  # handheld, weak background face, SAR, VFR, lying header (capture.py)


def default_specs() -> list[VideoSpec]:
    S = Scene
    return [
        VideoSpec("talk_360p30", 640, 360, 30, [S(60, ("astronaut",), "brick"), S(60, ("hopper",), "sunset")]),
        VideoSpec("cuts_360p25", 640, 360, 25, [S(40, ("astronaut_warm",), "coffee"), S(25, (), "gravel"),
                                                S(40, ("hopper",), "noise"), S(30, ("astronaut",), "grass")]),
        VideoSpec("multi_360p24", 640, 360, 24, [S(36, ("hopper",), "sunset"),
                                                 S(48, ("astronaut", "hopper_cool"), "brick", face_h=0.34),
                                                 S(36, ("astronaut",), "coffee")]),
        VideoSpec("blur_small_360p30", 640, 360, 30, [S(45, ("astronaut",), "sunset"),
                                                      S(45, ("hopper",), "brick", blur=0.016),
                                                      S(45, ("astronaut_warm",), "grass", face_h=0.11)]),
        VideoSpec("portrait_360x640_25", 360, 640, 25, [S(50, ("hopper",), "noise", face_h=0.24),
                                                        S(40, ("astronaut",), "coffee", face_h=0.22)]),
        VideoSpec("rotated_phone_30", 360, 640, 30, [S(60, ("astronaut",), "grass", face_h=0.22),
                                                     S(45, ("hopper_cool",), "sunset", face_h=0.22)],
                  rotation=270),
        VideoSpec("audio_480p30", 854, 480, 30, [S(75, ("hopper",), "coffee")], audio=True),
        VideoSpec("hd_1080p24", 1920, 1080, 24, [S(40, ("astronaut",), "noise")], crf=26),
    ] + capture_specs() + face_check_specs()


def capture_specs() -> list[VideoSpec]:
    """How footage is filmed and stored (pipeline/synth/capture.py): display sizes; fps = rendering rate."""
    S, V, C = Scene, VideoSpec, Capture
    return [
        # a phone selfie while walking: one face the whole time, the camera shaking and jerking
        V("handheld_selfie_30", 360, 640, 30, [S(150, ("astronaut",), "coffee", face_h=0.24)], capture=C(shake=1.0)),
        # a weak face on the wall behind one person; then two people (comparable faces) in front of it
        V("handheld_poster_25", 640, 360, 25, [S(100, ("astronaut_warm",), "brick"),
                                              S(50, ("hopper", "astronaut"), "grass", face_h=0.34)],
          capture=C(shake=0.5, poster="hopper_cool")),
        # PAL-style anamorphic: stored 352x288, shown 512x288
        V("sar16x11_25", 512, 288, 25, [S(60, ("hopper",), "sunset", face_h=0.42),
                                       S(40, ("astronaut",), "grass", face_h=0.42)], capture=C(sar=(16, 11))),
        # stored 384x360, shown 360x360
        V("sar15x16_30", 360, 360, 30, [S(60, ("astronaut_cool",), "noise", face_h=0.4)], capture=C(sar=(15, 16))),
        # rendered at 60 fps, stored with 1/30 s and 1/15 s frame durations (mean 22.5 fps)
        V("vfr_phone_60", 640, 360, 60, [S(192, ("hopper_warm",), "coffee"), S(96, ("astronaut",), "brick")],
          capture=C(steps=(2, 2, 4))),
        # frames at 25 fps in an AVI whose header says 50
        V("avi_header50_25", 640, 360, 25, [S(60, ("astronaut_warm",), "grass"), S(40, ("hopper",), "sunset")],
          capture=C(container="avi", header_fps=50.0)),
    ]


def face_check_specs() -> list[VideoSpec]:
    """What must not pass as a frontal human face, and tight framing that must not pad."""
    S = Scene
    return [
        # a drawn face, a real one, a cat, the drawing on a monitor (pipeline/synth/lookalikes.py)
        VideoSpec("lookalikes_360p25", 640, 360, 25, [S(50, ("cartoon",), "brick", face_h=0.5),
                                                      S(50, ("hopper",), "coffee"), S(50, ("cat",), "grass"),
                                                      S(50, ("cartoon_screen",), "sunset", face_h=0.55)]),
        # one face turned 60 degrees each way and one turned 25 (roughly frontal: kept)
        VideoSpec("turned_360p30", 640, 360, 30, [S(50, ("astronaut_yaw60",), "grass"),
                                                  S(50, ("hopper_yaw25",), "brick"),
                                                  S(50, ("astronaut_yaw-60",), "coffee")]),
        # 1:1 talking heads framed tightly (the paper's 0.45 side would pad), then too tightly for the band
        VideoSpec("tight_512p25", 512, 512, 25, [S(75, ("hopper",), "coffee", face_h=0.5),
                                                 S(50, ("astronaut_warm",), "sunset", face_h=0.8)]),
    ]


def face_check_truth(spec: VideoSpec, gt: dict) -> dict:
    """`gt` with the face-check keys (module docstring): lookalike frames stop being faces."""
    fake = [bool(sc.faces) and all(is_lookalike(n) for n in sc.faces) for sc in spec.scenes for _ in range(sc.frames)]
    yaw = [max((abs(yaw_of(n)) for n in sc.faces), default=0.0) for sc in spec.scenes]
    turned = [y > PROFILE_DEG for y, sc in zip(yaw, spec.scenes) for _ in range(sc.frames)]
    W, H = spec.width, spec.height

    def visible(b):   # a face framed tighter than the frame (tight_512p25) is boxed where it shows
        return [max(b[0], 0.0), max(b[1], 0.0), min(b[2], float(W)), min(b[3], float(H))]

    face_box = [None if f or b is None else visible(b) for f, b in zip(fake, gt["face_box"])]
    return {**gt, "face_box": face_box,
            "face_boxes": [[] if f else [visible(x) for x in b] for f, b in zip(fake, gt["face_boxes"])],
            "lookalike": _intervals(fake), "profile": _intervals(turned),
            "yaw_deg": yaw, "small_face": _intervals([bool(b) and (b[3] - b[1]) < SMALL_FACE * spec.height
                                                      for b in face_box])}


# ---------------------------------------------------------------- motion
def _smooth(rng: np.random.Generator, n: int, fps: float, amp: float, hz=(0.15, 0.5)) -> np.ndarray:
    """Sum of two low-frequency sinusoids with random phases: smooth, bounded by amp."""
    t = np.arange(n) / fps
    out = np.zeros(n)
    for _ in range(2):
        f, ph = rng.uniform(*hz), rng.uniform(0, 2 * np.pi)
        out += 0.5 * amp * np.sin(2 * np.pi * f * t + ph)
    return out


def _expression(rng: np.random.Generator, n: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(n) / fps
    f, ph = rng.uniform(0.6, 1.1), rng.uniform(0, 2 * np.pi)
    mouth = 0.5 - 0.5 * np.cos(2 * np.pi * f * t + ph)
    eyes = np.zeros(n)
    blink_t = rng.uniform(0.2, 0.8)
    while blink_t < t[-1] + 0.3:                      # raised-cosine blinks of 0.3 s
        d = np.abs(t - blink_t) / 0.15
        eyes = np.maximum(eyes, np.where(d < 1, 0.5 + 0.5 * np.cos(np.pi * np.minimum(d, 1)), 0))
        blink_t += rng.uniform(1.0, 1.8)
    return mouth, eyes


def _render(spec: VideoSpec, seed: int):
    """Yield (display rgb uint8, boxes, mouth, eyes) per frame; deterministic in (spec, seed)."""
    import cv2

    rng = np.random.default_rng([seed, *spec.name.encode()])
    W, H = spec.width, spec.height
    for sc in spec.scenes:
        bg = background(sc.bg, W, H, rng)
        pan = rng.uniform(-1, 1, 2) * [bg.shape[1] - W, bg.shape[0] - H] / sc.frames / 2
        mouth, eyes = _expression(rng, sc.frames, spec.fps)
        n_faces = len(sc.faces)
        tracks = []
        for k, ident in enumerate(sc.faces):
            hd = head(ident)
            base = sc.face_h * H / (hd.box[3] - hd.box[1])
            slot_x = W * (k + 1) / (n_faces + 1) if n_faces > 1 else W * rng.uniform(0.4, 0.6)
            tracks.append((hd, base, slot_x, H * rng.uniform(0.45, 0.55),
                           _smooth(rng, sc.frames, spec.fps, 0.10 * W / max(n_faces, 1)),
                           _smooth(rng, sc.frames, spec.fps, 0.08 * H),
                           _smooth(rng, sc.frames, spec.fps, 0.25), _smooth(rng, sc.frames, spec.fps, 24.0)))
        for i in range(sc.frames):
            ox = int(round((bg.shape[1] - W) / 2 + pan[0] * (i - sc.frames / 2)))
            oy = int(round((bg.shape[0] - H) / 2 + pan[1] * (i - sc.frames / 2)))
            frame = bg[oy:oy + H, ox:ox + W].copy()        # uint8; blending happens in float per ROI
            boxes = []
            for hd, base, sx, sy, dx, dy, ds, dr in tracks:
                s, ang = base * (1 + ds[i]), math.radians(dr[i])
                fc = (hd.box[:2] + hd.box[2:]) / 2
                half = s * (hd.box[2:] - hd.box[:2]) / 2 * 1.25   # keep the whole face inside the frame
                tx = float(np.clip(sx + dx[i], half[0], W - half[0]))
                ty = float(np.clip(sy + dy[i], half[1], H - half[1]))
                c, sn = s * math.cos(ang), s * math.sin(ang)
                M = np.array([[c, sn, tx - c * fc[0] - sn * fc[1]], [-sn, c, ty + sn * fc[0] - c * fc[1]]],
                             np.float32)
                rgb, alpha = expressed(hd, mouth[i], eyes[i])
                # Warp only into the region the patch lands on (a full-frame warp costs 10x more).
                P = rgb.shape[0]
                corners = np.float32([[0, 0], [P, 0], [0, P], [P, P]]) @ M[:, :2].T + M[:, 2]
                x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
                x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int), [W, H])
                if x1 > x0 and y1 > y0:
                    Mr = M.copy()
                    Mr[:, 2] -= [x0, y0]
                    fg = cv2.warpAffine(rgb, Mr, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)
                    a = cv2.warpAffine(alpha, Mr, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)[..., None]
                    roi = frame[y0:y1, x0:x1].astype(np.float32)
                    frame[y0:y1, x0:x1] = cv2.convertScaleAbs(roi + (fg - roi) * a)
                p = expressed_mesh(hd, mouth[i], eyes[i]) @ M[:, :2].T + M[:, 2]
                boxes.append([round(float(v), 1) for v in (*p.min(0), *p.max(0))])
            if sc.blur:
                frame = cv2.GaussianBlur(frame, (0, 0), sc.blur * H)
            boxes.sort(key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))
            yield frame, boxes, float(mouth[i]), float(eyes[i])


# ---------------------------------------------------------------- encoding
def _encode(path: Path, frames, spec: VideoSpec, seed: int) -> None:
    """H.264 (+ AAC) with PyAV, single-threaded so the bytes do not depend on the machine."""
    import av

    rate = Fraction(spec.fps).limit_denominator(1001)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    with av.open(str(tmp), "w") as c:
        vs = c.add_stream("libx264", rate=rate)
        k = (spec.rotation // 90) % 4
        vs.width, vs.height = (spec.height, spec.width) if k % 2 else (spec.width, spec.height)
        vs.pix_fmt = "yuv420p"
        vs.options = {"crf": str(spec.crf), "preset": "superfast", "threads": "1"}
        vs.codec_context.thread_count = 1
        if spec.audio:
            aus = c.add_stream("aac", rate=48000, layout="mono")
            arng, a_done = np.random.default_rng(seed), 0
        for i, (img, mouth) in enumerate(frames):
            # Store the picture so that rotating it by `rotation` degrees CCW gives the display.
            stored = np.ascontiguousarray(np.rot90(img, k=-k)) if k else img
            for pkt in vs.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                c.mux(pkt)
            while spec.audio and a_done < (i + 1) / spec.fps * 48000:
                t = (a_done + np.arange(1024)) / 48000
                wave = (0.05 + 0.3 * mouth) * np.sin(2 * np.pi * 220 * t) + 0.01 * arng.standard_normal(1024)
                af = av.AudioFrame.from_ndarray(wave.astype(np.float32)[None], format="fltp", layout="mono")
                af.sample_rate, af.pts = 48000, a_done
                for pkt in aus.encode(af):
                    c.mux(pkt)
                a_done += 1024
        for pkt in vs.encode():
            c.mux(pkt)
        if spec.audio:
            for pkt in aus.encode():
                c.mux(pkt)
    if spec.rotation:
        # libavformat no longer honours a "rotate" tag; the ffmpeg CLI writes a real display matrix.
        import imageio_ffmpeg

        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-display_rotation", str(spec.rotation),
               "-i", str(tmp), "-c", "copy", "-fflags", "+bitexact", str(path)]
        subprocess.run(cmd, check=True)
        tmp.unlink()
    else:
        tmp.replace(path)


def _intervals(flags: list[bool]) -> list[list[int]]:
    out, start = [], None
    for i, f in enumerate([*flags, False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            out.append([start, i])
            start = None
    return out


def generate_video(spec: VideoSpec, out_dir: str | Path, seed: int = 0) -> dict:
    if spec.capture is not None:
        return generate_captured(spec, out_dir, seed, _render,
                                 lambda *a, **k: face_check_truth(spec, ground_truth(*a, **k)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    boxes_all, mouth, eyes, flags = [], [], [], []

    def frames():
        for k, sc in enumerate(spec.scenes):
            flags.extend([k] * sc.frames)
        for img, boxes, m, e in _render(spec, seed):
            boxes_all.append(boxes)
            mouth.append(m)
            eyes.append(e)
            yield img, m

    _encode(out_dir / f"{spec.name}.mp4", frames(), spec, seed)
    gt = face_check_truth(spec, ground_truth(spec, seed, f"{spec.name}.mp4", flags, boxes_all, mouth, eyes))
    (out_dir / f"{spec.name}.json").write_text(json.dumps(gt, sort_keys=True, separators=(",", ":")))
    return {**gt, "path": str(out_dir / gt["file"])}


def ground_truth(spec: VideoSpec, seed: int, file: str, scene_of: list[int], boxes_all: list, mouth: list[float],
                 eyes: list[float]) -> dict:
    """The ground-truth record of one video from its frames' scene index, face boxes and expression
    (pipeline/synth/capture.py adds its timing and geometry fields to it)."""
    flags = [spec.scenes[k] for k in scene_of]
    starts = [0] + [i for i in range(1, len(scene_of)) if scene_of[i] != scene_of[i - 1]] + [len(scene_of)]
    return {
        "version": GT_VERSION, "name": spec.name, "file": file, "seed": seed,
        "fps": spec.fps, "num_frames": len(flags), "width": spec.width, "height": spec.height,
        "rotation": spec.rotation, "has_audio": spec.audio, "duration_s": round(len(flags) / spec.fps, 4),
        "cuts": starts[1:-1],
        "scenes": [{"start": s, "end": e, "faces": list(sc.faces), "background": sc.bg,
                    "face_h": sc.face_h, "blur_sigma": round(sc.blur * spec.height, 2)}
                   for s, e, sc in zip(starts, starts[1:], [flags[s] for s in starts[:-1]])],
        "no_face": _intervals([not sc.faces for sc in flags]),
        "multi_face": _intervals([len(sc.faces) >= 2 for sc in flags]),
        "blur": _intervals([sc.blur > 0 for sc in flags]),
        "small_face": _intervals([bool(b) and (b[0][3] - b[0][1]) < SMALL_FACE * spec.height
                                  for b in boxes_all]),
        "face_box": [b[0] if b else None for b in boxes_all],
        "face_boxes": boxes_all,
        "expression": {"mouth": [round(m, 4) for m in mouth], "eyes": [round(e, 4) for e in eyes]},
    }


# ---------------------------------------------------------------- edits: shots joined by gradual transitions
@dataclass
class EditSpec:
    name: str
    width: int
    height: int
    fps: float
    shots: list[Scene]              # Scene.frames = frames the shot is shown alone (outside transitions)
    transitions: list[Transition]   # one between each pair of neighbouring shots
    crf: int = 22


def transition_specs() -> list[EditSpec]:
    """Dissolves of 8-15 frames and fades through black between different people at 23.976 and
    60 fps; lengths, positions and content vary so that no threshold fits one video."""
    S, T, ntsc = Scene, Transition, 24000 / 1001
    return [
        EditSpec("dissolves_23976", 640, 360, ntsc,
                 [S(42, ("astronaut",), "brick"), S(37, ("hopper",), "sunset"), S(35, ("astronaut_warm",), "coffee"),
                  S(46, ("hopper_cool",), "grass"), S(36, ("astronaut",), "noise")],
                 [T("dissolve", 12), T("cut"), T("dissolve", 8), T("fade", 14, black=2)]),
        EditSpec("fades_60", 480, 270, 60,
                 [S(80, ("hopper",), "coffee"), S(66, ("astronaut_warm",), "brick", face_h=0.3),
                  S(40, (), "grass"), S(72, ("hopper_cool",), "sunset", face_h=0.45), S(64, ("astronaut",), "gravel")],
                 [T("fade", 15), T("dissolve", 15), T("dissolve", 11), T("fade", 24, black=6)]),
        EditSpec("dissolve_portrait_23976", 270, 480, ntsc,
                 [S(34, ("hopper_cool",), "noise", face_h=0.22), S(30, ("astronaut",), "grass", face_h=0.24),
                  S(38, ("hopper",), "brick", face_h=0.2), S(30, ("astronaut_warm",), "sunset", face_h=0.23)],
                 [T("dissolve", 10), T("fade", 9, black=1), T("dissolve", 14)]),
    ]


def generate_edit(spec: EditSpec, out_dir: str | Path, seed: int = 0) -> dict:
    """Each shot rendered as a one-scene video of its own (own seeded motion), mixed per mix_plan.
    Ground truth as generate_video's, plus `transitions`; `cuts` are the hard cuts, `scenes` the
    shots' pure frames; in a mixed frame `face_boxes` holds the faces of both shots and `face_box`
    the largest face of the heavier one (None on black)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = mix_plan([sh.frames for sh in spec.shots], spec.transitions)
    need = [1 + max(f for p in plan for k2, f, _ in p if k2 == k) for k in range(len(spec.shots))]
    shots = [_render(VideoSpec(f"{spec.name}.shot{k}", spec.width, spec.height, spec.fps,
                               [Scene(need[k], sh.faces, sh.bg, sh.face_h, sh.blur)]), seed)
             for k, sh in enumerate(spec.shots)]
    shown: list[list] = [[] for _ in spec.shots]      # frames rendered so far per shot (generators run in order)
    face_box, boxes_all, mouth, eyes = [], [], [], []

    def frames():
        for parts in plan:
            for k, f, _ in parts:
                while len(shown[k]) <= f:
                    shown[k].append(next(shots[k]))
            got = [(shown[k][f], w) for k, f, w in parts]
            for k, f, _ in parts:       # frames before the ones in use are never needed again
                shown[k][:f] = [None] * f
            lead = max(got, key=lambda g: g[1])[0] if got else (None, [], 0.0, 0.0)
            boxes_all.append(sorted((b for (_, bx, _, _), _ in got for b in bx),
                                    key=lambda b: -(b[2] - b[0]) * (b[3] - b[1])))
            face_box.append(lead[1][0] if lead[1] else None)
            mouth.append(round(lead[2], 4))
            eyes.append(round(lead[3], 4))
            yield mix([(g[0], w) for g, w in got], (spec.height, spec.width, 3)), lead[2]

    _encode(out_dir / f"{spec.name}.mp4", frames(), VideoSpec(spec.name, spec.width, spec.height, spec.fps, [],
                                                              crf=spec.crf), seed)
    scenes, cuts, windows = edit_truth(plan, spec.transitions)
    n = len(plan)
    gt = {
        "version": GT_VERSION, "name": spec.name, "file": f"{spec.name}.mp4", "seed": seed,
        "fps": spec.fps, "num_frames": n, "width": spec.width, "height": spec.height,
        "rotation": 0, "has_audio": False, "duration_s": round(n / spec.fps, 4),
        "cuts": cuts, "transitions": windows,
        "scenes": [{"start": s, "end": e, "faces": list(spec.shots[k].faces), "background": spec.shots[k].bg,
                    "face_h": spec.shots[k].face_h, "blur_sigma": round(spec.shots[k].blur * spec.height, 2)}
                   for k, s, e in scenes],
        "no_face": _intervals([b is None for b in face_box]),
        "multi_face": _intervals([len(b) >= 2 for b in boxes_all]),
        "blur": _intervals([any(spec.shots[k].blur > 0 for k, _, _ in p) for p in plan]),
        "small_face": _intervals([b is not None and (b[3] - b[1]) < SMALL_FACE * spec.height for b in face_box]),
        "face_box": face_box,
        "face_boxes": boxes_all,
        "expression": {"mouth": mouth, "eyes": eyes},
        # the face-check keys (face_check_truth): edits show only real, frontal faces
        "lookalike": [], "profile": [], "yaw_deg": [0.0] * len(scenes),
    }
    (out_dir / f"{spec.name}.json").write_text(json.dumps(gt, sort_keys=True, separators=(",", ":")))
    return {**gt, "path": str(out_dir / gt["file"])}


def generate_corpus(out_dir: str | Path, seed: int = 0, names: list[str] | None = None) -> list[dict]:
    """Write <name>.mp4 + <name>.json for each (selected) default video; returns the ground truths."""
    specs = [*default_specs(), *transition_specs()]
    if names:
        unknown = set(names) - {s.name for s in specs}
        if unknown:
            raise ValueError(f"unknown corpus video(s): {', '.join(sorted(unknown))}")
        specs = [s for s in specs if s.name in names]
    return [generate_edit(s, out_dir, seed) if isinstance(s, EditSpec) else generate_video(s, out_dir, seed)
            for s in specs]


def load_corpus(out_dir: str | Path) -> list[dict]:
    """Ground truths of an existing corpus directory (with absolute "path")."""
    out = []
    for j in sorted(Path(out_dir).glob("*.json")):
        gt = json.loads(j.read_text())
        out.append({**gt, "path": str(j.with_name(gt["file"]))})
    return out


def ensure_corpus(out_dir: str | Path, seed: int = 0, log=lambda m: None) -> list[dict]:
    """The corpus in out_dir: loaded if a finished one is there (OUT/COMPLETE), else generated and marked finished."""
    out_dir = Path(out_dir)
    gts = load_corpus(out_dir) if (out_dir / "COMPLETE").exists() else []
    if not gts:
        log("generating the test corpus")
        gts = generate_corpus(out_dir, seed)
        (out_dir / "COMPLETE").write_text("ok\n")
    return gts


def make_portraits(out_dir: str | Path, n: int = 8, size: int = 256, seed: int = 0) -> list[Path]:
    """A folder of still portraits (PNG) for the still-image pseudo-clip augmentation.

    Each is an identity's head on a background, face centred at ~0.45 of the width, with a
    seeded random scale, shift and rotation, so no two are pixel-identical.
    """
    import cv2

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    idents = ["astronaut", "hopper", "astronaut_warm", "hopper_cool"]
    bgs = ["sunset", "brick", "coffee", "grass", "noise"]
    paths = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        spec = VideoSpec(f"portrait{i}", size, size, 25, [Scene(1, (idents[i % 4],), bgs[i % 5], face_h=0.5)])
        img = next(_render(spec, int(rng.integers(1 << 30))))[0]
        p = out_dir / f"portrait_{i:03d}.png"
        cv2.imwrite(str(p), img[..., ::-1])
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Generate the face-video test corpus (MP4 + ground-truth JSON).")
    ap.add_argument("--out", required=True, help="output directory, e.g. data/corpus")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", action="append", help="generate only this video (repeatable)")
    ap.add_argument("--portraits", type=int, default=0, help="also write N still portraits to OUT/portraits")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        gts = generate_corpus(args.out, args.seed, args.only)
    except ValueError as e:
        ap.error(str(e))
    for gt in gts:
        print(f"  {gt['name']:<22} {gt['width']}x{gt['height']} {gt['fps']:g} fps {gt['num_frames']:4d} frames  "
              f"cuts={gt['cuts']} no_face={gt['no_face']} multi={gt['multi_face']} blur={gt['blur']} "
              f"small={gt['small_face']}")
    if args.portraits:
        make_portraits(Path(args.out) / "portraits", args.portraits, seed=args.seed)
    stats = {"videos": len(gts), "frames": sum(g["num_frames"] for g in gts), "seconds": round(time.time() - t0, 2),
             "seed": args.seed}
    # Stats go in a sub-folder so that OUT/*.json stays exactly the ground truths.
    (Path(args.out) / "stats").mkdir(exist_ok=True)
    (Path(args.out) / "stats" / "corpus.json").write_text(json.dumps(stats, indent=1))
    print(f"corpus: {stats['videos']} videos, {stats['frames']} frames in {stats['seconds']} s -> {args.out}")


if __name__ == "__main__":
    main()
