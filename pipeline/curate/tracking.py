"""Tracking: the dominant face through a video, from sparse detections to spans with their reasons.

Sparse detection with bisection (FaceScanner): the detector (~5 ms a call on CPU, whatever the frame
size) would alone blow the curation budget at the paper's every-2nd-frame rate, so we detect every
`stride` frames and, only where two neighbouring detections disagree (face lost or found, second
face, jump, size, identity), bisect the gap on the buffered small frames until the change is located
between two adjacent frames. Quiet stretches cost one detection per stride.

What splits a track, and what does not (a handheld camera must not):
- A jump is judged in face sizes and in time: the face centre may move `max_jump_faces` face widths
  (heights, vertically) between two detections plus `max_speed_faces` per second between them. A
  phone selfie's jerks (0.06-0.15 of the frame in two frames, ~0.5 face widths) pass; a face that
  appears a face width away between two frames does not. Steady fast motion never accumulates into a
  jump: it is judged between neighbouring detections, which bisection brings close in time.
- A second face counts only when it is comparable to the main one: at least `multi_face_ratio` of its
  area AND `multi_face_score_ratio` of its detector confidence. A faint poster or a false detection
  at 0.5-0.6 beside a 0.9 face is not a second person; the main face is the largest confident one.
- Smoothing: the box sequence is judged robustly in time. A stretch of at most `max_gap_s` seconds
  whose detections disagree with both sides (a missed detection in motion blur, a box that snapped to
  something else for a frame) while the detections either side of it agree with each other, is a
  glitch: the track continues through it and its detections are left out of the boxes that place the
  crop. A second face is never a glitch: multi-face stretches always split.
- Identity: `identity_changed` is the one "same face?" test (a colour histogram for MediaPipe, ArcFace
  for insightface; another signature can replace it there). Where the cheap signature sees a change,
  bisection locates it between two adjacent frames and the identity embedding (dlib's ResNet, ~0.15 CPU s
  a face) decides at `finish`, for the located pairs only, and only where no shot boundary already
  splits there (`finish(n, settled)`): on the test corpus every such change sat on a cut, where the
  embeddings had cost ~1.5x the whole decode.

`segment` tiles the whole video: every frame ends in exactly one span (a face track) or one rejected
stretch, and every span records why it starts and why it ends.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from pipeline.curate.faces import FacesConfig, signature_distance


@dataclass
class Det:
    state: str                                  # "ok" | "none" | "multi" | "small"
    box: tuple[float, float, float, float] | None = None   # main face x, y, w, h relative to the frame
    faces: int = 0                              # detections in the frame (weak ones included)
    sig: np.ndarray | None = None               # identity signature of the main face
    sig_kind: str = "hs-histogram"              # "hs-histogram" | "arcface": which distance/threshold applies
    score: float = 0.0                          # detector confidence of the main face
    time: float = 0.0                           # seconds from the video's first frame (its timestamp)
    ident: object = None                        # pipeline.curate.identity.FaceIdentity where one was computed


def main_face(faces: list, cfg: FacesConfig) -> tuple[object | None, list]:
    """(main face, comparable rivals) among detections (x, y, w, h, score): the main face is the
    largest one detected with at least multi_face_score_ratio of the best confidence; a rival is
    another such face with at least multi_face_ratio of the main face's area."""
    if not faces:
        return None, []
    best = max(float(f[4]) for f in faces)
    strong = sorted((f for f in faces if float(f[4]) >= cfg.multi_face_score_ratio * best),
                    key=lambda f: -f[2] * f[3])
    main = strong[0]
    return main, [f for f in strong[1:] if f[2] * f[3] >= cfg.multi_face_ratio * main[2] * main[3]]


