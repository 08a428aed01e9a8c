"""People in the shards: identities of still pseudo-clips, opt-out by face photo, and copies of removed clips.

- Stills are not curated, so they have no clips.parquet row: their identity embedding is computed here
  from the portrait, and they take the identity_id of the nearest registered person within the
  same-person distance (else their own, `still-<clip_id>`), so a held-out person's portraits are held
  out too.
- Opt-out by person: an optout.csv row with a `face_photo`. Every clip, in a shard or waiting for one,
  whose identity embedding lies within `optout_max_distance` of the photo's (0 = the encoder's rule:
  dlib Euclidean < 0.6) leaves every shard, whatever video it is in; the audit log records each match
  with its distance. The clips go one by one: other people in the same videos stay.
- Copies: a clip that duplicates a removed clip (the duplicate links of pipeline/curate/clusters.py, in
  either direction) is removed with it, so opting out one copy of some footage removes every copy.
Removed clips are listed in shards/removed_clips.json and never sharded again; their rows in
curate/clips.parquet and their curate state become `rejected: opted_out` with the identity data erased,
their cached features are deleted, and the identity registry forgets them.
"""
from __future__ import annotations

import io
import json
import time
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.curate.identity import (
    DlibIdentity,
    IdentityConfig,
    NoFace,
    distance,
    encoder_rule,
    make_encoder,
)
from pipeline.paths import DataRoot, safe_name

REMOVED_CLIPS = "removed_clips.json"


@lru_cache(maxsize=4)
def encoder_for(model: str, arcface_model: str = ""):
    """The identity encoder that made `model` embeddings (loaded once per process)."""
    backend = "dlib" if model == DlibIdentity.name else "arcface"
    return make_encoder(IdentityConfig(backend=backend, arcface_model=arcface_model))


def rule(model: str, max_distance: float = 0.0) -> tuple[str, float]:
    """(metric, distance below which two embeddings are one person) for opt-out and still matching."""
    metric, same = encoder_rule(model, IdentityConfig())
    return metric, max_distance or same


def read_image(path: str | Path) -> np.ndarray:
    from pipeline.shards.stills import read_rgb

    return read_rgb(Path(path))


# ---------------------------------------------------------------- stills

def still_identities(root: DataRoot, items: list[dict], cfg, log=print) -> None:
    """Give still items (in place) identity, identity_model and identity_id (see the module doc)."""
    from pipeline.curate.clusters import load_registry

    stills = [it for it in items if it["origin"] == "still" and "identity" not in it]
    if not stills:
        return
    models = Counter(it.get("identity_model") for it in items if it["origin"] == "video" and it.get("identity_model"))
    model = models.most_common(1)[0][0] if models else DlibIdentity.name
    enc = encoder_for(model, cfg.arcface_model)
    metric, same = rule(model, cfg.optout_max_distance)
    reg = load_registry(root, model)["identities"]
    ids = sorted(reg)
    cents = np.asarray([reg[i]["centroid"] for i in ids]) if ids else None
    for it in stills:
        try:
            emb = enc.photo(read_image(it["media_path"]))
        except (NoFace, ValueError) as e:
            log(f"still {Path(it['media_path']).name}: no identity ({e})")
            it.update(identity=None, identity_model=model, identity_id=f"still-{it['clip_id']}")
            continue
        ident = f"still-{it['clip_id']}"
        if cents is not None:
            d = distance(cents, emb, metric)
            if d.min() < same:
                ident = ids[int(d.argmin())]
        it.update(identity=emb.tolist(), identity_model=model, identity_id=ident)


# ---------------------------------------------------------------- who is in the shards

def shard_identities(sdir, index: dict) -> dict[str, dict]:
    """{clip_id: {video_id, identity (D,), identity_model, shard}} of every indexed shard sample with an identity."""
    from pipeline.shards.io import exists, loc, read_samples

    out = {}
    for entry in index["shards"]:
        path = loc(sdir, entry["name"])
        if not exists(path):
            continue
        for key, members in read_samples(path, {"identity.npy", "meta.json"}):
            found = sample_identity(dict(members), entry["name"])
            if found is not None:
                out[key] = found
    return out


def sample_identity(members: dict[str, bytes], shard: str) -> dict | None:
    """{video_id, identity (D,), identity_model, shard} of one shard sample's members, None without one."""
    if "identity.npy" not in members:
        return None
    emb = np.load(io.BytesIO(members["identity.npy"]), allow_pickle=False)
    if not emb.size:
        return None
    meta = json.loads(members["meta.json"])
    return {"video_id": meta["video_id"], "identity": emb, "identity_model": meta.get("identity_model"), "shard": shard}


