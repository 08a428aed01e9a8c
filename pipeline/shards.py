"""`python -m pipeline.shards`: accepted clips (+ still pseudo-clips) -> WebDataset shards.

Order of a run: recover from a killed run -> apply opt-outs (rewrite only the shards that held
removed clips) -> encode clips that have no cached features (Ray Data actor pool, or sequentially)
-> pack not-yet-sharded clips into NEW shards -> index.json, shards.parquet, stats.json.
Features are cached per clip under shards/cache/<encoder fingerprint>/ so a killed run resumes
without recomputing, and a re-run with nothing new writes no shard, index or table.
This module holds the config, the run's order and the CLI; the encoders' runners and the shard
packing are in pipeline/shardwriter.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.encoders import EncoderConfig, work_units
from pipeline.paths import DataRoot, atomic_write_text
from pipeline.shardio import cache_path
from pipeline.shardwriter import encode_ray, encode_sequential, iter_decoded, write_new_shards

_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")   # a tar key: no dots (webdataset splits there), no slashes


class InputProblem(ValueError):
    """A missing or unusable input given on the command line / DAG; nothing was changed."""


@dataclass
class ShardsConfig:
    name: str = "faces"                 # shard file prefix
    samples_per_shard: int = 64
    runner: str = "ray"                 # ray | sequential
    models: str = "default"             # default | tiny | a dir with vae/ and clip/
    clips: str = "curate/clips.parquet"  # relative to the data root
    sources: str = "manifests/sources.csv"
    optout: str = "manifests/optout.csv"
    stills: str = ""                    # folder of portraits -> pseudo-clips ("" = none)
    stills_frames: int = 16
    stills_fps: float = 25.0
    decode_cpus: float = 0.25           # Ray: fractional CPUs, or 2 cores deadlock (DESIGN.md)
    encode_cpus: float = 0.5
    encode_gpus: float = 1.0            # used only when CUDA is present
    max_actors: int = 2
    clips_per_batch: int = 4
    tiny_seed: int = 0
    tiny_fit_steps: int = 300
    tiny_fit_frames: int = 512
    tiny_fit_batch: int = 8
    encoder: EncoderConfig = field(default_factory=EncoderConfig)


# YAML keys that name a field differently (section, key) -> ShardsConfig field
_RENAME = {("stills", "frames"): "stills_frames", ("stills", "fps"): "stills_fps",
           ("decode", "num_cpus"): "decode_cpus", ("encode", "num_cpus"): "encode_cpus",
           ("encode", "num_gpus"): "encode_gpus", ("tiny", "seed"): "tiny_seed",
           ("tiny", "fit_steps"): "tiny_fit_steps", ("tiny", "fit_frames"): "tiny_fit_frames",
           ("tiny", "fit_batch"): "tiny_fit_batch"}
_STAGES = ("decode", "encode", "stills", "write")


def load_dag(path: str | Path | None) -> ShardsConfig:
    """dags/shards.yaml -> ShardsConfig; unknown keys are an error (a typo must not be ignored).

    Top-level keys and `inputs:` set ShardsConfig fields; `tiny:` and `stages:` (decode, encode,
    stills, write) set their renamed fields (_RENAME), and decode/encode also EncoderConfig's."""
    from pipeline.configfile import check_keys, load_yaml

    cfg = ShardsConfig()
    if not path:
        return cfg
    where = str(path)
    doc = load_yaml(path)
    top = {f.name for f in dataclasses.fields(ShardsConfig)} - {"encoder"}
    enc = {f.name for f in dataclasses.fields(EncoderConfig)}
    own = {"": top | {"inputs", "stages", "tiny"}, "inputs": top, "tiny": set(), "decode": enc,
           "encode": enc | top, "stills": set(), "write": top}   # plus each section's _RENAME keys

    def put(section: str, vals) -> None:
        check_keys(vals, own[section] | {k for s, k in _RENAME if s == section}, where, section)
        for k, v in vals.items():
            if (section, k) in _RENAME:
                setattr(cfg, _RENAME[(section, k)], v)
            elif section in ("decode", "encode") and k in enc:
                setattr(cfg.encoder, k, v)
            else:
                setattr(cfg, k, v)

    for k, v in doc.items():          # in file order: a later key wins, as it reads
        if k == "stages":
            check_keys(v or {}, _STAGES, where, "stages")
            for stage, kv in (v or {}).items():
                put(stage, kv or {})
        elif k in ("inputs", "tiny"):
            put(k, v or {})
        else:
            put("", {k: v})
    return cfg