class FaceScanner:
    """Consumer of the decode pass (decodepass.Consumer: `update(frame)` for every frame, then
    `finish(n)` -> {frame: Det}). `shots`: the video's scenes.ShotDetector, finished before this scanner
    (earlier in the consumer list): an identity change it already splits needs no embedding."""

    name = "faces"

    def __init__(self, cfg: FacesConfig, detector, src_width: float, identity=None, shots=None):
        self.cfg, self.detector, self.src_width = cfg, detector, src_width
        self.identity = identity    # a face-identity encoder (pipeline.curate.identity): decides "identity"
        self.shots = shots
        self.dets: dict[int, Det] = {}
        self.calls = 0
        self.detect_s = 0.0         # CPU seconds in detector calls (the bench's "face detection")
        self.identity_s = 0.0       # ... in identity embeddings (the bench counts them as identity)
        self.identity_faces = 0     # faces embedded
        self._buf: dict[int, tuple[np.ndarray, float]] = {}
        self._prev: int | None = None
        self._pairs: list[tuple[int, int]] = []     # adjacent frames the signature says differ: finish() decides
        self._kept: dict[int, np.ndarray] = {}      # their small frames (a few per video; capped)

    def update(self, frame) -> None:
        self._buf[frame.index] = (frame.small, float(getattr(frame, "time", 0.0)))
        if frame.index % max(1, self.cfg.stride) == 0:
            self._anchor(frame.index)

    def sampled_box(self, index: int, every: int):
        """The tracked face's box on frame `index` when it is a sample frame (a multiple of `every`) with a
        face tracked there ("ok"), else None: what the samplers after the scanner measure."""
        if index % every:
            return None
        d = self.dets.get(index)
        return d.box if d is not None and d.state == "ok" else None

    def finish(self, num_frames: int, settled=None) -> dict[int, Det]:
        """All detections. `settled(frame)`: True where a shot boundary splits the video anyway (a cut,
        a transition window's frames): an identity change located there needs no embedding. Default: the
        shot detector's, when one was given."""
        if settled is None and self.shots is not None:
            settled = self.shots.settled
        if num_frames and (num_frames - 1) not in self.dets and (num_frames - 1) in self._buf:
            self._anchor(num_frames - 1)
        self._buf.clear()
        for a, b in self._pairs:
            if settled is None or not settled(b):
                self._embed(a, self._kept[a])
                self._embed(b, self._kept[b])
        self._pairs, self._kept = [], {}
        return self.dets

    MAX_KEPT = 64   # small frames kept for finish() (~7 MB at 256x144); beyond it a pair is embedded at once

    def _embed(self, k: int, img: np.ndarray) -> None:
        d = self.dets[k]
        if d.ident is None:
            t0 = time.process_time()
            d.ident = self.identity.identity(self.identity.faces(img, [d.box])[0])
            self.identity_s += time.process_time() - t0
            self.identity_faces += 1

    def _anchor(self, i: int) -> None:
        self._detect(i)
        if self._prev is not None:
            self._refine(self._prev, i)
        self._prev = i
        self._buf = {i: self._buf[i]}  # frames before an anchor are never needed again

    def _detect(self, i: int) -> Det:
        img, t = self._buf[i]
        t0 = time.process_time()
        faces = self.detector(img)
        self.detect_s += time.process_time() - t0
        self.calls += 1
        c = self.cfg
        main, rivals = main_face(faces, c)
        if main is None:
            d = Det("none", time=t)
        else:
            box, score = tuple(float(v) for v in main[:4]), float(main[4])
            if rivals:
                d = Det("multi", box, len(faces), score=score, time=t)
            elif box[2] * self.src_width < c.min_face_px:
                d = Det("small", box, len(faces), score=score, time=t)
            else:
                d = Det("ok", box, len(faces), self.detector.signature(img, main), self.detector.sig_kind,
                        score, t)
        self.dets[i] = d
        return d

    def _refine(self, a: int, b: int) -> None:
        """Bisect a disagreeing gap until the change lies between two adjacent frames."""
        why = disagreement(self.dets[a], self.dets[b], self.cfg)
        if why == "identity" and self.identity is not None and b - a <= 1:
            # the cheap signature located a change: the identity embeddings decide, at finish() unless the
            # kept frames would grow past MAX_KEPT (then now, while the frames are still buffered)
            if len(self._kept) + 2 > self.MAX_KEPT:
                self._embed(a, self._buf[a][0])
                self._embed(b, self._buf[b][0])
            else:
                self._pairs.append((a, b))
                self._kept[a], self._kept[b] = self._buf[a][0], self._buf[b][0]
        if b - a <= 1 or not why:
            return
        m = (a + b) // 2
        self._detect(m)
        self._refine(a, m)
        self._refine(m, b)


