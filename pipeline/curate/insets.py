"""Picture-in-picture: the face is inside a rectangle of its own (a webcam inset over a game or slides,
a video call's tile, a screen filmed in a room), and the crop must not reach past that rectangle.

The frame's own edge is where padding starts (faces.place_crop); an inset's edge is where foreign
content starts, and a crop across it trains the model on a hard border and somebody else's picture.
`find_inset` looks for that rectangle on one small frame (the decode pass's `small`, ~256 px) around
one face box: straight edges between the face and the crop the clip rule would take, found on at
least two sides that meet at a corner, each unbroken along the side of the rectangle they make as
far as the search reaches (a quarter of the crop past its edge; sides not found are beyond it or the
frame's borders). Lines of the inset's own picture are candidates too: the first rectangle that
holds, most sides first, wins. A door jamb or a shelf beside a head is one straight
line, broken by the head or shoulders, or not closed by a second side: not an inset. The verifier
runs it on its sampled frames; a clip has an inset when most of its samples found the same one
(`clip_inset`), and its crop is then placed inside it, with the inset as the frame (padding
counts what lies outside the inset; above filters.max_pad_fraction the clip is rejected as `inset`).

Black bars are the same problem without a rectangle to find: a letterboxed film, a 4:3 or a vertical
video inside a 16:9 frame. `active_area` is the part of one small frame that is not black bars (rows
and columns at the edges whose brightest pixel is below BLACK, as ffmpeg's cropdetect reads them); a
clip's picture is the union over its samples (a bar must be black on every one), and its crop is
placed inside it with what lies outside counted as padding.
"""
from __future__ import annotations

import numpy as np

BLACK = 24.0         # a bar's brightest pixel stays below this luma (cropdetect's default limit)
STEP = 2             # an edge is a luma step across 2 px (a sharp border, downscaled, spreads over ~2)
MIN_STEP = 10.0      # grey levels (0..255) the step must have ...
MIN_RUN = 0.75       # ... along this share of a side (dark hair or clothes on a dark surround break some)
PEAK = 0.5           # ... and this much more of it than the lines 3-5 px away (texture steps everywhere)
MIN_SIDE_PX = 12     # sides shorter than this (small-frame px) are not judged


def luma(small: np.ndarray) -> np.ndarray:
    """float32 luma of an RGB frame (a grey one as it is): what find_inset and active_area read. OpenCV's
    RGB-to-grey, as the quality and flat-skin measures use."""
    if small.ndim == 2:
        return small.astype(np.float32)
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2GRAY).astype(np.float32)


def _col_steps(y: np.ndarray) -> np.ndarray:
    """(H, W) |y[:, c] - y[:, c - STEP]| at column c (0 for c < STEP): vertical edges."""
    out = np.zeros_like(y)
    out[:, STEP:] = np.abs(y[:, STEP:] - y[:, :-STEP])
    return out


def _candidates(runs: np.ndarray, lo: int, hi: int, keep: int = 3) -> list[int]:
    """Indices in [lo, hi) whose line is a straight edge, strongest first (at most `keep`): `runs[i]`
    (the share of line i that steps) >= MIN_RUN, and a peak on at least one side (texture, grass,
    gravel, steps along most lines; an inset's edge stands out of the lines 3-5 px off on its plainer side)."""
    n = len(runs)
    padded = np.concatenate([np.zeros(5), runs, np.zeros(5)])
    good = []
    for i in range(max(lo, STEP), min(hi, n)):
        if runs[i] < MIN_RUN:
            continue
        before, after = padded[i:i + 3].max(), padded[i + 8:i + 11].max()   # lines i-5..i-3, i+3..i+5
        if runs[i] - min(before, after) >= PEAK:
            good.append((runs[i], i))
    return [i for _, i in sorted(good, reverse=True)[:keep]]


def _run(strength: np.ndarray) -> float:
    return float(np.mean(strength > MIN_STEP)) if strength.size >= MIN_SIDE_PX else 0.0


