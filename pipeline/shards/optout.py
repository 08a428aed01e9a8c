"""Opt-out by manifest edit, and `python -m pipeline.shards.optout verify --data DATA`.

A video leaves the dataset when its id or URL is in manifests/optout.csv, or when its row is
deleted from manifests/sources.csv. `apply` (called by every `python -m pipeline.shards` run,
before any new work) then, per video:
  1. writes the shards that held its clips again, without them, under successor names
     (faces-000003.tar -> faces-000003.1.tar; other shards keep their names and exact bytes);
  2. commits index.json (readers now see the successors), updates shards.parquet, and only then
     deletes the superseded shards (write-once names: nothing is overwritten in place);
  3. deletes its downloaded media, its kept clip files (clips/<id>/), its rows in
     curate/clips.parquet (the cut clips), its curate state and its cached features;
  4. records it in shards/removed.json (so it is never sharded again, even if re-listed) and
     appends an audit record to shards/optout_audit.jsonl.
Then, clip by clip (pipeline/shards/people.py): every clip whose identity matches an optout.csv
face photo (a person, whatever video they are in), and every copy of a clip removed in this run
(curate's duplicate links), so opting out one copy of some footage removes them all.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pipeline.paths import DataRoot, safe_name


class ManifestProblem(ValueError):
    """optout.csv / sources.csv could not be parsed; nothing was removed."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def load_state(sdir) -> dict:
    try:
        return json.loads(DataRoot.of(sdir).read_text("removed.json"))
    except FileNotFoundError:
        return {}


def read_manifests(optout_path, sources_path):
    """(OptOut or None, list[Source] or None); a malformed file raises ManifestProblem naming the row."""
    has_oo = bool(optout_path) and Path(optout_path).exists()
    has_src = bool(sources_path) and Path(sources_path).exists()
    if not (has_oo or has_src):
        return None, None
    from pipeline.curate.sources import ManifestError, load_optout, load_sources

    try:
        oo = load_optout(optout_path) if has_oo else None
        srcs = load_sources(sources_path) if has_src else None
    except ManifestError as e:
        raise ManifestProblem(str(e)) from None
    return oo, srcs


def _sourced(srcs) -> tuple[set, set]:
    from pipeline.ids import video_id_from_url

    ids, urls = set(), set()
    for s in srcs:
        urls.add(s.url)
        ids.add(video_id_from_url(s.url))
        if getattr(s, "video_id", None):
            ids.add(s.video_id)
    return ids, urls


def _unknown_entries(oo, videos: dict, state: dict) -> list[str]:
    """optout.csv values that match no video we know (now or already removed): reported, harmless."""
    if oo is None:
        return []
    known = {**{v: d["url"] for v, d in videos.items()}, **{v: d.get("url", "") for v, d in state.items()}}
    # a face_photo-only row (no value) names a person, not a video
    return [e.value for e in oo.entries if e.value and not any(e.matches(v, u) for v, u in known.items())]