def identity_changed(d1: Det, d2: Det, cfg: FacesConfig) -> bool:
    """The one "is it still the same face?" test between two detections of a track. Signatures of
    different kinds are not comparable (and never split). A face-identity embedding, where both have
    one, overrules the signature."""
    if d1.ident is not None and d2.ident is not None:
        return not d1.ident.same_person(d2.ident)
    if d1.sig is None or d2.sig is None or d1.sig_kind != d2.sig_kind:
        return False
    limit = cfg.arcface_identity_threshold if d1.sig_kind == "arcface" else cfg.identity_threshold
    return signature_distance(d1.sig, d2.sig, d1.sig_kind) > limit


def disagreement(d1: Det, d2: Det, cfg: FacesConfig) -> str:
    """Why two detections cannot belong to one track ('' if they can): "state" (face found/lost,
    second face, too small), "jump" (moved further than the time between them allows, in face sizes),
    "scale" (its size changed by more than max_scale_change) or "identity"."""
    if d1.state != d2.state:
        return "state"
    if d1.state != "ok":
        return ""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = d1.box, d2.box
    # centre travel in face sizes: x in face widths, y in face heights (aspect-free, SAR-free)
    move = max(abs(x1 + w1 / 2 - x2 - w2 / 2) / ((w1 + w2) / 2), abs(y1 + h1 / 2 - y2 - h2 / 2) / ((h1 + h2) / 2))
    if move > cfg.max_jump_faces + cfg.max_speed_faces * abs(d2.time - d1.time):
        return "jump"
    if max(w1 / w2, w2 / w1) > cfg.max_scale_change:
        return "scale"
    if identity_changed(d1, d2, cfg):
        return "identity"
    return ""


# ---------------------------------------------------------------- segmentation

REASON_OF_STATE = {"none": "no_face", "multi": "multi_face", "small": "small_face"}


@dataclass
class Span:
    """A face track's stretch [start, end) and why it begins and ends (see manifests/README.md:
    video_start, video_end, cut, no_face, multi_face, small_face, jump, scale, identity; the stage adds
    drift and max_duration)."""
    start: int
    end: int
    frames: list[int]                           # detections whose boxes place the crop (glitches left out)
    start_split: str
    end_split: str


@dataclass
class _Piece:
    state: str
    dets: list[int] = field(default_factory=list)     # detection frames, in order
    used: list[int] = field(default_factory=list)     # ... those that count for the crop
    start: int = 0
    end: int = 0                                      # exclusive: the next piece's first detection


def _pieces(dets: dict[int, Det], cfg: FacesConfig) -> tuple[list[_Piece], list[str]]:
    """Maximal runs of agreeing neighbouring detections, tiling [first, last + 1), and the reason
    between each two (the disagreement, or the state change)."""
    frames = sorted(dets)
    pieces: list[_Piece] = []
    why: list[str] = []
    for k, f in enumerate(frames):
        prev = dets[frames[k - 1]] if k else None
        reason = disagreement(prev, dets[f], cfg) if prev is not None else "start"
        if reason:
            if pieces:
                pieces[-1].end = f
                why.append(reason)
            pieces.append(_Piece(dets[f].state, start=f))
        pieces[-1].dets.append(f)
        pieces[-1].used.append(f)
    if pieces:
        pieces[-1].end = frames[-1] + 1
    return pieces, why


