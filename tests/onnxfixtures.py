"""Tiny ONNX models of the two classes insightface's legacy `model_zoo.get_model("x.onnx")` routes to,
built with onnx.helper so the real loading path (ModelRouter -> SCRFD / ArcFaceONNX) runs offline.

`scrfd_marker(path)`: an SCRFD-shaped detector (dynamic 1x3xHxW input, 9 outputs: scores, box
distances and 5 keypoints for strides 8/16/32, 2 anchors per cell, the layout scrfd.py decodes).
Its "face" is the bounding box of near-white pixels (every channel > ~224), at most one per
vertical half of the letterboxed detector input: one white marker -> one face at exactly its
box, markers in both halves -> two faces, none -> no face. Every anchor of a half encodes that
half's box (so NMS collapses them to one); the score is the half's presence times a Gaussian of
the anchor's distance to the box centre (>= ~0.78 at the nearest stride-8 anchor). Keypoints are
ArcFace's 5-point template placed on the box, so norm_crop maps the box onto the 112 crop.

`arcface_projection(path)`: an ArcFace-shaped recogniser (Nx3x112x112 -> Nx512): 8x8 average pool,
per-image mean removed, a fixed random projection (seed 0). Deterministic; equal crops give equal
embeddings, different images different ones. Not face recognition.

Tests draw faces as photos (clipped to <= 200 so they never count as marker) inside a white outline.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
STRIDES = (8, 16, 32)
MARKER = 0.75          # normalised min channel ((p - 127.5) / 128) above which a pixel is marker
MIN_PIXELS = 16        # marker pixels (detector input) a half needs before it holds a face
# insightface.utils.face_align.arcface_dst, the 5 landmarks of a 112 x 112 ArcFace crop
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


class _G:
    """Minimal graph builder: node names are unique and never start with Sub/Mul (ArcFaceONNX
    takes a graph whose first nodes are named Sub* and Mul* for an mxnet export)."""

    def __init__(self, prefix: str):
        self.nodes, self.inits, self.prefix, self.k = [], [], prefix, 0

    def const(self, value, dtype=np.float32) -> str:
        self.k += 1
        name = f"{self.prefix}_c{self.k}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, kind: str, *inputs: str, **attrs) -> str:
        self.k += 1
        out = f"{self.prefix}_t{self.k}"
        self.nodes.append(helper.make_node(kind, list(inputs), [out], name=f"{self.prefix}_n{self.k}_{kind}",
                                           **attrs))
        return out

    def f(self, v: float) -> str:
        return self.const(np.float32(v))

    def save(self, path, inputs, outputs, name) -> Path:
        g = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="reenactfaces-tests")
        m.ir_version = 8
        onnx.checker.check_model(m)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(m, str(path))
        return path


def scrfd_marker(path) -> Path:
    g = _G("det")
    x = "input.1"
    lo = g.op("ReduceMin", x, axes=[1], keepdims=1)                          # (1,1,H,W) darkest channel
    mask = g.op("Cast", g.op("Greater", lo, g.f(MARKER)), to=TensorProto.FLOAT)
    one = g.f(1.0)
    ones = g.op("ConstantOfShape", g.op("Shape", lo), value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    xg = g.op("Sub", g.op("CumSum", ones, g.const(3, np.int64)), one)         # pixel column index
    yg = g.op("Sub", g.op("CumSum", ones, g.const(2, np.int64)), one)         # pixel row index
    width = g.op("Add", g.op("ReduceMax", xg, keepdims=1), one)
    left = g.op("Cast", g.op("Less", g.op("Mul", g.op("Add", xg, g.f(0.5)), g.f(2.0)), width),
                to=TensorProto.FLOAT)
    right = g.op("Sub", one, left)

    halves = []
    for half in (left, right):
        m = g.op("Mul", mask, half)
        outside = g.op("Mul", g.op("Sub", one, m), g.f(1e6))
        x0 = g.op("ReduceMin", g.op("Add", xg, outside), keepdims=1)
        y0 = g.op("ReduceMin", g.op("Add", yg, outside), keepdims=1)
        x1 = g.op("ReduceMax", g.op("Mul", m, g.op("Add", xg, one)), keepdims=1)   # exclusive edge
        y1 = g.op("ReduceMax", g.op("Mul", m, g.op("Add", yg, one)), keepdims=1)
        count = g.op("ReduceSum", m, keepdims=1)
        present = g.op("Sigmoid", g.op("Mul", g.op("Sub", count, g.f(MIN_PIXELS)), g.f(0.5)))
        halves.append(dict(x0=x0, y0=y0, x1=x1, y1=y1, p=present))

    def pick(la, ra, key):   # per anchor: the value of the half the anchor lies in
        return g.op("Add", g.op("Mul", la, halves[0][key]), g.op("Mul", ra, halves[1][key]))

    def rows(t, c):          # (1,C,h,w) -> (h*w*2, C): cells row-major, each cell's 2 anchors alike
        r = g.op("Reshape", g.op("Transpose", t, perm=[0, 2, 3, 1]), g.const([-1, 1, c], np.int64))
        return g.op("Reshape", g.op("Concat", r, r, axis=1), g.const([-1, c], np.int64))

    big = np.iinfo(np.int64).max
    scores, boxes, kpss = [], [], []
    for s in STRIDES:
        def sl(t, s=s):
            return g.op("Slice", t, g.const([0, 0], np.int64), g.const([big, big], np.int64),
                        g.const([2, 3], np.int64), g.const([s, s], np.int64))
        ax, ay, la = sl(xg), sl(yg), sl(left)
        ra = g.op("Sub", one, la)
        x0, y0, x1, y1, p = (pick(la, ra, k) for k in ("x0", "y0", "x1", "y1", "p"))
        cx = g.op("Mul", g.op("Add", x0, x1), g.f(0.5))
        cy = g.op("Mul", g.op("Add", y0, y1), g.f(0.5))
        dx, dy = g.op("Sub", ax, cx), g.op("Sub", ay, cy)
        d2 = g.op("Add", g.op("Mul", dx, dx), g.op("Mul", dy, dy))
        score = g.op("Mul", p, g.op("Exp", g.op("Mul", d2, g.f(-0.5 / s ** 2))))
        inv = g.f(1.0 / s)
        dist = [g.op("Mul", g.op("Sub", ax, x0), inv), g.op("Mul", g.op("Sub", ay, y0), inv),
                g.op("Mul", g.op("Sub", x1, ax), inv), g.op("Mul", g.op("Sub", y1, ay), inv)]
        bw, bh = g.op("Sub", x1, x0), g.op("Sub", y1, y0)
        kp = []
        for tx, ty in ARCFACE_DST / 112.0:
            px = g.op("Add", x0, g.op("Mul", bw, g.f(tx)))
            py = g.op("Add", y0, g.op("Mul", bh, g.f(ty)))
            kp += [g.op("Mul", g.op("Sub", px, ax), inv), g.op("Mul", g.op("Sub", py, ay), inv)]
        scores.append(rows(score, 1))
        boxes.append(rows(g.op("Concat", *dist, axis=1), 4))
        kpss.append(rows(g.op("Concat", *kp, axis=1), 10))

    outputs = []
    for kind, ts, c in (("score", scores, 1), ("bbox", boxes, 4), ("kps", kpss, 10)):
        for s, t in zip(STRIDES, ts):
            name = f"{kind}_{s}"
            g.nodes.append(helper.make_node("Identity", [t], [name], name=f"det_out_{name}"))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n{s}", c]))
    inp = helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, "height", "width"])
    return g.save(path, [inp], outputs, "tiny_scrfd_marker")


def arcface_projection(path, dim: int = 512, seed: int = 0) -> Path:
    g = _G("rec")
    x = "input.1"
    pooled = g.op("AveragePool", x, kernel_shape=[8, 8], strides=[8, 8])     # (N,3,14,14)
    centred = g.op("Sub", pooled, g.op("ReduceMean", pooled, axes=[1, 2, 3], keepdims=1))
    flat = g.op("Flatten", centred, axis=1)                                    # (N,588)
    w = np.random.default_rng(seed).standard_normal((3 * 14 * 14, dim)).astype(np.float32)
    g.nodes.append(helper.make_node("MatMul", [flat, g.const(w)], ["embedding"], name="rec_out_MatMul"))
    inp = helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", 3, 112, 112])
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])
    return g.save(path, [inp], [out], "tiny_arcface_projection")


def buffalo_dir(folder) -> Path:
    """A model_dir laid out like insightface's buffalo_l pack, holding the two tiny models."""
    folder = Path(folder)
    scrfd_marker(folder / "det_10g.onnx")
    arcface_projection(folder / "w600k_r50.onnx")
    return folder


def marker_face(photo: np.ndarray, side: int, border: int = 4) -> np.ndarray:
    """side x side RGB tile: the photo resized, clipped to <= 200 (never marker), in a white outline."""
    import cv2

    tile = np.full((side, side, 3), 255, np.uint8)
    inner = cv2.resize(photo, (side - 2 * border, side - 2 * border), interpolation=cv2.INTER_AREA)
    tile[border:side - border, border:side - border] = np.minimum(inner, 200)
    return tile


def astronaut_face() -> np.ndarray:
    from skimage.data import astronaut

    return astronaut()[30:250, 110:330]


def hopper_face() -> np.ndarray:
    import matplotlib.cbook as cbook
    from matplotlib.image import imread

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        img = imread(f, format="jpg")
    return np.ascontiguousarray(img[40:340, 90:390, :3])
