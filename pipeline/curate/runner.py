"""Runs the curation DAG over the sources: on Ray Data (default) or sequentially (tests, debugging).

Both runners call the same two steps per video, `download_step` then `analyse_step`; the
second writes the video's state file the moment it finishes, so a killed run loses only the
videos in flight, and the manifest is rebuilt from state files at the end (see manifest.py).
A step never raises for one video: every failure becomes a status, an error class and a
message on that video's row.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from pipeline.curate.clusters import assign
from pipeline.curate.download import download, one_line
from pipeline.curate.manifest import read_state, write_outputs, write_state
from pipeline.curate.retention import write_clip_files
from pipeline.curate.stages import CurateConfig, Models, analyse_video
from pipeline.paths import DataRoot
from pipeline.quiet import native_stderr_filtered
from pipeline.records import VideoRow
from pipeline.storage import endpoint_env

# Download failures worth another try on the next run (pipeline.curate.download's error_class); others are final.
RETRYABLE = {"transient"}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def download_step(item: dict, root: str, params: dict) -> dict:
    """One source -> its download record merged into the item (status "ok" with media_path, or why not)."""
    t0 = time.time()
    out = dict(item)
    if item.get("opted_out"):
        out.update(status="skipped_optout", error_class="", message="listed in optout.csv; not requested",
                   media_path="", bytes=0, attempts=0)
    else:
        try:
            rec = download(item["url"], item["video_id"], DataRoot.of(root), **params)
            out.update({k: rec.get(k) for k in ("status", "error_class", "message", "media_path", "bytes",
                                                 "attempts")})
        except Exception as e:  # the downloader records its own failures; this is a bug guard
            out.update(status="error", error_class=type(e).__name__, message=one_line(e), media_path="",
                       bytes=0, attempts=0)
    out["media_path"] = out.get("media_path") or ""    # download() gives it relative to the data root
    # one line, bounded: messages end up in tables and summaries
    out["message"] = one_line(out.get("message") or "")
    out["download_s"] = time.time() - t0
    return out


def analyse_step(item: dict, root: str, cfg: CurateConfig, models: Models) -> dict:
    """Downloaded item -> state written to <data>/curate/state/; returns a short progress row."""
    dr = DataRoot.of(root)
    fp = cfg.fingerprint()
    video = VideoRow(item["video_id"], item["url"], status=item.get("status") or "error",
                     error_class=item.get("error_class") or "", message=item.get("message") or "",
                     media_path=item.get("media_path") or "", bytes=int(item.get("bytes") or 0),
                     attempts=int(item.get("attempts") or 0), config=fp)
    state = {"video_id": item["video_id"], "fingerprint": fp, "clips": [],
             "rejections": [], "times": {"download": float(item.get("download_s") or 0.0)},
             "final": video.error_class not in RETRYABLE}
    staged = contextlib.ExitStack()     # holds the local copy of remote media until the analysis is done
    if video.status == "ok":
        try:
            media = staged.enter_context(dr.local_file(video.media_path))   # the file itself when local
            res = analyse_video(media, item["video_id"], item["url"], video.media_path, cfg, models)
            if cfg.media.keep != "all":        # accepted crops kept as small files (retention.py)
                state["kept_bytes"] = write_clip_files(dr, media, item["video_id"], res["clips"], cfg.media)
            state.update(clips=res["clips"], rejections=res["rejections"])
            state["times"].update(res["times"])
            acc = [c for c in res["clips"] if c["status"] == "accepted"]
            probed = res["probe"]
            video = dataclasses.replace(
                video, **{k: probed[k] for k in ("width", "height", "fps", "header_fps", "sar", "duration_s",
                                                 "rotation", "codec", "has_audio")},
                num_frames=res["num_frames"], cuts=len(res["cuts"]), cut_frames=res["cuts"],
                boundaries=res["boundaries"], clips=len(res["clips"]), accepted=len(acc),
                accepted_s=sum(c["duration_s"] for c in acc), message=one_line(res["message"]))
            if not acc:
                reasons = sorted({r["reason"] for r in res["rejections"]})
                video.status = "no_clips"
                video.message = one_line(f"no accepted clip; rejected spans: {', '.join(reasons) or 'none'}"
                                         + (f"; {res['message']}" if res["message"] else ""))
        except Exception as e:
            from pipeline.video_io import VideoError

            bad = isinstance(e, VideoError)
            video.status, video.error_class, video.message = ("bad_media" if bad else "error", type(e).__name__,
                                                              one_line(e))
            if not bad:
                _log(f"curate: {item['video_id']}: unexpected {type(e).__name__}\n{traceback.format_exc(limit=4)}")
    staged.close()
    state["video"] = video.to_dict()
    write_state(dr, state)      # names the clip files: only now may the download go
    if cfg.media.keep != "all" and video.status in ("ok", "no_clips") and video.media_path:
        dr.rm(video.media_path)
    return {"video_id": item["video_id"], "status": video.status, "accepted": int(video.accepted or 0),
            "message": video.message}


# ---------------------------------------------------------------- engines

def run_sequential(items: list[dict], root: DataRoot, cfg: CurateConfig, log=_log,
                   models: Models | None = None) -> list[dict]:
    """`models`: reuse ones already built (the CLI's preflight) instead of loading them again."""
    models = models or Models(cfg)
    out = []
    for k, it in enumerate(items, 1):
        row = analyse_step(download_step(it, root.url, cfg.download.params), root.url, cfg, models)
        out.append(row)
        log(_progress(k, len(items), row))
    return out


def _analyse_actor(root: str, cfg: CurateConfig) -> type:
    """The Ray actor class keeping the face detector and quality scorer alive across videos. Root and
    config travel inside the class (pickled with it), not as constructor arguments: Ray keeps those in
    the object store and warns (an E-level line) that a restarted actor could lose them."""

    class Analyse:
        def __init__(self):
            self.models = Models(cfg)

        def __call__(self, item: dict) -> dict:
            return analyse_step(item, root, cfg, self.models)

    return Analyse


def _download_fn(root: str, params: dict):
    def fn(item: dict) -> dict:
        return download_step(item, root, params)
    return fn


class EngineError(RuntimeError):
    """The Ray engine cannot start or reach its cluster (a run-level problem, not one video's)."""


def check_ray_address(address: str | None, timeout_s: float = 3.0) -> None:
    """Fail in seconds with one line when the address names no reachable cluster: ray.init itself
    retries an unreachable GCS for minutes before it gives up. "auto"/"local" are left to Ray."""
    import socket

    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, _, port = hostport.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"bad Ray address {address!r}: expected host:port (GCS) or ray://host:port (Ray Client)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise EngineError(f"no Ray cluster at {address}: {e.strerror or e}; start one with `ray start --head` "
                          f"or unset RAY_ADDRESS / --ray-address for an embedded Ray") from None