def _bridge(pieces: list[_Piece], why: list[str], dets: dict[int, Det], cfg: FacesConfig):
    """Smoothing: a short glitch between two agreeing ok pieces joins them (module docstring)."""
    out, reasons = [pieces[0]], []
    k = 1
    while k < len(pieces):
        p = pieces[k]
        a = out[-1]
        b = pieces[k + 1] if k + 1 < len(pieces) else None
        short = b is not None and dets[b.dets[0]].time - dets[p.dets[0]].time <= cfg.max_gap_s
        if (short and a.state == "ok" and b.state == "ok" and p.state != "multi"
                and not disagreement(dets[a.used[-1]], dets[b.dets[0]], cfg)):
            a.dets += p.dets + b.dets
            a.used += b.used                  # the glitch's own boxes do not place the crop
            a.end = b.end
            k += 2
            continue
        out.append(p)
        reasons.append(why[k - 1])
        k += 1
    return out, reasons


def segment(dets: dict[int, Det], cuts: list[int], cfg: FacesConfig) -> tuple[list[Span], list[tuple[int, int, str]]]:
    """Face tracks split at scene cuts, and the rejected stretches, together tiling frames
    [0, last detection + 1) (the scanner always detects the first and the last frame).

    Returns (spans, rejected): rejected = [(start, end, reason)] for no / multiple / tiny faces.
    """
    if not dets:
        return [], []
    pieces, why = _pieces(dets, cfg)
    pieces, why = _bridge(pieces, why, dets, cfg)
    cut_list = sorted(set(cuts))
    # a change found right at a scene cut is the cut's doing
    why = ["cut" if pieces[k + 1].start in cut_list else w for k, w in enumerate(why)]
    name = [REASON_OF_STATE.get(p.state, "") for p in pieces]
    spans: list[Span] = []
    rejected: list[tuple[int, int, str]] = []
    for k, p in enumerate(pieces):
        if p.state != "ok":
            rejected.append((p.start, p.end, name[k]))
            continue
        # why the track begins/ends: a cut, else the rejected stretch beside it, else the disagreement
        begin = "video_start" if k == 0 else ("cut" if why[k - 1] == "cut" else name[k - 1] or why[k - 1])
        finish = "video_end" if k == len(pieces) - 1 else ("cut" if why[k] == "cut" else name[k + 1] or why[k])
        edges = [p.start] + [c for c in cut_list if p.start < c < p.end] + [p.end]
        for j, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
            inside = [f for f in p.used if a <= f < b] or [min(p.used, key=lambda f: min(abs(f - a), abs(f - b + 1)))]
            spans.append(Span(a, b, inside, begin if j == 0 else "cut", finish if j == len(edges) - 2 else "cut"))
    return spans, rejected


def split_to_fit(span: Span, fits) -> list[tuple[int, int, list[int]]]:
    """A span cut where its face drifts further than one fixed crop can hold (a handheld camera's
    wander over seconds): greedily the longest run of detections from the start for which
    `fits(frames)` (one crop holds all their boxes), then the next. A boundary lies halfway between
    the last detection that fits and the first that does not. Returns [(start, end, frames)].
    `fits` is not monotone (the crop's side follows the median box, so a run that fails may fit
    again once more detections move the median): the longest fitting run is searched from the end,
    so a span that fits as a whole is never cut."""
    frames = span.frames
    out, a, i = [], span.start, 0
    while i < len(frames):
        j = len(frames)
        while j > i + 1 and not fits(frames[i:j]):
            j -= 1
        b = span.end if j == len(frames) else (frames[j - 1] + frames[j] + 1) // 2
        out.append((a, b, frames[i:j]))
        a, i = b, j
    return out
