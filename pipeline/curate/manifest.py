"""Curation outputs: per-video state files (resume) and the tables built from them.

<data>/curate/state/<safe video id>.json   one per finished video, written atomically when it
                                           finishes; a re-run skips videos whose state is final
                                           and was made with the same stage parameters
<data>/curate/clips.parquet                pipeline.schema.CLIPS, sorted by (video_id, start_frame)
<data>/curate/videos.parquet               pipeline.schema.VIDEOS: download status, error class, message, probe metadata
<data>/curate/rejections.parquet           pipeline.schema.REJECTIONS: every rejected span with its stage and reason
<data>/curate/stats.json, summary.txt      counts per status and reason, CPU time per stage

The tables are always rebuilt from the state files of the current sources, so an interrupted
and resumed run writes exactly what an uninterrupted run writes.
"""
from __future__ import annotations

import json
import math
from collections import Counter

import pyarrow as pa

from pipeline.paths import DataRoot, safe_name
from pipeline.schema import CLIPS, REJECTIONS, VIDEOS

STATE_VERSION = 1

def frame_accounting(clips: list[dict], rejections: list[dict], num_frames: int) -> list[str]:
    """What breaks, in one video's rows, the rule that every decoded frame lies in exactly one clip row
    (accepted or rejected) or, outside every clip, in exactly one rejection row, each with its reason.
    [] when the rule holds. A rejected clip also has a rejection row of its own span and reason (stage
    "filters"): that row is the clip's record in the rejections table, not a second home for its frames."""
    problems: list[str] = []
    homes: list[tuple[int, int, str]] = []
    rejected_clips: dict[tuple[int, int], str] = {}
    for c in clips:
        s, e = int(c["start_frame"]), int(c["end_frame"])
        homes.append((s, e, f"clip {s}:{e}"))
        if c["status"] == "rejected":
            rejected_clips[(s, e)] = c["reason"]
            if not c["reason"]:
                problems.append(f"rejected clip {s}:{e} has no reason")
    recorded = set()
    for r in rejections:
        s, e, why = int(r["start_frame"]), int(r["end_frame"]), r["reason"]
        if not why:
            problems.append(f"rejection {s}:{e} has no reason")
        if rejected_clips.get((s, e)) == why and (s, e) not in recorded:
            recorded.add((s, e))
            continue
        homes.append((s, e, f"rejection {s}:{e} ({why})"))
    problems += [f"rejected clip {s}:{e} has no rejection row" for s, e in sorted(set(rejected_clips) - recorded)]
    pos = 0
    for s, e, what in sorted(homes):
        if e <= s:
            problems.append(f"{what} is empty")
        if s > pos:
            problems.append(f"frames {pos}:{s} are in no clip and no rejection")
        elif s < pos:
            problems.append(f"{what} overlaps frames before {pos}")
        pos = max(pos, e)
    if pos < num_frames:
        problems.append(f"frames {pos}:{num_frames} are in no clip and no rejection")
    elif pos > num_frames:
        problems.append(f"rows reach frame {pos}, past the video's {num_frames} frames")
    return problems


def frame_accounting_by_video(clips: list[dict], rejections: list[dict], videos: list[dict]) -> dict[str, list[str]]:
    """frame_accounting for every decoded video of the tables (rows as dicts): {video_id: problems}, only
    videos with problems. Videos never decoded (failed downloads, bad media) have no frames to account."""
    by_clip: dict[str, list] = {}
    by_rej: dict[str, list] = {}
    for r in clips:
        by_clip.setdefault(r["video_id"], []).append(r)
    for r in rejections:
        by_rej.setdefault(r["video_id"], []).append(r)
    out = {}
    for v in videos:
        n = v.get("num_frames")
        if n is None or n != n or v["status"] not in ("ok", "no_clips"):     # n != n: NaN from pandas
            continue
        bad = frame_accounting(by_clip.get(v["video_id"], []), by_rej.get(v["video_id"], []), int(n))
        if bad:
            out[v["video_id"]] = bad
    return out


def state_key(root: DataRoot, video_id: str) -> str:
    return root.key("curate", "state", safe_name(video_id) + ".json")


def write_state(root: DataRoot, state: dict) -> str:
    """One object, written atomically; it is also the commit marker of the video's kept clip files."""
    k = state_key(root, state["video_id"])
    root.write_text(k, json.dumps({"version": STATE_VERSION, **state}, sort_keys=True, allow_nan=True))
    return k


def read_state(root: DataRoot, video_id: str, fingerprint: str | None = None, final_only: bool = True) -> dict | None:
    """The finished state of a video, or None if absent, unreadable, not final, or made with other params.
    final_only=False: whatever state the file holds (a retryable failure's, say), None only if unreadable."""
    try:
        st = json.loads(root.read_text(state_key(root, video_id)))
    except (OSError, ValueError):
        return None
    if not final_only:
        return st
    if st.get("version") != STATE_VERSION or st.get("video_id") != video_id or not st.get("final"):
        return None
    if fingerprint is not None and st.get("fingerprint") != fingerprint:
        return None
    return st


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.Table.from_pydict(cols, schema=schema)