def _token_auth_if_available() -> None:
    """Ray >= 2.5x: `ray start` turns token auth on when a token exists (~/.ray/auth_token, which any
    earlier embedded ray.init writes), but a driver given an explicit address never does, and then
    fails with 'InvalidAuthToken' after 20 s of retries. Apply Ray's own rule for address="auto":
    present the local token when there is one (a token-mode driver also joins a cluster without
    auth). An explicit RAY_AUTH_MODE (token | disabled) in the environment always wins."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:     # a Ray without token auth: nothing to do
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def quiet_ray() -> None:
    """Ray's own chatter off, our progress lines and real warnings/errors on: Ray Data's progress
    tables (we print one line per finished video), INFO lines of the driver's Ray loggers, and the
    token-auth notice an embedded Ray prints at every start."""
    import logging

    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    for name in ("ray", "ray.data", "ray._private.worker"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)   # "Progress bars disabled"
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


def ray_init(address: str | None, cfg: CurateConfig) -> dict:
    """Start (embedded) or join (address) Ray; returns which Ray this run uses, for stats.json."""
    import ray

    quiet_ray()

    if not ray.is_initialized():
        if address:
            check_ray_address(address)
            _token_auth_if_available()
            # Ship this checkout's code to the cluster's workers (their image provides the dependencies);
            # the data root must be storage every node sees.
            repo = Path(__file__).resolve().parents[1]
            env = {"working_dir": str(repo), "excludes": [".venv", "data", ".git", ".pytest_cache", "*.mp4", "*.tar"],
                   "env_vars": endpoint_env()}     # an object-store data root: the same endpoint on every node
            try:
                ray.init(address=address, log_to_driver=True, runtime_env=env)
            except ConnectionError as e:
                raise EngineError(f"cannot join the Ray cluster at {address}: {one_line(e)} (a cluster with token "
                                  f"auth needs its token here: RAY_AUTH_TOKEN or ~/.ray/auth_token)") from None
        else:
            ray.init(num_cpus=cfg.engine.num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=True,
                     object_store_memory=cfg.engine.object_store_mb * 1024 * 1024, ignore_reinit_error=True,
                     logging_level=logging.WARNING)
    ctx = ray.get_runtime_context()
    return {"address": address or "", "embedded": not address, "gcs_address": ctx.gcs_address,
            "job_id": ctx.get_job_id(), "cluster_cpus": float(ray.cluster_resources().get("CPU", 0.0))}


def run_ray(items: list[dict], root: DataRoot, cfg: CurateConfig, address: str | None = None,
            log=_log, info: dict | None = None) -> list[dict]:
    """download tasks (I/O-bound, fractional CPUs) -> analyse actor pool (fractional CPUs, so the
    read and download tasks always find room on 2 cores) -> rows streamed back as videos finish.
    `info`, when given, receives which Ray ran (ray_init's record)."""
    import ray

    ray_info = ray_init(address, cfg)
    if info is not None:
        info.update(ray_info)
    log(f"curate: ray {'embedded' if ray_info['embedded'] else 'cluster'} at {ray_info['gcs_address']}, "
        f"{ray_info['cluster_cpus']:g} CPUs, job {ray_info['job_id']}")
    dl, an = cfg.resources["download"], cfg.resources["analyse"]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map(_download_fn(root.url, cfg.download.params), num_cpus=dl.num_cpus,
                compute=ray.data.TaskPoolStrategy(size=max(1, dl.concurrency)))
    ds = ds.map(_analyse_actor(root.url, cfg), num_cpus=an.num_cpus,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, an.concurrency)))
    out = []
    with native_stderr_filtered():   # Ray's C++ core worker: one known E-level line per actor pool
        for row in ds.iter_rows():
            out.append(dict(row))
            log(_progress(len(out), len(items), row))
    return out


