"""Curation cost against a plain PyAV decode of the same videos, measured in the same run.

Reference: PyAV decodes every frame single-threaded and converts it to an RGB ndarray at full
size (what any stage that "reads the video" pays). Curation: probe + the one decode pass with
scenes, faces and quality + segmentation, crops and filters (`pipeline.curate.stages.analyse_video`),
models loaded beforehand (their one-off load time is reported apart). Download is network-bound
and excluded. Figures are process CPU seconds (all threads), best of `repeats` per video.
Target (issue 19): ratio <= 3 with the shipped DAG, whose shot detector is TransNetV2 on candidate windows.
The CPU is broken down by stage (`STAGES`, disjoint, adding up to curation): decode, the thumbnail pass,
TransNetV2, face detection, tracking, mesh verification, quality, identity, crop placement + filters
(curation writes no crops: `make shards` does). "transnet_*" say what the network cost (its CPU seconds, its
share of curation, how many frames it saw per decoded frame, CPU per network frame) and what the ratio
would be without it. Identity (issue 12): dlib's ResNet on `identity.frames` aligned faces of every
accepted clip (plus the rare tracking check off a shot boundary, and the face chips and hashes of the
decode pass) is a model inference like the shard encoders: reported per accepted clip and per embedded
face beside curation per accepted clip, and the ratio is given with and without it.
`python -m benchmarks.run --only curate` runs this alone; `summary` is the printed table.
`python -m benchmarks.bench_curate OUT --videos DIR` measures your own footage instead of the corpus (every
video file in DIR; no ground truth needed). The ratio depends on resolution (the models' cost per frame does
not, the decode's does), so the JSON also gives it per resolution class (`by_resolution`).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".gif", ".m4v"}


def plain_decode_cpu(path: Path) -> tuple[float, int]:
    import av

    t0 = time.process_time()
    n = 0
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            frame.to_ndarray(format="rgb24")
            n += 1
    return time.process_time() - t0, n


# the stage breakdown, in pipeline order: (name in the report, what it holds)
STAGES = [
    ("probe", "container metadata (PyAV)"),
    ("decode", "the one decode pass + the small RGB frame of every frame"),
    ("thumbnail_pass", "48x27 thumbnails, cheap cut/candidate pass, fades from brightness (scenes)"),
    ("transnet", "TransNetV2 forward passes on the candidate windows"),
    ("face_detection", "face detector calls (stride + bisection)"),
    ("tracking", "signatures, bisection, glitch smoothing, segmentation"),
    ("mesh_verification", "478-point mesh on sampled crops (verify.py)"),
    ("quality", "quality scorer on sampled crops"),
    ("identity", "face chips + hashes in the pass, tracking's and clips' ResNet embeddings"),
    ("crop_and_filters", "crop placement per clip + filters (curation writes no crop: shards do)"),
    ("other", "the rest of analyse_video (rows, timestamps)"),
]


def _stage_split(times: dict, detail: dict, spent: float) -> dict[str, float]:
    """analyse_video's per-stage CPU (disjoint, summing to the video's) in the report's names."""
    out = {"probe": times["probe"], "decode": times["decode"], "thumbnail_pass": times["scenes"],
           "transnet": times["transnet"], "face_detection": detail["face_detect_s"], "tracking": detail["tracking_s"],
           "mesh_verification": times["verify"], "quality": times["quality"], "identity": times["identity"],
           "crop_and_filters": times["filters"]}
    out["other"] = spent - sum(out.values())
    return out


def _own_videos(folder: Path) -> list[dict]:
    """The corpus' ground-truth rows, as far as the bench uses them, for every video file in `folder`."""
    from pipeline.video_io import probe

    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in VIDEO_SUFFIXES:
            info = probe(p)
            out.append({"path": str(p), "name": p.stem, "width": info.width, "height": info.height})
    if not out:
        raise SystemExit(f"no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) in {folder}")
    return out


def _resolution_class(width: int, height: int) -> str:
    short = min(width, height)
    return "<=480p" if short <= 480 else "720p" if short <= 720 else ">=1080p"