# ---------------------------------------------------------------- work items

def clip_items(root: DataRoot, cfg: ShardsConfig) -> tuple[list[dict], list[dict]]:
    """Accepted clips as work items, plus per-row errors (bad ids)."""
    import pandas as pd

    p = root.path(cfg.clips)
    if not p.exists():
        return [], []
    df = pd.read_parquet(p)
    df = df[df["status"] == "accepted"]
    items, bad = [], []
    for r in df.to_dict("records"):
        if not _KEY.match(str(r["clip_id"])):
            bad.append({"clip_id": str(r["clip_id"])[:80], "video_id": r["video_id"], "reason": "clip_id not a safe key"})
            continue
        items.append({"clip_id": r["clip_id"], "video_id": r["video_id"], "url": r["url"] or "", "origin": "video",
                      "media_path": r["media_path"], "start_frame": int(r["start_frame"]),
                      "end_frame": int(r["end_frame"]), "fps": float(r["fps"]), "crop_x0": int(r["crop_x0"]),
                      "crop_y0": int(r["crop_y0"]), "crop_size": int(r["crop_size"])})
    return items, bad


# ---------------------------------------------------------------- models

def prepare_models(spec: str, root: DataRoot, cfg: ShardsConfig, items: list[dict], log):
    """'tiny' builds (once) small models under <data>/models/tiny and fits the VAE on the clips' crops."""
    from pipeline.encoders import build_tiny_models, fit_tiny_models, resolve_models

    if spec != "tiny":
        try:
            models = resolve_models(spec, cfg.encoder)
        except FileNotFoundError as e:
            raise InputProblem(str(e)) from None
        if spec in ("", "default"):
            preflight(models)
        return models
    d = root.path("models", "tiny")
    if not (d / "models.json").exists() or not json.loads((d / "models.json").read_text()).get("fitted"):
        log(f"building tiny models in {d}")
        build_tiny_models(d, cfg.tiny_seed, sample_size=cfg.encoder.size)
        frames = []
        for unit in work_units(items):
            if sum(len(f) for f in frames) >= cfg.tiny_fit_frames:
                break
            frames += [got[0] for _, got in iter_decoded(unit, str(root.root), cfg) if not isinstance(got, Exception)]
        if frames and cfg.tiny_fit_steps > 0:
            log(f"fitting tiny VAE: {cfg.tiny_fit_steps} steps on {sum(len(f) for f in frames)} crops")
            fit_tiny_models(d, np.concatenate(frames)[: cfg.tiny_fit_frames], cfg.tiny_fit_steps, cfg.tiny_seed,
                            cfg.tiny_fit_batch)
    return resolve_models(str(d), cfg.encoder)


def preflight(models) -> None:
    """Load hub models once in the driver, so a missing download fails here in one line, not in every actor."""
    from pipeline.encoders import load_clip, load_vae

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


# ---------------------------------------------------------------- the run