def _progress(k: int, n: int, row: dict) -> str:
    msg = f" ({row['message'][:80]})" if row.get("message") and row["status"] != "ok" else ""
    return f"curate: [{k}/{n}] {row['video_id'][:40]} {row['status']} accepted={row['accepted']}{msg}"


def curate(root: DataRoot, sources: list[dict], cfg: CurateConfig, engine: str = "ray",
           ray_address: str | None = None, force: bool = False, log=_log, models: Models | None = None) -> dict:
    """sources: [{"video_id", "url", "opted_out"}]. Runs what is not finished, writes the manifests.
    `models` (sequential engine only; Ray actors build their own) avoids loading them twice."""
    t0 = time.time()
    fp = cfg.fingerprint()
    root.makedirs("curate/state")
    seen, uniq = set(), []
    for s in sources:  # a repeated id would race on one state file; the first row wins
        if s["video_id"] not in seen:
            seen.add(s["video_id"])
            uniq.append(s)
    todo = [s for s in uniq if force or read_state(root, s["video_id"], fp) is None]
    log(f"curate: {len(uniq)} videos, {len(uniq) - len(todo)} finished earlier, {len(todo)} to process "
        f"({engine} engine)")
    if engine not in ("ray", "sequential"):
        raise ValueError(f"engine must be 'ray' or 'sequential', got {engine!r}")
    engine_error = ""
    ray_info: dict = {}
    if todo:
        try:
            if engine == "ray":
                run_ray(todo, root, cfg, ray_address, log, ray_info)
            else:
                run_sequential(todo, root, cfg, log, models)
        except Exception as e:  # the engine itself failed (lost cluster...): keep what finished, say so
            engine_error = one_line(f"{type(e).__name__}: {e}")
            log(f"curate: engine failed, writing what finished: {engine_error}")
    states = []
    for s in uniq:
        # final or not (a retryable failure is reported too); no state at all = a lost worker
        st = read_state(root, s["video_id"], final_only=False)
        if st is None:
            st = {"video_id": s["video_id"], "video": {"video_id": s["video_id"], "url": s["url"],
                                                           "status": "error", "error_class": "Lost",
                                                           "message": "no result: " + (engine_error or "worker lost")}}
        states.append(st)
    # identities across videos and duplicates: decided here, where every video is visible (clusters.py)
    identities = assign(root, states, cfg.manifest, cfg.identity, log)
    info = {"engine": engine if todo else "none", "processed": len(todo), "skipped": len(uniq) - len(todo),
            "wall_s": round(time.time() - t0, 2), "config": fp, "engine_error": engine_error,
            "media_keep": cfg.media.keep,     # read by the shard builder (media.keep: none)
            # which Ray ran it: {address (as asked, "" = embedded), embedded, gcs_address, job_id, cluster_cpus}
            "ray": ray_info or None, "identities": identities}
    return write_outputs(root, states, info)
