"""The order of one `python -m pipeline.shards` run: accepted clips (+ still pseudo-clips) -> WebDataset shards.

Order of a run: recover from a killed run -> apply opt-outs (rewrite only the shards that held
removed clips) -> encode clips that have no cached features (Ray Data actor pool, or sequentially)
-> pack not-yet-sharded clips into NEW shards -> index.json, shards.parquet, stats.json.
Features are cached per clip under shards/cache/<encoder fingerprint>/ so a killed run resumes
without recomputing, and a re-run with nothing new writes no shard, index or table.
The config is in config.py, the encoders' runners and the shard packing in writer.py, the CLI in
__main__.py.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.paths import DataRoot
from pipeline.shards.config import InputProblem, ShardsConfig
from pipeline.shards.decode import work_units
from pipeline.shards.io import cache_name
from pipeline.shards.writer import encode_ray, encode_sequential, iter_decoded, write_new_shards
from pipeline.storage import scratch_dir

_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")   # a tar key: no dots (webdataset splits there), no slashes


# ---------------------------------------------------------------- work items

def clip_items(root: DataRoot, cfg: ShardsConfig) -> tuple[list[dict], list[dict]]:
    """Accepted clips as work items, plus per-row errors (bad ids)."""
    import pandas as pd

    if not root.exists(cfg.clips):
        return [], []
    with root.open(cfg.clips) as f:
        df = pd.read_parquet(f)
    df = df[df["status"] == "accepted"]
    items, bad = [], []
    for r in df.to_dict("records"):
        if not _KEY.match(str(r["clip_id"])):
            bad.append({"clip_id": str(r["clip_id"])[:80], "video_id": r["video_id"], "reason": "clip_id not a safe key"})
            continue
        ident = r.get("identity")
        items.append({"clip_id": r["clip_id"], "video_id": r["video_id"], "url": r["url"] or "", "origin": "video",
                      "media_path": r["media_path"], "start_frame": int(r["start_frame"]),
                      "clip_path": r["clip_path"] if isinstance(r.get("clip_path"), str) else "",   # null: none kept
                      "end_frame": int(r["end_frame"]), "fps": float(r["fps"]), "crop_x0": int(r["crop_x0"]),
                      "crop_y0": int(r["crop_y0"]), "crop_size": int(r["crop_size"]),
                      # who is in the clip (curate's identity step); an older manifest has none
                      "identity": None if ident is None else [float(v) for v in ident],
                      "identity_model": r.get("identity_model") or "", "identity_id": r.get("identity_id") or ""})
    return items, bad


# ---------------------------------------------------------------- models

def prepare_models(spec: str, root: DataRoot, cfg: ShardsConfig, items: list[dict], log):
    """'tiny' builds (once) small models under <data>/models/tiny and fits the VAE on the clips' crops."""
    from pipeline.shards.model_sets import build_tiny_models, resolve_models
    from pipeline.shards.vaefit import fit_tiny_models

    if spec != "tiny":
        try:
            models = resolve_models(spec, cfg.encoder)
        except FileNotFoundError as e:
            raise InputProblem(str(e)) from None
        if spec in ("", "default"):
            preflight(models)
        return models
    fitted = root.exists("models/tiny/models.json") and json.loads(root.read_text("models/tiny/models.json")).get("fitted")
    if not fitted:
        # built locally (in scratch space for an object store, then uploaded whole: the models.json that
        # says "fitted" is written last, so a half-built set is rebuilt)
        d = root.dir("models", "tiny") if not root.remote else Path(tempfile.mkdtemp(dir=scratch_dir("models")))
        log(f"building tiny models in {root.join('models', 'tiny')}")
        build_tiny_models(d, cfg.tiny_seed, sample_size=cfg.encoder.size)
        frames = []
        for unit in work_units(items):
            if sum(len(f) for f in frames) >= cfg.tiny_fit_frames:
                break
            frames += [got[0] for _, got in iter_decoded(unit, root.url, cfg) if not isinstance(got, Exception)]
        if frames and cfg.tiny_fit_steps > 0:
            log(f"fitting tiny VAE: {cfg.tiny_fit_steps} steps on {sum(len(f) for f in frames)} crops "
                f"of {cfg.encoder.size} px")
            # what to do about a slow fit; Ctrl-C is safe: the models count only once fitted (models.json)
            hint = (f"--size {cfg.encoder.size // 2} would make a step ~4x cheaper (the demo uses 64), "
                    if cfg.encoder.size > 64 else "") + \
                "fewer --fit-steps shorten it; Ctrl-C now leaves nothing half-done"
            fit_tiny_models(d, np.concatenate(frames)[: cfg.tiny_fit_frames], cfg.tiny_fit_steps, cfg.tiny_seed,
                            cfg.tiny_fit_batch, log=log, hint=hint)
        if root.remote:
            root.put_tree(d, "models/tiny", last="models.json")
            shutil.rmtree(d, ignore_errors=True)
    return resolve_models(str(root.mirror("models/tiny")), cfg.encoder)   # the folder itself when local


