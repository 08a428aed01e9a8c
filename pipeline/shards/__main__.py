"""`python -m pipeline.shards`: accepted clips (+ still pseudo-clips) -> WebDataset shards.

The run's order is pipeline/shards/build.py; this file is only the command line.
"""
from __future__ import annotations

import argparse
import sys

from pipeline.shards.build import run, summary
from pipeline.shards.config import InputProblem, load_dag


def main(argv=None) -> int:
    from pipeline.shards.vaefit import fit_cost_help

    ap = argparse.ArgumentParser(prog="python -m pipeline.shards", description=__doc__.split("\n")[0],
                                 epilog=f"--models tiny fits a small VAE on the clips first: {fit_cost_help()}. "
                                        "The fit logs steps/s and the time left, and warns when it will take "
                                        "more than a few minutes.")
    ap.add_argument("--data", default="data")
    ap.add_argument("--dag", default="dags/shards.yaml")
    ap.add_argument("--models", help="tiny | DIR (vae/ + clip/) | default (hub names)")
    ap.add_argument("--runner", choices=["ray", "sequential"])
    ap.add_argument("--size", type=int, help="crop side in pixels (paper 256; with --models tiny on a CPU, "
                                             "64 fits the VAE ~16x faster than 256: see below)")
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
    from pipeline.shards.optout import ManifestProblem

    try:
        stats = run(a.data, cfg, log=lambda m: print(f"[shards] {m}", flush=True))
    except ManifestProblem as e:
        print(f"error: {e} (nothing removed)", file=sys.stderr)
        return 2
    except InputProblem as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:   # e.g. after the slow-fit warning: nothing half-done is ever used
        print("interrupted: shards are renamed into place only when complete and the tiny VAE counts only "
              "once fitted; the next run recovers and resumes", file=sys.stderr)
        return 130
    print(summary(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