def apply(root: DataRoot, cfg, index: dict, table, items: list[dict], log=print) -> dict:
    """Remove every opted-out / un-sourced video; returns a report with `blocked` (ids never to shard)."""
    from pipeline.curate.clusters import forget
    from pipeline.shards import people

    sdir = root.join("shards")
    oo, srcs = read_manifests(cfg.optout, cfg.sources)
    try:
        people.check_photos(oo, cfg)     # a face photo without one clear face: nothing is removed
    except ValueError as e:
        raise ManifestProblem(str(e)) from None
    state = load_state(sdir)
    videos: dict[str, dict] = {}
    for it in items:
        videos.setdefault(it["video_id"], {"url": it.get("url", ""), "origin": it["origin"]})
    for r in table.itertuples():
        videos.setdefault(r.video_id, {"url": r.url or "", "origin": r.origin})
    for vid, url in people.curated_videos(root).items():   # videos with no accepted clip (all duplicates, say)
        videos.setdefault(vid, {"url": url, "origin": "video"})

    targets: dict[str, str] = {}
    if oo is not None:
        for vid, v in videos.items():
            if oo.matches(vid, v["url"]):
                targets[vid] = "optout.csv"
    sources_note = ""
    if srcs is not None:
        from pipeline.curate.sources import normalize_url

        ids, urls = _sourced(srcs)
        vids = {vid: v for vid, v in videos.items() if v["origin"] == "video"}
        gone = [vid for vid, v in vids.items() if vid not in ids and normalize_url(v["url"] or "") not in urls]
        if vids and len(gone) == len(vids):
            # a sources file naming none of the data is the wrong file, not a request to delete everything
            sources_note = f"sources check skipped: {cfg.sources} lists none of the {len(vids)} known videos"
            log(sources_note)
        else:
            for vid in gone:
                targets.setdefault(vid, "sources.csv row deleted")
    unknown = _unknown_entries(oo, videos, state)
    if unknown:
        log(f"opt-out entries matching no known video (nothing to remove): {unknown}")

    report = {"removed_videos": [], "clips_removed": 0, "shards_rewritten": [], "shards_deleted": [],
              "files_deleted": [], "unknown": unknown,
              "sources_note": sources_note}
    every_clip = people.video_clip_ids(root, set(targets))   # duplicates too: their copies leave with them
    removed_now: set[str] = set()
    for vid in sorted(targets):
        rec = remove_video(root, sdir, vid, videos[vid]["url"], targets[vid], index, items, log)
        if rec is None:
            continue
        mine = set(rec["clips_removed"]) | {c for c, v in every_clip.items() if v == vid}
        removed_now |= mine
        forget(root, mine)
        entry = oo.entry_for(vid, videos[vid]["url"]) if targets[vid] == "optout.csv" else None
        if entry is not None:
            rec.update(request_value=entry.value, request_date=entry.date.isoformat(), reason=entry.reason,
                       optout_row=entry.row)
        state[vid] = {"url": videos[vid]["url"], "trigger": targets[vid], "time": rec["time"]}
        root.write_text("shards/removed.json", json.dumps(state, indent=1, sort_keys=True) + "\n")
        root.append_text("shards/optout_audit.jsonl", json.dumps(rec, sort_keys=True) + "\n")
        report["removed_videos"].append(vid)
        report["clips_removed"] += len(rec["clips_removed"])
        report["shards_rewritten"] += rec["shards_rewritten"]
        report["shards_deleted"] += rec["shards_deleted"]
        report["files_deleted"] += rec["files_deleted"]
        log(f"opt-out {vid} ({targets[vid]}): {len(rec['clips_removed'])} clips, "
            f"{len(rec['shards_rewritten'])} shards rewritten, {len(rec['files_deleted'])} files deleted")
    # people named by a face photo, and copies of what was removed, go clip by clip
    clips = people.clip_optouts(root, sdir, cfg, oo, index, items, removed_now, log)
    for rec in clips["records"]:
        root.append_text("shards/optout_audit.jsonl", json.dumps(rec, sort_keys=True) + "\n")
        report["shards_rewritten"] += rec["shards_rewritten"]
        report["shards_deleted"] += rec["shards_deleted"]
        report["files_deleted"] += rec["files_deleted"]
    report["clips_removed"] += clips["clips_removed"]
    report["people"] = clips["people"]
    report["blocked"] = set(state) | set(targets)
    report["blocked_clips"] = set(people.load_removed_clips(sdir))
    return report


def remove_video(root: DataRoot, sdir, vid: str, url: str, trigger: str, index: dict, items, log):
    """Do every removal step for one video; None when there was nothing left to remove."""
    from pipeline.shards import io as shardio

    table = shardio.load_table(sdir)
    mine = table[table["video_id"] == vid]
    clip_ids = set(mine["clip_id"]) | {it["clip_id"] for it in items if it["video_id"] == vid}
    rewritten, deleted_shards = shardio.rewrite_without(sdir, index, table, set(mine["clip_id"]))

    files: list[str] = []
    mine_items = [it for it in items if it["video_id"] == vid and it["origin"] == "video"]
    cands = [root.key(it[k]) for it in mine_items for k in ("media_path", "clip_path") if it.get(k)]
    cands += [root.key("media", n) for n in root.ls("media", f"{safe_name(vid)}.*")]
    cands += [root.key("shards", "cache", fp, f"{safe_name(c)}.npz")
              for fp in root.subdirs("shards/cache") for c in sorted(clip_ids)]
    cands += [root.key("curate", "state", f"{safe_name(vid)}.json")]
    partial = root.key("media", ".partial", safe_name(vid))   # a download the downloader left half-done
    if not root.remote and root.isdir(partial):
        root.rm_tree(partial)
        files.append(partial + "/")
    for k in dict.fromkeys(cands):
        if root.rm(k):
            files.append(k)
    files += root.rm_tree(root.key("clips", safe_name(vid)))     # kept clip crops (media.keep)
    clip_rows = _drop_clip_rows(root, vid)
    if not (len(mine) or files or clip_rows):
        return None
    return {"time": _now(), "video_id": vid, "url": url, "trigger": trigger, "clips_removed": sorted(clip_ids),
            "shards_rewritten": rewritten, "shards_deleted": deleted_shards, "files_deleted": files,
            "manifest_rows_removed": clip_rows}


