"""`make bench`: run every benchmarks/bench_<area>.py, print the figures, write <data>/bench/bench.json.

Each area reports ratios against a plain reference measured in the same run (plain decode of the same videos,
raw read of the same tar bytes, same-size plain model), so figures compare across machines.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

AREAS = ["curate", "shards", "train", "reenact"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0],
                                 epilog="e.g. `python -m benchmarks.run --only curate` measures curation alone "
                                        "(<data>/bench/curate/bench_curate.json); run it with OMP_NUM_THREADS unset "
                                        "and note the load average (recorded in bench.json): the figures are CPU "
                                        "seconds, but a loaded machine still shifts them.")
    ap.add_argument("--data", default="data", help="data root; benchmark inputs/outputs go to <data>/bench")
    ap.add_argument("--only", nargs="*", choices=AREAS, metavar="AREA",
                    help=f"run only these areas (of {', '.join(AREAS)})")
    args = ap.parse_args(argv)
    root = Path(args.data).resolve() / "bench"
    root.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                                 "cores": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset")},
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "load_avg_at_start": [round(x, 2) for x in os.getloadavg()], "areas": {}}
    failed = 0
    for area in args.only or AREAS:
        t0 = time.perf_counter()
        print(f"bench: {area} ...", flush=True)
        try:
            mod = importlib.import_module(f"benchmarks.bench_{area}")
            res = mod.run(root / area)
            res["wall_s"] = round(time.perf_counter() - t0, 2)
        except Exception as e:  # one failing area must not hide the others' figures
            failed += 1
            res = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)}
        results["areas"][area] = res
        print(json.dumps({area: {k: v for k, v in res.items() if k != "trace"}}, indent=2, default=str), flush=True)
        if "error" not in res and hasattr(mod, "summary"):
            print(mod.summary(res), flush=True)
    results["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = root / "bench.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"bench: wrote {out}" + (f" ({failed} area(s) failed)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