def find_inset(small: np.ndarray, box, crop) -> tuple[float, float, float, float] | None:
    """The inset rectangle (x0, y0, x1, y1), relative to the frame, that holds the face `box` (relative
    x, y, w, h) and that the crop `crop` (relative x0, y0, x1, y1: the clip rule's square) reaches past;
    None when there is none. `small` is the RGB or grey frame in display geometry."""
    import itertools

    y = luma(small)
    H, W = y.shape
    gx, gy = _col_steps(y), _col_steps(y.T).T          # vertical edges at columns, horizontal at rows
    fx0, fy0 = box[0] * W, box[1] * H
    fx1, fy1 = fx0 + box[2] * W, fy0 + box[3] * H
    # candidate sides between the face and a quarter of the crop beyond the crop's edge (a side the crop
    # just misses still closes the rectangle), scored along the face's own extent (an inset's side runs
    # at least that far); the rectangle check below then asks for each side whole
    reach = 0.25 * max(crop[2] - crop[0], crop[3] - crop[1])
    cx0, cy0 = max(0, int(np.floor((crop[0] - reach) * W))), max(0, int(np.floor((crop[1] - reach) * H)))
    cx1, cy1 = min(W, int(np.ceil((crop[2] + reach) * W))), min(H, int(np.ceil((crop[3] + reach) * H)))
    mx, my = 0.05 * (fx1 - fx0) + 1, 0.05 * (fy1 - fy0) + 1   # a tight inset's border is that close
    rows = slice(max(0, int(round(fy0))), min(H, int(round(fy1))))
    cols = slice(max(0, int(round(fx0))), min(W, int(round(fx1))))

    # the share of each column (row) that steps, along the face's rows (columns)
    col = (gx[rows] > MIN_STEP).mean(0) if rows.stop - rows.start >= MIN_SIDE_PX else np.zeros(W)
    row = (gy[:, cols] > MIN_STEP).mean(1) if cols.stop - cols.start >= MIN_SIDE_PX else np.zeros(H)
    sides = (_candidates(col, cx0, int(fx0 - mx)), _candidates(col, int(fx1 + mx) + 1, cx1),
             _candidates(row, cy0, int(fy0 - my)), _candidates(row, int(fy1 + my) + 1, cy1))
    # Lines of the inset's own picture (a wall's joints, a shelf) are candidates too: take the first
    # rectangle, most sides first, whose found sides are each unbroken along the side of the rectangle
    # they make, as far as the search reaches (a side not found lies beyond the reach or is the frame's border).
    combos = sorted(itertools.product(*[c + [None] for c in sides]), key=lambda k: sum(v is None for v in k))
    for left, right, top, bottom in combos:
        if not ((left is not None or right is not None) and (top is not None or bottom is not None)):
            continue                                     # no corner: a jamb, a shelf, a collar
        x0, x1 = (left if left is not None else 0), (right if right is not None else W)
        y0, y1 = (top if top is not None else 0), (bottom if bottom is not None else H)
        ya, yb, xa, xb = max(y0, cy0), min(y1, cy1), max(x0, cx0), min(x1, cx1)
        edges = [(left, gx[ya:yb, x0]), (right, gx[ya:yb, min(x1, W - 1)]),
                 (top, gy[y0, xa:xb]), (bottom, gy[min(y1, H - 1), xa:xb])]
        if all(f is None or _run(e) >= MIN_RUN for f, e in edges):
            # A step at index c spans pixels c - STEP .. c: the inside starts at or before `left` and ends
            # after `right` - 1, so these bounds lose at most one small-frame pixel and never take the border.
            x1, y1 = (x1 - 1 if right is not None else x1), (y1 - 1 if bottom is not None else y1)
            return (x0 / W, y0 / H, x1 / W, y1 / H)
    return None


def clip_inset(found: list[tuple[float, float, float, float] | None], min_share: float = 0.6,
               tol: float = 0.02) -> tuple[float, float, float, float] | None:
    """The clip's inset from its samples' answers: the median rectangle when at least `min_share` of
    the samples found one within `tol` (of the frame) of it; None otherwise."""
    rects = np.array([r for r in found if r is not None], dtype=np.float64).reshape(-1, 4)
    if not len(found) or len(rects) < min_share * len(found):
        return None
    med = np.median(rects, axis=0)
    agree = np.all(np.abs(rects - med) <= tol, axis=1).sum()
    return tuple(float(v) for v in med) if agree >= min_share * len(found) else None


def active_area(small: np.ndarray) -> tuple[float, float, float, float] | None:
    """The picture inside the black bars of one frame (relative x0, y0, x1, y1); None for a frame that
    is black all over (a fade: it says nothing about bars)."""
    y = luma(small)
    H, W = y.shape
    rows, cols = np.flatnonzero(y.max(1) >= BLACK), np.flatnonzero(y.max(0) >= BLACK)
    if not len(rows) or not len(cols):
        return None
    # where there is a bar, its edge row (column) blends bar and picture in the small frame: leave it out
    x0, y0 = cols[0] + (cols[0] > 0), rows[0] + (rows[0] > 0)
    x1, y1 = cols[-1] + 1 - (cols[-1] < W - 1), rows[-1] + 1 - (rows[-1] < H - 1)
    return (x0 / W, y0 / H, x1 / W, y1 / H)


def clip_picture(areas: list[tuple[float, float, float, float] | None],
                 min_bar: float = 0.015) -> tuple[float, float, float, float] | None:
    """The union of a clip's samples' active areas when it leaves a bar of at least `min_bar` of the
    frame on some side; None when the picture fills the frame (or no sample saw any)."""
    got = np.array([a for a in areas if a is not None], dtype=np.float64).reshape(-1, 4)
    if not len(got):
        return None
    u = (got[:, 0].min(), got[:, 1].min(), got[:, 2].max(), got[:, 3].max())
    bars = (u[0], u[1], 1 - u[2], 1 - u[3])
    return tuple(float(v) for v in u) if max(bars) >= min_bar else None