def run(data_root: Path, repeats: int = 2, videos: Path | None = None) -> dict:
    from pipeline.curate.retention import MediaConfig, write_clip_files
    from pipeline.curate.stages import Models, analyse_video, load_dag
    from pipeline.paths import DataRoot
    from pipeline.synth.corpus import ensure_corpus

    data_root = Path(data_root)
    corpus_dir = data_root / "corpus"
    gts = _own_videos(Path(videos)) if videos else ensure_corpus(corpus_dir)
    cfg = load_dag(Path(__file__).resolve().parents[1] / "dags" / "curate.yaml")
    t0 = time.process_time()
    models = Models(cfg)
    models.detector, models.scorer, models.mesh, models.shot_net, models.identity  # noqa: B018 - load now, not inside the first measurement
    load_s = time.process_time() - t0

    stages = {k: 0.0 for k, _ in STAGES}
    ident = {k: 0.0 for k in ("identity_chips_s", "identity_tracking_s", "identity_tracking_faces",
                              "identity_clip_s", "identity_clip_faces")}
    kept = {"accepted_s": 0.0, "clips": 0, "media_bytes": 0, "clip_bytes": 0}
    per_video, plain_total, cur_total, video_s, frames, dets, clips, samples, net_frames, accepted = [], 0.0, 0.0, 0.0, 0, 0, 0, 0, 0, 0
    for g in gts:
        path = Path(g["path"])
        plain = min(plain_decode_cpu(path)[0] for _ in range(repeats))
        best = None
        for _ in range(repeats):
            seen = models.shot_net.frames if models.shot_net else 0
            t = time.process_time()
            res = analyse_video(path, g["name"], "", "", cfg, models)
            spent = time.process_time() - t
            if best is None or spent < best[0]:
                best = (spent, res, (models.shot_net.frames if models.shot_net else 0) - seen)
        spent, res, seen = best
        net_frames += seen
        # storage figures for `make estimate` (outside the timed region): source bytes, accepted seconds,
        # and the bytes media.keep: accepted_clips keeps for them (pipeline/curate/retention.py)
        acc = [c for c in res["clips"] if c["status"] == "accepted"]
        kept["accepted_s"] += sum(c["duration_s"] for c in acc)
        kept["clips"] += len(acc)
        kept["media_bytes"] += path.stat().st_size
        kept["clip_bytes"] += write_clip_files(DataRoot.of(data_root / "kept"), path, g["name"], res["clips"],
                                               MediaConfig())
        split = _stage_split(res["times"], res["detail"], spent)
        for k, v in split.items():
            stages[k] += v
        for k in ident:
            ident[k] += res["detail"][k]
        plain_total += plain
        cur_total += spent
        video_s += res["num_frames"] / res["probe"]["fps"]
        frames += res["num_frames"]
        dets += res["detections"]
        clips += len(res["clips"])
        samples += res["verify_samples"]
        acc = sum(c["status"] == "accepted" for c in res["clips"])
        accepted += acc
        per_video.append({"video": g["name"], "size": f"{g['width']}x{g['height']}", "frames": res["num_frames"],
                          "resolution": _resolution_class(g["width"], g["height"]),
                          "plain_decode_cpu_s": round(plain, 4), "curate_cpu_s": round(spent, 4),
                          "ratio": round(spent / plain, 2) if plain else None, "accepted_clips": acc,
                          "transnet_cpu_s": round(res["times"].get("transnet", 0.0), 4), "transnet_frames": seen,
                          "identity_cpu_s": round(split["identity"], 4),
                          "identity_tracking_faces": res["detail"]["identity_tracking_faces"],
                          "boundaries": len(res["boundaries"])})
    embedded = ident["identity_tracking_faces"] + ident["identity_clip_faces"]
    by_res: dict = {}
    for v in per_video:
        b = by_res.setdefault(v["resolution"], {"videos": 0, "plain_decode_cpu_s": 0.0, "curate_cpu_s": 0.0})
        b["videos"] += 1
        b["plain_decode_cpu_s"] += v["plain_decode_cpu_s"]
        b["curate_cpu_s"] += v["curate_cpu_s"]
    for b in by_res.values():
        b["ratio_to_plain_decode"] = round(b["curate_cpu_s"] / max(b["plain_decode_cpu_s"], 1e-9), 2)
        b["plain_decode_cpu_s"], b["curate_cpu_s"] = round(b["plain_decode_cpu_s"], 3), round(b["curate_cpu_s"], 3)
    out = {
        "source": str(videos) if videos else "synthetic corpus", "by_resolution": by_res,
        "videos": len(gts), "frames": frames, "video_s": round(video_s, 2),
        "plain_decode_cpu_s": round(plain_total, 3), "curate_cpu_s": round(cur_total, 3),
        "plain_decode_cpu_s_per_video_s": round(plain_total / video_s, 4),
        "curate_cpu_s_per_video_s": round(cur_total / video_s, 4),
        "ratio_to_plain_decode": round(cur_total / plain_total, 3), "target_ratio": 3.0,
        "ratio_to_plain_decode_without_identity": round((cur_total - stages["identity"]) / plain_total, 3),
        "per_stage_cpu_s": {k: round(v, 4) for k, v in stages.items()},
        "per_stage_share_of_curation": {k: round(v / cur_total, 4) for k, v in stages.items()},
        "per_stage_ratio_to_plain_decode": {k: round(v / plain_total, 3) for k, v in stages.items()},
        "stage_meaning": dict(STAGES),
        # identity (issue 12): the ResNet per accepted clip and per embedded face, beside curation per clip
        "accepted_clips": accepted, "identity_model": models.identity.name, "identity_frames_per_clip": cfg.identity.frames,
        "curate_cpu_s_per_accepted_clip": round(cur_total / max(accepted, 1), 4),
        "identity_cpu_s_per_accepted_clip": round(stages["identity"] / max(accepted, 1), 4),
        "identity_clip_embedding_cpu_s_per_accepted_clip": round(ident["identity_clip_s"] / max(accepted, 1), 4),
        "identity_cpu_s_per_embedded_face": round((ident["identity_tracking_s"] + ident["identity_clip_s"])
                                                  / max(embedded, 1), 4),
        "identity_faces_embedded": {"clips": int(ident["identity_clip_faces"]),
                                    "tracking": int(ident["identity_tracking_faces"])},
        "identity_cpu_s": {"chips_and_hashes": round(ident["identity_chips_s"], 3),
                           "tracking_embeddings": round(ident["identity_tracking_s"], 3),
                           "clip_embeddings": round(ident["identity_clip_s"], 3)},
        "face_detections_per_frame": round(dets / max(frames, 1), 3),
        # face verification (mesh on sampled crops): its CPU per candidate clip and per mesh sample
        "verify_cpu_s_per_clip": round(stages["mesh_verification"] / max(clips, 1), 4),
        "verify_cpu_s_per_sample": round(stages["mesh_verification"] / max(samples, 1), 4),
        "verify_samples_per_clip": round(samples / max(clips, 1), 2),
        "shot_detector": cfg.scenes.detector, "transnet_frames_mode": cfg.scenes.transnet_frames,
        "transnet_threads": cfg.scenes.transnet_threads,
        "transnet_cpu_s": round(stages["transnet"], 3),
        "transnet_share_of_curation": round(stages["transnet"] / cur_total, 3) if cur_total else None,
        "transnet_cpu_s_per_network_frame": round(stages["transnet"] / max(net_frames, 1), 4),
        "transnet_frames_per_decoded_frame": round(net_frames / max(frames, 1), 3),
        "ratio_without_transnet": round((cur_total - stages["transnet"]) / plain_total, 3),
        "model_load_cpu_s": round(load_s, 2), "per_video": per_video,
        "accepted_s": round(kept["accepted_s"], 3),
        "accepted_fraction_of_video_s": round(kept["accepted_s"] / video_s, 4),
        "media_bytes": kept["media_bytes"], "media_bytes_per_video_s": round(kept["media_bytes"] / video_s, 1),
        "kept_clip_bytes": kept["clip_bytes"],
        "kept_clip_bytes_per_accepted_s": round(kept["clip_bytes"] / max(kept["accepted_s"], 1e-9), 1),
        "scorer": models.scorer.name, "faces_stride": cfg.faces.stride, "small_side": cfg.probe.small_side,
    }
    data_root.mkdir(parents=True, exist_ok=True)
    (data_root / "bench_curate.json").write_text(json.dumps(out, indent=2))
    return out