def preflight(models) -> None:
    """Load hub models once in the driver, so a missing download fails here in one line, not in every actor."""
    from pipeline.shards.encode import load_clip, load_vae

    for what, load in (("VAE " + models.vae, lambda: load_vae(models.vae)),
                       ("CLIP " + models.clip_label, lambda: load_clip(models.clip_model, models.clip_pretrained))):
        try:
            load()
        except Exception as e:
            raise InputProblem(f"cannot load {what} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                               "offline? use --models tiny or a local dir with vae/ and clip/") from None


def encoder_record(cfg: ShardsConfig, models) -> dict:
    rec = {"vae": models.vae_label, "clip_model": models.clip_label, "size": cfg.encoder.size,
           "stride": cfg.encoder.stride, "max_frames": cfg.encoder.max_frames, "stills_frames": cfg.stills_frames}
    rec["fingerprint"] = hashlib.sha1(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:12]
    return rec


# ---------------------------------------------------------------- face gates

def screen_stills(pending: list[dict], log) -> tuple[list[dict], list[dict]]:
    """Pending items without the still portraits that fail a clip's face checks (stills.StillChecker),
    and a record of those: [{"clip_id", "file", "reason"}]."""
    from pipeline.shards.stills import StillChecker

    if not any(it["origin"] == "still" for it in pending):
        return pending, []
    check, keep, rejected = StillChecker(), [], []
    for it in pending:
        why = check(Path(it["media_path"])) if it["origin"] == "still" else ""
        if why:
            rejected.append({"clip_id": it["clip_id"], "file": it["url"], "reason": why})
            log(f"still {it['url']} rejected: {why}")
        else:
            keep.append(it)
    return keep, rejected


# ---------------------------------------------------------------- the run

def run(data: str | Path, cfg: ShardsConfig, log=print) -> dict:
    from pipeline.shards import io as shardio
    from pipeline.shards import optout
    from pipeline.shards.stills import still_items

    t_start = time.perf_counter()
    root = DataRoot.of(data)
    root.makedirs("shards")
    sdir = root.join("shards")          # a path or URL
    index = shardio.load_index(sdir)
    recovered = shardio.recover(sdir, index)
    if recovered:
        log(f"recovered from an interrupted run: removed {recovered}")
    table = shardio.load_table(sdir)

    items, bad = clip_items(root, cfg)
    table, fixed = shardio.reconcile_table(sdir, index, table, items)
    if fixed:       # a run died between committing the index and writing the table
        log(f"recovered from an interrupted run: {fixed} shards.parquet rows follow index.json again")
        shardio.save_table(sdir, table)
    if cfg.stills:
        if not Path(cfg.stills).is_dir():
            raise InputProblem(f"stills folder not found: {cfg.stills}")
        items += still_items(Path(cfg.stills), cfg.stills_fps, cfg.stills_frames)
        from pipeline.shards.people import still_identities

        still_identities(root, [it for it in items if it["clip_id"] not in set(table["clip_id"])], cfg, log)
    # opt-outs first: a malformed optout.csv raises here, before anything is touched
    removal = optout.apply(root, cfg, index, table, items, log)
    table = shardio.load_table(sdir)
    blocked = removal["blocked"]
    done = set(table["clip_id"])
    pending = [it for it in items if it["clip_id"] not in done and it["video_id"] not in blocked
               and it["clip_id"] not in removal["blocked_clips"]]
    pending.sort(key=lambda it: (it["origin"], it["video_id"], it.get("start_frame", 0), it["clip_id"]))
    pending, stills_rejected = screen_stills(pending, log)

    stats = {"data": root.url, "runner": cfg.runner, "clips_total": len(items), "clips_pending": len(pending),
             "bad_rows": bad, "recovered": recovered, "optout": {k: v for k, v in removal.items() if k != "blocked"},
             "encoded": 0, "cache_hits": 0, "failed": [], "shards_written": [], "encode_s": 0.0,
             "frames_encoded": 0, "model_s": 0.0, "vae_clip_s": 0.0, "vae_clip_images_per_s": None,
             "stills_rejected": stills_rejected, "dropped_landmarks": [], "min_landmark_rate": cfg.min_landmark_rate}
    written = []
    if pending:
        models = prepare_models(cfg.models, root, cfg, pending, log)
        enc_rec = encoder_record(cfg, models)
        if index.get("encoder") and index["shards"] and index["encoder"]["fingerprint"] != enc_rec["fingerprint"]:
            raise InputProblem(f"shards in {sdir} were built with {index['encoder']}; this run would use "
                               f"{enc_rec}. Use the same models/size or a new data root.")
        index["encoder"] = enc_rec
        root.makedirs(f"shards/cache/{enc_rec['fingerprint']}")
        cache_dir = root.join("shards", "cache", enc_rec["fingerprint"])
        todo = [it for it in pending if cache_name(it["clip_id"]) not in _cached(cache_dir)]
        stats["cache_hits"] = len(pending) - len(todo)
        t0 = time.perf_counter()
        if todo:
            log(f"encoding {len(todo)} clips ({cfg.runner}, models {models.vae_label} / {models.clip_label})")
            runner = encode_ray if cfg.runner == "ray" else encode_sequential
            results = runner(todo, root, cfg, models, cache_dir, log)
            stats["encoded"] = sum(r["status"] == "ok" for r in results)
            stats["frames_encoded"] = sum(r["nframes"] for r in results)
            stats["model_s"] = sum(r["model_s"] for r in results)   # pure encoder time inside the stage
            # VAE + CLIP alone (no face mesh): images/s per encoder actor, i.e. per GPU on a GPU machine
            stats["vae_clip_s"] = sum(r["vae_clip_s"] for r in results)
            if stats["vae_clip_s"] > 0:
                stats["vae_clip_images_per_s"] = stats["frames_encoded"] / stats["vae_clip_s"]
            stats["failed"] = [r for r in results if r["status"] != "ok"]
        stats["encode_s"] = time.perf_counter() - t0
        have = _cached(cache_dir)
        ready = [it for it in pending if cache_name(it["clip_id"]) in have]
        written, stats["dropped_landmarks"] = write_new_shards(sdir, cfg, index, table, ready, cache_dir, log)
        if _media_keep(root) == "none":     # retention: a clip's kept crop goes once a committed shard holds it
            unwritten = {d["clip_id"] for d in stats["dropped_landmarks"]}   # not in a shard: they keep their crop
            stats["clip_files_deleted"] = sum(root.rm(it["clip_path"]) for it in ready
                                              if it.get("clip_path") and it["clip_id"] not in unwritten)
    stats["shards_written"] = written
    stats["shards_total"] = len(index["shards"])
    stats["samples_total"] = int(sum(s["nsamples"] for s in index["shards"]))
    stats["seconds"] = time.perf_counter() - t_start
    stats["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    root.write_text("shards/stats.json", json.dumps(stats, indent=1, default=str) + "\n")
    return stats


def _cached(cache_dir) -> set[str]:
    """Names of the cached feature files (one listing, not one request per clip on an object store)."""
    return set(DataRoot.of(cache_dir).ls("", "*.npz"))


def _media_keep(root: DataRoot) -> str:
    """The media.keep policy of the curate run that made the clips (curate/stats.json), "all" if unknown."""
    try:
        return json.loads(root.read_text("curate/stats.json")).get("media_keep") or "all"
    except (OSError, ValueError):
        return "all"


def summary(stats: dict) -> str:
    o = stats["optout"]
    lines = [f"shards: {stats['clips_total']} clips known, {stats['clips_pending']} pending, "
             f"{stats['encoded']} encoded, {stats['cache_hits']} from cache, {len(stats['failed'])} failed",
             f"        {len(stats['shards_written'])} new shards; total {stats['shards_total']} shards / "
             f"{stats['samples_total']} samples; {stats['seconds']:.1f}s"]
    if o.get("removed_videos") or o.get("unknown"):
        lines.append(f"opt-out: removed {len(o.get('removed_videos', []))} videos, {o.get('clips_removed', 0)} clips, "
                     f"rewrote {len(o.get('shards_rewritten', []))} shards; unknown ids: {o.get('unknown', [])}")
    # face gates: every run says how many clips lacked landmarks, even when none did
    lines.append(f"        dropped {len(stats.get('dropped_landmarks', []))} clips with face landmarks on fewer than "
                 f"{stats.get('min_landmark_rate', 0.9):.0%} of their frames (stats.json dropped_landmarks)")
    if stats.get("stills_rejected"):
        by = Counter(r["reason"] for r in stats["stills_rejected"])
        lines.append(f"        rejected {len(stats['stills_rejected'])} still portraits by the face check ("
                     + ", ".join(f"{k} {v}" for k, v in sorted(by.items())) + ")")
    for f in stats["failed"][:10]:
        lines.append(f"  failed {f['clip_id']}: {f['reason']}")
    return "\n".join(lines)
