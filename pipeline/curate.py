"""`make curate`: links in manifests/sources.csv -> <data>/curate/clips.parquet (+ videos, rejections, stats).

    python -m pipeline.curate --data data --sources manifests/sources.csv --dag dags/curate.yaml

Ray Data runs the DAG (an embedded local Ray; RAY_ADDRESS or --ray-address for a cluster);
--engine sequential runs the same stages in this process. Re-running skips finished videos.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def load_inputs(sources_csv: Path, optout_csv: Path | None) -> list[dict]:
    """sources.csv (+ optout.csv) -> [{"video_id", "url", "opted_out"}]; ManifestError on a bad row."""
    from pipeline.sources import load_optout, load_sources

    srcs = load_sources(sources_csv)
    opt = load_optout(optout_csv) if optout_csv and optout_csv.exists() else None
    out = []
    for s in srcs:
        out.append({"video_id": s.video_id, "url": s.url, "opted_out": bool(opt and opt.matches(s.video_id, s.url))})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.curate", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data", help="data root (everything is written under it)")
    ap.add_argument("--sources", default="manifests/sources.csv", help="CSV: url, video_id, license, note")
    ap.add_argument("--optout", default=None, help="CSV of opted-out ids/urls (default: optout.csv next to --sources)")
    ap.add_argument("--dag", default="dags/curate.yaml", help="stage parameters and resources")
    ap.add_argument("--engine", choices=["ray", "sequential"], default="ray")
    ap.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS"),
                    help="existing Ray cluster (default: $RAY_ADDRESS; unset = embedded local Ray)")
    ap.add_argument("--force", action="store_true", help="re-process videos that have a finished state")
    args = ap.parse_args(argv)

    from pipeline.paths import DataRoot
    from pipeline.runner import curate
    from pipeline.stages import load_dag

    sources = Path(args.sources)
    optout = Path(args.optout) if args.optout else sources.with_name("optout.csv")
    try:
        cfg = load_dag(args.dag)
        items = load_inputs(sources, optout)
    except Exception as e:  # ManifestError, a bad YAML key, a missing file: one line, nothing written
        print(f"curate: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    root = DataRoot.of(args.data)
    stats = curate(root, items, cfg, engine=args.engine, ray_address=args.ray_address, force=args.force)
    print((root.path("curate", "summary.txt")).read_text(), end="")
    return 1 if stats.get("engine_error") or not stats["videos"] else 0


if __name__ == "__main__":
    sys.exit(main())
