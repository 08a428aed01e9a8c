"""`make report`: the dataset statistics of supplementary §5 as figures, one HTML page, and the JSON behind it.

Reads the curation manifests (and the shards, when present, for the CLIP t-SNE) under the data root and writes
<data>/report/{index.html, report.json, *.png}. The paper's figures are reproduced with the paper's own mean and
standard deviation printed beside ours.

Face ratios are measured on the face mesh stored in the shards (478 MediaPipe landmarks per frame): width cheek
to cheek, height top of forehead to chin, over the crop side. The curation detector's boxes cannot give a
height: MediaPipe's are square, so their height ratio is always the width ratio. Without shards the box
figures are shown, labelled as such.
standard deviation printed beside ours. Figure 7's two panels: a t-SNE of per-clip face-identity embeddings and
one of per-frame CLIP embeddings, both coloured by video; and the identity statistics (people, clips per person)
beside the paper's 1M clips of 53k identities.
"""
from __future__ import annotations

import argparse
import html
import json
import sys
import time
from pathlib import Path

from pipeline.paths import DataRoot

# The paper's dataset statistics (supplementary §5), shown beside ours for comparison.
PAPER = {
    "duration_s": (3.29, 2.07),
    "quality": (51.5, 10.72),
    "resolution": (745.1, 247.8),
    "face_w_ratio": (0.45, 0.05),
    "face_h_ratio": (0.53, 0.07),
}
# "1M clips of 53k identities" (the paper's dataset): ~18.9 clips per identity
PAPER_IDENTITIES = {"clips": 1_000_000, "identities": 53_000}
FIGURES = [  # (column, title, unit)
    ("duration_s", "Clip duration", "seconds"),
    ("quality", "Clip quality", "score 0-100"),
    ("resolution", "Clip resolution", "crop side, px"),
    ("face_w_ratio", "Face width ratio", "face width / crop width"),
    ("face_h_ratio", "Face height ratio", "face height / crop height"),
]


def _stats(values) -> dict:
    import numpy as np

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n": int(len(v)), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "max": float(v.max())}


def _hist(path: Path, values, title: str, unit: str, st: dict, paper) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.hist(values, bins=min(30, max(5, len(values))), color="#4a78b0", edgecolor="white")
    label = f"ours: mean {st['mean']:.3g}, sd {st['std']:.3g} (n={st['n']})" if st["n"] else "no clips"
    if paper:
        label += f"\npaper: mean {paper[0]}, sd {paper[1]}"
    ax.set_title(title)
    ax.set_xlabel(unit)
    ax.set_ylabel("clips")
    ax.text(0.98, 0.95, label, transform=ax.transAxes, ha="right", va="top", fontsize=8,
            bbox=dict(facecolor="white", alpha=0.8, edgecolor="none"))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _bar(path: Path, counts: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.4 * max(3, len(counts)) + 1), dpi=100)
    items = sorted(counts.items(), key=lambda kv: kv[1])
    ax.barh([k for k, _ in items] or ["(none)"], [v for _, v in items] or [0], color="#b0584a")
    ax.set_title(title)
    ax.set_xlabel("count")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _middle_frames(root, rows) -> dict:
    """{(media_path, frame): rgb} for the middle frame of every row: one decode pass per video.

    Media that is gone, unreadable or outside the data root just has no frames."""
    from pipeline.video_io import VideoError, read_frames

    wanted: dict[str, set[int]] = {}
    for row in rows:
        wanted.setdefault(str(row["media_path"]), set()).add(_mid(row))
    out = {}
    for media, mids in wanted.items():
        try:
            path = root.path(media)
        except ValueError:   # a media_path escaping the data root is never read
            continue
        try:
            got = read_frames(path, mids)
        except VideoError:
            continue
        out.update({(media, i): img for i, img in got.items()})
    return out


def _mid(row) -> int:
    return (int(row["start_frame"]) + int(row["end_frame"])) // 2


def _frame_with_box(frames: dict, row, side: int = 160):
    """Middle frame of a clip (from _middle_frames), downscaled, with its crop box drawn; None if missing."""
    import cv2

    img = frames.get((str(row["media_path"]), _mid(row)))
    if img is None:
        return None
    h, w = img.shape[:2]
    s = side / max(h, w)
    small = cv2.resize(img, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)
    x0, y0, cs = (int(row[k]) for k in ("crop_x0", "crop_y0", "crop_size"))
    cv2.rectangle(small, (int(x0 * s), int(y0 * s)), (int((x0 + cs) * s), int((y0 + cs) * s)), (0, 255, 0), 2)
    canvas = cv2.copyMakeBorder(small, 0, side - small.shape[0], 0, side - small.shape[1], cv2.BORDER_CONSTANT)
    return canvas