def _drop_clip_rows(root: DataRoot, vid: str) -> int:
    """Remove the video's rows from curate/clips.parquet (its cut clips), keeping that file's schema."""
    import pyarrow.compute as pc

    p = "curate/clips.parquet"
    if not root.exists(p):
        return 0
    t = root.read_parquet(p)
    keep = pc.invert(pc.equal(t["video_id"], vid))
    n = t.num_rows - pc.sum(keep.cast("int64")).as_py() if t.num_rows else 0
    if n:
        root.write_parquet(p, t.filter(keep))
    return int(n)


# ---------------------------------------------------------------- verify

def verify(data: str | Path, optout_path: str, log=print, cfg=None) -> list[str]:
    """Scan every member of every shard; return one problem line per opted-out clip found: a clip of an
    opted-out or removed video, a removed clip or a copy of one (duplicate links), or a clip whose identity
    matches an optout.csv face photo. `cfg`: ShardsConfig for the photo rule (default: the encoder's)."""

    from pipeline.curate.clusters import copies_of, duplicate_links
    from pipeline.shards import io as shardio
    from pipeline.shards import people
    from pipeline.shards.config import ShardsConfig

    root = DataRoot.of(data)
    sdir = root.join("shards")
    oo, _ = read_manifests(optout_path, None)
    state = load_state(sdir)
    urls: dict[str, str] = {vid: s.get("url") or "" for vid, s in state.items()}
    removed_clips: set[str] = set(people.load_removed_clips(sdir))
    audit = "shards/optout_audit.jsonl"
    if root.exists(audit):
        for line in root.read_text(audit).splitlines():
            rec = json.loads(line)
            if rec.get("video_id"):
                urls.setdefault(rec["video_id"], rec.get("url") or "")
            removed_clips |= set(rec["clips_removed"])
    copies = copies_of(removed_clips, duplicate_links(root))
    for p in ("shards/shards.parquet", "curate/clips.parquet"):
        if root.exists(p):
            df = root.read_parquet(p, columns=["video_id", "url"]).to_pandas()
            for vid, u in zip(df["video_id"], df["url"]):
                urls.setdefault(vid, u or "")

    def opted(vid: str) -> bool:
        if vid in state:
            return True
        if oo is None:
            return False
        u = urls.get(vid, "")
        return oo.matches(vid, u)

    photos = oo is not None and bool(oo.photos)
    wanted = {"meta.json", "identity.npy"} if photos else {"meta.json"}
    problems, nshards, nsamples, found_in = [], 0, 0, {}
    for name in root.ls("shards", "*.tar"):     # every tar there, committed or not: one read each
        nshards += 1
        for key, members in shardio.read_samples(shardio.loc(sdir, name), wanted):
            nsamples += 1
            m = dict(members)
            meta = json.loads(m.get("meta.json", b"{}"))
            vid = meta.get("video_id", "")
            if key in removed_clips or opted(vid):
                problems.append(f"{name}: clip {key} of opted-out video {vid}")
            elif key in copies:
                problems.append(f"{name}: clip {key} of video {vid} is a copy of an opted-out clip")
            if photos and (found := people.sample_identity(m, name)) is not None:
                found_in[key] = found
    if photos:     # every sample's identity against every face photo
        try:
            found, _ = people.photo_matches(oo, found_in, cfg or ShardsConfig())
        except ValueError as e:
            raise ManifestProblem(str(e)) from None
        for k, m in sorted(found.items()):
            problems.append(f"{found_in[k]['shard']}: clip {k} of video {m['video_id']} shows the person of "
                            f"optout.csv row {m['optout_row']} (identity distance {m['distance']:.3f})")
    log(f"verify: scanned {nshards} shards, {nsamples} samples; {len(problems)} opted-out clips found"
        + (f" ({len(oo.photos)} face photos checked against every sample)" if oo is not None and oo.photos else ""))
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.shards.optout", description="opt-out checks")
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="fail if any clip of an opted-out video remains in a shard")
    v.add_argument("--data", default="data")
    v.add_argument("--optout", default="manifests/optout.csv")
    a = ap.parse_args(argv)
    try:
        problems = verify(a.data, a.optout)
    except ManifestProblem as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in problems:
        print(f"FAIL {p}")
    print("opt-out verify: " + ("FAILED" if problems else "ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