def build_tables(states: list[dict]) -> tuple[pa.Table, pa.Table, pa.Table]:
    clips, videos, rejections = [], [], []
    for st in sorted(states, key=lambda s: s["video_id"]):
        videos.append(st["video"])
        clips += sorted(st.get("clips", []), key=lambda r: (r["start_frame"], r["end_frame"]))
        rejections += sorted(st.get("rejections", []), key=lambda r: (r["start_frame"], r["end_frame"], r["reason"]))
    return _table(clips, CLIPS), _table(videos, VIDEOS), _table(rejections, REJECTIONS)


def write_outputs(root: DataRoot, states: list[dict], run_info: dict) -> dict:
    """Write the three tables, stats.json and summary.txt; returns the stats."""
    clips, videos, rejections = build_tables(states)
    root.write_parquet("curate/clips.parquet", clips)
    root.write_parquet("curate/videos.parquet", videos)
    root.write_parquet("curate/rejections.parquet", rejections)
    stats = make_stats(states, clips, videos, rejections, run_info)
    root.write_text("curate/stats.json", json.dumps(stats, indent=2, sort_keys=True))
    root.write_text("curate/summary.txt", summary_text(stats))
    return stats


def make_stats(states, clips: pa.Table, videos: pa.Table, rejections: pa.Table, run_info: dict) -> dict:
    c = clips.to_pydict()
    acc = [i for i, s in enumerate(c["status"]) if s == "accepted"]
    times: Counter = Counter()
    for st in states:
        times.update(st.get("times", {}))
    video_s = sum(d for d in videos.column("duration_s").to_pylist() if d and math.isfinite(d))
    cpu = sum(v for k, v in times.items() if k != "download")
    unaccounted = frame_accounting_by_video(clips.to_pylist(), rejections.to_pylist(), videos.to_pylist())
    return {
        # videos whose frames are not each in exactly one clip or rejection (a bug): {video_id: [problems]}
        "frame_accounting": {k: v[:5] for k, v in sorted(unaccounted.items())},
        "videos": len(states),
        "video_status": dict(Counter(videos.column("status").to_pylist())),
        "error_class": dict(Counter(e for e in videos.column("error_class").to_pylist() if e)),
        "clips": len(c["status"]), "accepted": len(acc), "rejected_clips": len(c["status"]) - len(acc),
        "rejections_by_reason": dict(Counter(rejections.column("reason").to_pylist())),
        "accepted_s": round(sum(c["duration_s"][i] for i in acc), 3),
        "video_s": round(video_s, 3),
        "quality_scorers": sorted(set(c["quality_scorer"])),
        "cpu_s_per_stage": {k: round(v, 4) for k, v in sorted(times.items()) if k != "download"},
        "download_wall_s": round(times.get("download", 0.0), 3),
        "cpu_s_per_video_s": round(cpu / video_s, 4) if video_s else None,
        **run_info,
    }


def summary_text(s: dict) -> str:
    lines = [
        f"curate: {s['videos']} videos -> {s['accepted']} accepted clips ({s['accepted_s']:.1f} s of "
        f"{s['video_s']:.1f} s of video), {s['rejected_clips']} rejected clips",
        "  videos:     " + (", ".join(f"{k} {v}" for k, v in sorted(s["video_status"].items())) or "none"),
        "  rejections: " + (", ".join(f"{k} {v}" for k, v in sorted(s["rejections_by_reason"].items())) or "none"),
        "  cpu s:      " + ", ".join(f"{k} {v:.2f}" for k, v in s["cpu_s_per_stage"].items())
        + f" ({s['cpu_s_per_video_s'] or 0:.2f} cpu s per video s); download {s['download_wall_s']:.1f} s wall",
    ]
    if s.get("frame_accounting"):
        lines.append(f"  WARNING:    {len(s['frame_accounting'])} videos have frames in no clip or rejection, or in "
                     f"two (stats.json frame_accounting)")
    ids = s.get("identities")
    if ids:
        per = ids.get("clips_per_identity") or []
        lines.append(f"  identities: {ids['identities']} people in {sum(per)} accepted clips "
                     f"(most {max(per, default=0)} clips), {ids['duplicates']} duplicate clips rejected")
    if s.get("wall_s") is not None:
        lines.append(f"  run:        {s.get('engine')} engine, {s.get('processed', 0)} processed, "
                     f"{s.get('skipped', 0)} resumed from state, {s['wall_s']:.1f} s wall")
    return "\n".join(lines) + "\n"