def photo_matches(oo, candidates: dict[str, dict], cfg) -> tuple[dict[str, dict], list[dict]]:
    """Match optout.csv face photos against candidate clips {clip_id: {video_id, identity, identity_model}}.
    -> ({clip_id: match record}, [per-photo summary]). A photo without exactly one face raises ValueError."""
    matches: dict[str, dict] = {}
    summary = []
    models = sorted({c["identity_model"] for c in candidates.values() if c.get("identity_model")}) or [DlibIdentity.name]
    for e in oo.photos:
        try:
            img = read_image(e.photo)
        except ValueError as err:
            raise ValueError(f"optout.csv row {e.row}: face_photo {Path(e.photo).name}: {err}") from None
        for model in models:
            enc = encoder_for(model, cfg.arcface_model)
            try:
                emb = enc.photo(img)
            except NoFace as err:
                raise ValueError(f"optout.csv row {e.row}: face_photo {Path(e.photo).name}: {err}") from None
            metric, limit = rule(model, cfg.optout_max_distance)
            keys = sorted(k for k, c in candidates.items() if c.get("identity_model") == model)
            d = distance(np.asarray([candidates[k]["identity"] for k in keys]), emb, metric) if keys else []
            hit = [(k, float(v)) for k, v in zip(keys, d) if v < limit]
            summary.append({"optout_row": e.row, "photo": Path(e.photo).name, "model": model, "metric": metric,
                            "threshold": limit, "matched": len(hit),
                            "nearest_other": float(min((v for v in d if v >= limit), default=float("nan")))})
            for k, v in hit:
                if k not in matches or v < matches[k]["distance"]:
                    matches[k] = {"clip_id": k, "video_id": candidates[k]["video_id"], "distance": round(v, 4),
                                  "optout_row": e.row, "photo": Path(e.photo).name,
                                  "request_date": e.date.isoformat(), "reason": e.reason}
    return matches, summary


def clip_optouts(root: DataRoot, sdir, cfg, oo, index: dict, items: list[dict], removed_now: set[str],
                 log=print) -> dict:
    """After the video opt-outs of this run: remove the clips of people named by a face photo, then every copy
    of a clip removed in this run. Returns {"people": [per-photo summary], "records": [audit records],
    "clips_removed": n}. A photo without exactly one face raises ValueError (check_photos runs it first)."""
    from pipeline.curate.clusters import copies_of, duplicate_links

    out: dict = {"people": [], "records": [], "clips_removed": 0}
    gone = set(load_removed_clips(sdir))
    if oo is not None and oo.photos:
        cands = shard_identities(sdir, index)
        for it in items:
            if it.get("identity") is not None and it["clip_id"] not in cands and it["clip_id"] not in gone:
                cands[it["clip_id"]] = {"video_id": it["video_id"], "identity": np.asarray(it["identity"]),
                                        "identity_model": it.get("identity_model")}
        matches, out["people"] = photo_matches(oo, cands, cfg)
        for row in sorted({m["optout_row"] for m in matches.values()}):
            mine = {k: m for k, m in matches.items() if m["optout_row"] == row}
            rec = remove_clips(root, sdir, mine, "optout.csv face_photo", index, log)
            if rec is not None:
                first = next(iter(mine.values()))
                summary = next(p for p in out["people"] if p["optout_row"] == row)
                rec.update({k: first[k] for k in ("optout_row", "photo", "request_date", "reason")},
                           model=summary["model"], metric=summary["metric"], threshold=summary["threshold"])
                out["records"].append(rec)
                removed_now |= set(mine)
                log(f"opt-out by face photo (row {row}, {first['photo']}): {len(mine)} clips of "
                    f"{len({m['video_id'] for m in mine.values()})} videos, distances "
                    f"{min(m['distance'] for m in mine.values()):.3f}-{max(m['distance'] for m in mine.values()):.3f}")
    links = duplicate_links(root)
    copies = copies_of(removed_now, links) - gone - removed_now
    if copies:
        vid = {it["clip_id"]: it["video_id"] for it in items}
        info = {c: {"clip_id": c, "video_id": vid.get(c, ""), "copy_of": links.get(c) or next(
            (a for a, b in links.items() if b == c), "")} for c in sorted(copies)}
        rec = remove_clips(root, sdir, info, "copy of a removed clip", index, log)
        if rec is not None:
            out["records"].append(rec)
            log(f"opt-out: {len(copies)} copies of removed clips removed too")
    out["clips_removed"] = sum(len(r["clips_removed"]) for r in out["records"])
    return out


def check_photos(oo, cfg) -> None:
    """Every face_photo shows one face, before anything is removed (ValueError naming the row)."""
    if oo is None or not oo.photos:
        return
    photo_matches(oo, {}, cfg)