def _sheet(path: Path, tiles: list, labels: list[str], cols: int = 6, title: str = "") -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not tiles:
        return False
    rows = (len(tiles) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.2 * rows), dpi=90, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, tile, label in zip(axes.flat, tiles, labels):
        ax.imshow(tile)
        ax.set_title(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def mesh_face_ratios(landmarks, ok) -> tuple[float, float] | None:
    """(width, height) of the face over the crop side from a clip's face mesh (T, 478, 3), x, y in [0, 1] of the
    crop: per frame with a face the extent of the 478 points (x: cheek to cheek, y: top of forehead to chin),
    then the median over frames. None when no frame has a face."""
    import numpy as np

    lm = np.asarray(landmarks, dtype=np.float64)[np.asarray(ok, dtype=bool)]   # (F, 478, 3) frames with a face
    lm = lm[np.isfinite(lm[..., :2]).all(axis=(1, 2))]
    if not len(lm):
        return None
    extent = lm[..., :2].max(axis=1) - lm[..., :2].min(axis=1)                 # (F, 2): x and y extents
    w, h = np.median(extent, axis=0)
    return float(w), float(h)


def _read_shards(shards_dir: Path) -> tuple[list, list, dict]:
    """One pass over the indexed shards: per-frame CLIP embeddings with their video ids (for the t-SNE), and
    {clip_id: (face width, face height) ratios} from the stored face mesh."""
    import io

    import numpy as np

    from pipeline.shards.io import load_index, read_samples

    # Only indexed shards count: a half-written or orphaned tar is not part of the dataset.
    embs, vids, mesh = [], [], {}
    want = {"clip_emb.npy", "meta.json", "landmarks.npy", "landmarks_ok.npy"}
    for entry in load_index(shards_dir)["shards"]:
        for key, members in read_samples(shards_dir / entry["name"], want):
            m = dict(members)
            if "meta.json" not in m:
                continue
            meta = json.loads(m["meta.json"])
            if "clip_emb.npy" in m:
                e = np.load(io.BytesIO(m["clip_emb.npy"]), allow_pickle=False)
                embs.append(e.astype(np.float32))
                vids += [meta["video_id"]] * len(e)
            if "landmarks.npy" in m and "landmarks_ok.npy" in m:
                r = mesh_face_ratios(np.load(io.BytesIO(m["landmarks.npy"]), allow_pickle=False),
                                     np.load(io.BytesIO(m["landmarks_ok.npy"]), allow_pickle=False))
                if r is not None:
                    mesh[str(meta.get("clip_id", key))] = r
    return embs, vids, mesh


def _tsne(path: Path, embs: list, vids: list, max_points: int = 600) -> dict:
    """t-SNE of per-frame CLIP embeddings from the shards, coloured by video (supplementary Fig. 7, right)."""
    import numpy as np

    if not embs:
        return {"status": "unavailable: no shards with CLIP embeddings"}
    x = np.concatenate(embs)
    idx = np.random.default_rng(0).permutation(len(x))[:max_points]
    return _tsne_plot(path, x[idx], [vids[i] for i in idx], "t-SNE of per-frame CLIP embeddings, coloured by video")


def _tsne_plot(path: Path, x, labels: list[str], title: str, marker_of: list[str] | None = None, unit="frames") -> dict:
    """2-D t-SNE of the rows of x, coloured by label (video); `marker_of` (a person per row) sets the marker."""
    import numpy as np

    if len(x) < 5:
        return {"status": f"unavailable: fewer than 5 {unit}"}
    from sklearn.manifold import TSNE

    y = TSNE(n_components=2, perplexity=min(30, len(x) - 1) / 2, random_state=0, init="pca").fit_transform(
        np.asarray(x, np.float32))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    uniq = sorted(set(labels))
    marks = sorted(set(marker_of or []))
    for i, v in enumerate(uniq):
        for j, who in enumerate(marks or [None]):
            m = np.array([lab == v and (who is None or marker_of[k] == who) for k, lab in enumerate(labels)])
            if m.any():
                ax.scatter(y[m, 0], y[m, 1], s=6 if unit == "frames" else 24, color=plt.cm.tab20(i % 20),
                           marker="osv^D<>p*h"[j % 10], label=v[:12] if j == 0 or not marks else None)
    ax.set_title(title, fontsize=9)
    if len(uniq) <= 12:
        ax.legend(fontsize=6, markerscale=1.5)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return {"status": "ok", "points": int(len(x)), "videos": len(uniq)}


MESH_WHAT = ("extent of the 478-point MediaPipe face mesh stored in the shards (width cheek to cheek, height top "
             "of forehead to chin) / crop side, median over a clip's frames with a face")
BOX_WHAT = "median face-detector box / crop side, as curation recorded it (clips.parquet)"


def face_ratio_values(acc, mesh: dict) -> tuple[dict, dict]:
    """{face_w_ratio: values, face_h_ratio: values} for the accepted clips, and where they came from: the face mesh
    of the clips found in the shards, else the detector boxes of clips.parquet (with how many are square)."""
    import numpy as np

    w, h = acc["face_w_ratio"].to_numpy(float), acc["face_h_ratio"].to_numpy(float)
    fin = np.isfinite(w) & np.isfinite(h)
    square = int((np.abs(h - w) <= 0.01 * np.abs(w))[fin].sum())   # 1%: float noise of a square box
    box = {"what": BOX_WHAT, "clips": int(fin.sum()), "square_clips": square,
           "face_w_ratio": _stats(w), "face_h_ratio": _stats(h)}
    if fin.sum() and square == fin.sum():
        box["note"] = ("the detector's boxes are square in every clip: their height ratio is the width ratio "
                       "and says nothing about face height")
    got = [mesh[c] for c in acc["clip_id"] if c in mesh]
    if got:
        source = {"measure": "face mesh", "what": MESH_WHAT, "clips": len(got), "accepted": int(len(acc)),
                  "box": box}
        return {"face_w_ratio": [g[0] for g in got], "face_h_ratio": [g[1] for g in got]}, source
    source = {"measure": "detector box", "what": BOX_WHAT + " (no face mesh: no shards for these clips; run "
              "`make shards`)", "clips": box["clips"], "accepted": int(len(acc)), "box": box}
    return {"face_w_ratio": w[fin].tolist(), "face_h_ratio": h[fin].tolist()}, source
def _identities(out: Path, acc) -> dict:
    """Identity statistics of the accepted clips and Figure 7's identity panel (t-SNE of per-clip identity
    embeddings, coloured by video, one marker per identity)."""
    import numpy as np

    p = PAPER_IDENTITIES
    res: dict = {"paper": {**p, "clips_per_identity": round(p["clips"] / p["identities"], 1)}}
    if "identity_id" not in acc or not acc["identity_id"].notna().any():
        res["status"] = "unavailable: the clips have no identities (curated before identity embeddings)"
        return res
    known = acc[acc["identity_id"].notna()]
    per = known["identity_id"].value_counts()
    res.update(status="ok", model=sorted(known["identity_model"].dropna().unique().tolist()),
               identities=int(len(per)), clips=int(len(known)),
               clips_per_identity={"mean": float(per.mean()), "median": float(per.median()), "max": int(per.max()),
                                   "counts": sorted(per.astype(int).tolist(), reverse=True)},
               videos_per_identity=float(known.groupby("identity_id")["video_id"].nunique().mean()))
    _bar(out / "identities.png", {f"{k[:13]} ({known.loc[known.identity_id == k, 'video_id'].nunique()} videos)": int(v)
                                  for k, v in per.head(30).items()},
         f"Clips per identity: {len(per)} people in {len(known)} clips (paper: 53k in 1M, ~18.9 each)")
    res["figure"] = "identities.png"
    emb = known[known["identity"].notna()]
    res["tsne"] = _tsne_plot(out / "tsne_identity.png", np.stack([np.asarray(e, np.float32) for e in emb["identity"]]),
                             emb["video_id"].astype(str).tolist(), f"t-SNE of per-clip face-identity embeddings "
                             f"({', '.join(res['model'])}), coloured by video; marker = identity",
                             emb["identity_id"].astype(str).tolist(), unit="clips") if len(emb) else {
        "status": "unavailable: no identity embeddings"}
    return res


def build_report(data_root: str | Path, examples_per_reason: int = 3, max_sheet: int = 24) -> dict:
    import pandas as pd

    data_root = Path(data_root)
    cur = data_root / "curate"
    clips_path = cur / "clips.parquet"
    if not clips_path.exists():
        raise FileNotFoundError(f"no clips manifest at {clips_path}: run `make curate` first")
    out = data_root / "report"
    out.mkdir(parents=True, exist_ok=True)
    clips = pd.read_parquet(clips_path)
    acc = clips[clips["status"] == "accepted"]
    rej_path = cur / "rejections.parquet"
    rejections = pd.read_parquet(rej_path) if rej_path.exists() else clips.iloc[0:0]
    videos_path = cur / "videos.parquet"
    videos = pd.read_parquet(videos_path) if videos_path.exists() else None

    report: dict = {"generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "data_root": str(data_root),
                    "counts": {"videos": int(len(videos)) if videos is not None else None,
                               "clips": int(len(clips)), "accepted": int(len(acc)),
                               "rejected_clips": int((clips["status"] != "accepted").sum()),
                               "rejected_spans": int(len(rejections))},
                    "figures": {}, "stats": {}, "paper": {k: {"mean": m, "std": s} for k, (m, s) in PAPER.items()}}
    if "quality_scorer" in acc:
        report["quality_scorers"] = sorted(acc["quality_scorer"].dropna().unique().tolist())
    shards_dir = data_root / "shards"
    embs, vids, mesh = _read_shards(shards_dir) if shards_dir.exists() else ([], [], {})
    faces, report["face_ratios"] = face_ratio_values(acc, mesh)
    for col, title, unit in FIGURES:
        values = faces[col] if col in faces else (acc[col].dropna().tolist() if col in acc else [])
        st = _stats(values)
        report["stats"][col] = st
        if col in faces:
            unit += f" ({report['face_ratios']['measure']})"
        _hist(out / f"{col}.png", values, title, unit, st, PAPER.get(col))
        report["figures"][col] = f"{col}.png"

    # rejections.parquet holds every rejected span (rejected clips included), so it alone is counted;
    # whole videos that produced nothing are counted by their status.
    reasons = {str(r): int(n) for r, n in rejections["reason"].value_counts().items()} if len(rejections) else {}
    if videos is not None and "status" in videos:
        for s, n in videos.loc[videos["status"] != "ok", "status"].value_counts().items():
            reasons[f"video: {s}"] = int(n)
    report["rejection_reasons"] = reasons
    _bar(out / "rejections.png", reasons, "Rejections per reason")
    report["figures"]["rejections"] = "rejections.png"

    sheet_acc = [row for _, row in acc.head(max_sheet).iterrows()]
    sheet_rej = [(reason, row) for reason, group in clips[clips["status"] != "accepted"].groupby("reason")
                 for _, row in group.head(examples_per_reason).iterrows()]
    frames = _middle_frames(DataRoot.of(data_root), sheet_acc + [row for _, row in sheet_rej])

    tiles, labels = [], []
    for row in sheet_acc:
        t = _frame_with_box(frames, row)
        if t is not None:
            tiles.append(t)
            labels.append(f"{row['clip_id'][:8]} {row['duration_s']:.1f}s q{row['quality']:.0f}")
    # say how much of the accepted set the sheet holds: a sheet that silently stops reads as the whole set
    shown = f"{len(tiles)} of {len(acc)} accepted clips shown" + (
        f" (the first {max_sheet} in manifest order)" if len(acc) > max_sheet else "")
    if _sheet(out / "accepted.png", tiles, labels, title=shown):
        report["figures"]["accepted"] = "accepted.png"
    report["contact_sheet_clips"] = len(tiles)
    report["contact_sheet"] = {"shown": len(tiles), "accepted": int(len(acc)), "limit": max_sheet, "caption": shown}

    tiles, labels = [], []
    for reason, row in sheet_rej:
        t = _frame_with_box(frames, row)
        if t is not None:
            tiles.append(t)
            labels.append(str(reason)[:28])
    if _sheet(out / "rejected.png", tiles, labels):
        report["figures"]["rejected"] = "rejected.png"

    report["tsne_clip"] = _tsne(out / "tsne_clip.png", embs, vids) if shards_dir.exists() else {
        "status": "unavailable: no shards (run `make shards`)"}
    if report["tsne_clip"]["status"] == "ok":
        report["figures"]["tsne_clip"] = "tsne_clip.png"
    # Figure 7, left: face identity (dlib's ResNet offline, ArcFace when configured) per clip
    report["identities"] = _identities(out, acc)
    if report["identities"].get("figure"):
        report["figures"]["identities"] = report["identities"]["figure"]
    report["tsne_identity"] = report["identities"].pop("tsne", {"status": report["identities"]["status"]})
    if report["tsne_identity"]["status"] == "ok":
        report["figures"]["tsne_identity"] = "tsne_identity.png"

    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "index.html").write_text(_html(report))
    return report