def run(data: str | Path, cfg: ShardsConfig, log=print) -> dict:
    from pipeline import optout, shardio
    from pipeline.stills import still_items

    t_start = time.perf_counter()
    root = DataRoot.of(data)
    sdir = root.dir("shards")
    index = shardio.load_index(sdir)
    recovered = shardio.recover(sdir, index)
    if recovered:
        log(f"recovered from an interrupted run: removed {recovered}")
    table = shardio.load_table(sdir)

    items, bad = clip_items(root, cfg)
    if cfg.stills:
        if not Path(cfg.stills).is_dir():
            raise InputProblem(f"stills folder not found: {cfg.stills}")
        items += still_items(Path(cfg.stills), cfg.stills_fps, cfg.stills_frames)
    # opt-outs first: a malformed optout.csv raises here, before anything is touched
    removal = optout.apply(root, cfg, index, table, items, log)
    table = shardio.load_table(sdir)
    blocked = removal["blocked"]
    done = set(table["clip_id"])
    pending = [it for it in items if it["clip_id"] not in done and it["video_id"] not in blocked]
    pending.sort(key=lambda it: (it["origin"], it["video_id"], it.get("start_frame", 0), it["clip_id"]))

    stats = {"data": str(root.root), "runner": cfg.runner, "clips_total": len(items), "clips_pending": len(pending),
             "bad_rows": bad, "recovered": recovered, "optout": {k: v for k, v in removal.items() if k != "blocked"},
             "encoded": 0, "cache_hits": 0, "failed": [], "shards_written": [], "encode_s": 0.0,
             "frames_encoded": 0, "model_s": 0.0}
    written = []
    if pending:
        models = prepare_models(cfg.models, root, cfg, pending, log)
        enc_rec = encoder_record(cfg, models)
        if index.get("encoder") and index["shards"] and index["encoder"]["fingerprint"] != enc_rec["fingerprint"]:
            raise InputProblem(f"shards in {sdir} were built with {index['encoder']}; this run would use "
                               f"{enc_rec}. Use the same models/size or a new data root.")
        index["encoder"] = enc_rec
        cache_dir = root.dir("shards", "cache", enc_rec["fingerprint"])
        todo = [it for it in pending if not cache_path(cache_dir, it["clip_id"]).exists()]
        stats["cache_hits"] = len(pending) - len(todo)
        t0 = time.perf_counter()
        if todo:
            log(f"encoding {len(todo)} clips ({cfg.runner}, models {models.vae_label} / {models.clip_label})")
            runner = encode_ray if cfg.runner == "ray" else encode_sequential
            results = runner(todo, root, cfg, models, cache_dir, log)
            stats["encoded"] = sum(r["status"] == "ok" for r in results)
            stats["frames_encoded"] = sum(r["nframes"] for r in results)
            stats["model_s"] = sum(r["model_s"] for r in results)   # pure encoder time inside the stage
            stats["failed"] = [r for r in results if r["status"] != "ok"]
        stats["encode_s"] = time.perf_counter() - t0
        ready = [it for it in pending if cache_path(cache_dir, it["clip_id"]).exists()]
        written = write_new_shards(sdir, cfg, index, table, ready, cache_dir, log)
    stats["shards_written"] = written
    stats["shards_total"] = len(index["shards"])
    stats["samples_total"] = int(sum(s["nsamples"] for s in index["shards"]))
    stats["seconds"] = time.perf_counter() - t_start
    stats["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_text(sdir / "stats.json", json.dumps(stats, indent=1, default=str) + "\n")
    return stats


def summary(stats: dict) -> str:
    o = stats["optout"]
    lines = [f"shards: {stats['clips_total']} clips known, {stats['clips_pending']} pending, "
             f"{stats['encoded']} encoded, {stats['cache_hits']} from cache, {len(stats['failed'])} failed",
             f"        {len(stats['shards_written'])} new shards; total {stats['shards_total']} shards / "
             f"{stats['samples_total']} samples; {stats['seconds']:.1f}s"]
    if o.get("removed_videos") or o.get("unknown"):
        lines.append(f"opt-out: removed {len(o.get('removed_videos', []))} videos, {o.get('clips_removed', 0)} clips, "
                     f"rewrote {len(o.get('shards_rewritten', []))} shards; unknown ids: {o.get('unknown', [])}")
    for f in stats["failed"][:10]:
        lines.append(f"  failed {f['clip_id']}: {f['reason']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.shards", description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data")
    ap.add_argument("--dag", default="dags/shards.yaml")
    ap.add_argument("--models", help="tiny | DIR (vae/ + clip/) | default (hub names)")
    ap.add_argument("--runner", choices=["ray", "sequential"])
    ap.add_argument("--size", type=int, help="crop side in pixels (paper 256)")
    ap.add_argument("--max-frames", type=int, help="frames kept per clip (0 = all)")
    ap.add_argument("--stills", help="folder of portraits to add as pseudo-clips")
    ap.add_argument("--sources", help="sources.csv (default from the DAG)")
    ap.add_argument("--optout", help="optout.csv (default from the DAG)")
    ap.add_argument("--fit-steps", type=int, help="--models tiny: CPU steps fitting the tiny VAE (DAG: tiny.fit_steps)")
    a = ap.parse_args(argv)
    try:
        cfg = load_dag(a.dag)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k, attr in (("models", "models"), ("runner", "runner"), ("stills", "stills"), ("sources", "sources"),
                    ("optout", "optout")):
        if getattr(a, k) is not None:
            setattr(cfg, attr, getattr(a, k))
    if a.size:
        cfg.encoder.size = a.size
    if a.max_frames is not None:
        cfg.encoder.max_frames = a.max_frames
    if a.fit_steps is not None:
        cfg.tiny_fit_steps = a.fit_steps
    from pipeline.optout import ManifestProblem

    try:
        stats = run(a.data, cfg, log=lambda m: print(f"[shards] {m}", flush=True))
    except ManifestProblem as e:
        print(f"error: {e} (nothing removed)", file=sys.stderr)
        return 2
    except InputProblem as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