def curated_videos(root: DataRoot) -> dict[str, str]:
    """{video_id: url} of every video in curate/clips.parquet, whatever the status of its clips."""
    p = "curate/clips.parquet"
    if not root.exists(p):
        return {}
    t = root.read_parquet(p, columns=["video_id", "url"]).to_pydict()
    return {v: u or "" for v, u in zip(t["video_id"], t["url"])}


def video_clip_ids(root: DataRoot, video_ids: set[str]) -> dict[str, str]:
    """{clip_id: video_id} of these videos in curate/clips.parquet, whatever the status (duplicates too)."""
    p = "curate/clips.parquet"
    if not video_ids or not root.exists(p):
        return {}
    t = root.read_parquet(p, columns=["clip_id", "video_id"]).to_pydict()
    return {c: v for c, v in zip(t["clip_id"], t["video_id"]) if v in video_ids}


# ---------------------------------------------------------------- removal of single clips

def load_removed_clips(sdir) -> dict:
    d = DataRoot.of(sdir)
    return json.loads(d.read_text(REMOVED_CLIPS)) if d.exists(REMOVED_CLIPS) else {}


def remove_clips(root: DataRoot, sdir, clips: dict[str, dict], trigger: str, index: dict, log=print) -> dict | None:
    """Remove single clips {clip_id: info} everywhere (see the module doc); the audit record, or None."""
    from pipeline.curate.clusters import forget
    from pipeline.shards import io as shardio

    ids = set(clips)
    table = shardio.load_table(sdir)
    rewritten, deleted = shardio.rewrite_without(sdir, index, table, ids)
    files = []
    names = {f"{safe_name(c)}.npz" for c in ids}
    for fp in root.subdirs("shards/cache"):
        for name in root.ls(f"shards/cache/{fp}", "*.npz"):
            if name in names and root.rm(f"shards/cache/{fp}/{name}"):
                files.append(f"shards/cache/{fp}/{name}")
    rows = _mark_rows(root, ids)
    forget(root, ids)
    removed = load_removed_clips(sdir)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for c, info in clips.items():
        removed[c] = {"video_id": info.get("video_id", ""), "trigger": trigger, "time": now}
    DataRoot.of(sdir).write_text(REMOVED_CLIPS, json.dumps(removed, indent=1, sort_keys=True) + "\n")
    if not (rewritten or deleted or files or rows):
        return None
    return {"time": now, "trigger": trigger, "clips_removed": sorted(ids), "matches": [clips[c] for c in sorted(ids)],
            "shards_rewritten": rewritten, "shards_deleted": deleted, "files_deleted": files,
            "manifest_rows_opted_out": rows}


def _mark_rows(root: DataRoot, ids: set[str]) -> int:
    """The clips' rows in curate/clips.parquet and in their videos' curate state become `rejected:
    opted_out` with their identity data erased (the span stays accounted for: every frame of a video is in
    exactly one clip or rejection); the rejection is added to rejections.parquet and the state."""
    import pyarrow as pa

    erased = {"status": "rejected", "reason": "opted_out", "identity": None, "identity_id": None,
              "face_hashes": None, "frame_hashes": None}
    span = ("video_id", "url", "start_frame", "end_frame", "start_s", "end_s")
    n, new_rejections = 0, []
    p = "curate/clips.parquet"
    if root.exists(p):
        t = root.read_parquet(p)
        rows = t.to_pylist()
        for r in rows:
            if r["clip_id"] in ids and r["reason"] != "opted_out":
                r.update({k: v for k, v in erased.items() if k in r})
                new_rejections.append({k: r[k] for k in span} | {"stage": "optout", "reason": "opted_out"})
                n += 1
        if n:
            root.write_parquet(p, pa.Table.from_pylist(rows, schema=t.schema))
    rp = "curate/rejections.parquet"
    if new_rejections and root.exists(rp):
        t = root.read_parquet(rp)
        root.write_parquet(rp, pa.Table.from_pylist(t.to_pylist() + new_rejections, schema=t.schema))
    for name in root.ls("curate/state", "*.json"):
        sp = f"curate/state/{name}"
        st = json.loads(root.read_text(sp))
        hit = [c for c in st.get("clips", []) if c.get("clip_id") in ids and c.get("reason") != "opted_out"]
        for c in hit:
            c.update(erased)
            st.setdefault("rejections", []).append({k: c[k] for k in span} | {"stage": "optout", "reason": "opted_out"})
        if hit:
            root.write_text(sp, json.dumps(st, sort_keys=True, allow_nan=True))
    return n