def summary(out: dict) -> str:
    """The figures a reader wants first, as a few lines of text (benchmarks.run prints them)."""
    lines = [f"curation {out['curate_cpu_s_per_video_s']:.3f} CPU s per video s vs plain decode "
             f"{out['plain_decode_cpu_s_per_video_s']:.3f}: {out['ratio_to_plain_decode']:.2f}x "
             f"(target <= {out['target_ratio']:g}x; without identity {out['ratio_to_plain_decode_without_identity']:.2f}x, "
             f"without TransNetV2 {out['ratio_without_transnet']:.2f}x) on {out['videos']} videos, {out['video_s']:.0f} s "
             f"({out['source']})",
             "by resolution: " + ", ".join(f"{k} {v['ratio_to_plain_decode']:.2f}x ({v['videos']} videos)"
                                           for k, v in sorted(out["by_resolution"].items())),
             f"{'stage':<18} {'CPU s':>8} {'share':>7} {'x decode':>9}"]
    for k in out["per_stage_cpu_s"]:
        lines.append(f"{k:<18} {out['per_stage_cpu_s'][k]:>8.2f} {out['per_stage_share_of_curation'][k]:>7.1%} "
                     f"{out['per_stage_ratio_to_plain_decode'][k]:>9.2f}")
    lines.append(f"TransNetV2: {out['transnet_share_of_curation']:.1%} of curation, "
                 f"{out['transnet_frames_per_decoded_frame']:.2f} network frames per decoded frame, "
                 f"{out['transnet_cpu_s_per_network_frame'] * 1000:.1f} CPU ms each")
    f = out["identity_faces_embedded"]
    lines.append(f"identity ({out['identity_model']}): {out['identity_cpu_s_per_accepted_clip']:.3f} CPU s per accepted clip "
                 f"({out['identity_clip_embedding_cpu_s_per_accepted_clip']:.3f} of it the clip's {out['identity_frames_per_clip']} "
                 f"embeddings), {out['identity_cpu_s_per_embedded_face']:.3f} per embedded face ({f['clips']} for clips, "
                 f"{f['tracking']} for tracking); curation {out['curate_cpu_s_per_accepted_clip']:.3f} CPU s per "
                 f"accepted clip ({out['accepted_clips']} clips)")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_curate", description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="data/bench/curate", help="folder for bench_curate.json (and the corpus)")
    ap.add_argument("--videos", type=Path, help="measure every video file in this folder instead of the corpus")
    ap.add_argument("--repeats", type=int, default=2, help="runs per video; the best is kept")
    args = ap.parse_args()
    res = run(Path(args.out), args.repeats, args.videos)
    print(json.dumps(res, indent=2))
    print(summary(res))