def _html(r: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['n']}</td><td>{_fmt(v['mean'])}</td><td>{_fmt(v['std'])}</td>"
        f"<td>{r['paper'][k]['mean']}</td><td>{r['paper'][k]['std']}</td></tr>" for k, v in r["stats"].items())
    reasons = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in
                      sorted(r["rejection_reasons"].items(), key=lambda kv: -kv[1]))
    captions = {"accepted": f"accepted: {r['contact_sheet']['caption']}"}
    figs = "".join(f'<figure><img src="{html.escape(f)}" alt="{html.escape(k)}"><figcaption>'
                   f"{html.escape(captions.get(k, k))}</figcaption></figure>" for k, f in r["figures"].items())
    c = r["counts"]
    fr, box = r["face_ratios"], r["face_ratios"]["box"]
    faces = (f"<p>Face ratios: {html.escape(fr['measure'])}, {fr['clips']} of {fr['accepted']} accepted clips: "
             f"{html.escape(fr['what'])}. Curation's detector boxes: width {_fmt(box['face_w_ratio']['mean'])}, "
             f"height {_fmt(box['face_h_ratio']['mean'])}, square in {box['square_clips']} of {box['clips']} "
             f"clips{html.escape('; ' + box['note'] if box.get('note') else '')}.</p>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>reenactfaces dataset report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} figure{{display:inline-block;margin:.5em}}
img{{max-width:560px;border:1px solid #ddd}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 8px}}</style>
</head><body><h1>reenactfaces dataset report</h1>
<p>Generated {html.escape(r['generated'])}. Videos: {c['videos']}, candidate clips: {c['clips']},
accepted: {c['accepted']}, rejected clips: {c['rejected_clips']}, rejected spans: {c['rejected_spans']}.
Quality scorer(s): {html.escape(', '.join(r.get('quality_scorers', [])) or 'n/a')}.</p>
<h2>Statistics (supplementary §5)</h2><table><tr><th>quantity</th><th>n</th><th>mean</th><th>sd</th>
<th>paper mean</th><th>paper sd</th></tr>{rows}</table>{faces}
<h2>Rejections</h2><table><tr><th>reason</th><th>count</th></tr>{reasons}</table>
<h2>Identities</h2><p>{_identity_line(r['identities'])}</p>
<p>t-SNE (face identity, per clip): {html.escape(r['tsne_identity']['status'])}. t-SNE (CLIP, per frame):
{html.escape(r['tsne_clip']['status'])}.</p>
<h2>Figures</h2>{figs}</body></html>"""


def _identity_line(s: dict) -> str:
    p = s["paper"]
    if s["status"] != "ok":
        return html.escape(s["status"])
    c = s["clips_per_identity"]
    return html.escape(f"{s['identities']} people in {s['clips']} accepted clips ({', '.join(s['model'])}): "
                       f"{c['mean']:.1f} clips per person (median {c['median']:g}, max {c['max']}), "
                       f"{s['videos_per_identity']:.1f} videos per person. Paper: {p['identities']:,} identities in "
                       f"{p['clips']:,} clips, {p['clips_per_identity']} clips per identity.")


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3g}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data", help="data root (default: data)")
    args = ap.parse_args(argv)
    try:
        r = build_report(args.data)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.data) / "report"
    fr = r["face_ratios"]
    print(f"report: {r['counts']['accepted']} accepted clips, {len(r['figures'])} figures -> {out / 'index.html'}\n"
          f"        contact sheet: {r['contact_sheet']['caption']}; face ratios from the {fr['measure']} "
          f"({fr['clips']} clips): width {_fmt(r['stats']['face_w_ratio']['mean'])}, "
          f"height {_fmt(r['stats']['face_h_ratio']['mean'])} (paper 0.45 / 0.53)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
