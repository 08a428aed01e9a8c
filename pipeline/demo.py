"""`make demo`: the whole system end to end, offline, on a corpus the project generates itself.

corpus -> loopback server -> curate (Ray) -> shards (tiny local models) -> train (torchrun, tiny sDiT)
-> reenact (anchored diffusion) -> report. Every step is the same CLI a user runs (`make curate`, ...),
started as a subprocess; the loopback server is stopped at the end whatever happens, and Ray is
shut down by the steps that started it, so nothing is left running.

--data may be an object-store URL (`make demo DATA=s3://bucket/prefix`; `make s3serve` runs a loopback
S3): curate, shards and train then read and write there; the demo's own inputs (corpus, sources.csv,
portraits) and logs stay in a local work folder (--work), reenact and report run on local copies of
the checkpoint, models and tables, and their outputs are uploaded under the data root.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(name: str, cmd: list[str], log: Path, timings: dict) -> None:
    """Run one step, teeing its output to the console and to <data>/logs/<name>.log."""
    print(f"\n=== demo: {name}: {' '.join(cmd[2:])}", flush=True)
    t0 = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert p.stdout is not None
        for line in p.stdout:
            f.write(line)
            if not _noise(line):
                sys.stdout.write("    " + line)
        rc = p.wait()
    timings[name] = round(time.perf_counter() - t0, 1)
    if rc != 0:
        raise SystemExit(f"demo: step {name!r} failed (exit {rc}); full log: {log}")


_NOISE = ("W0000 ", "I0000 ", "E0000 ", "INFO: Created TensorFlow", "WARNING: All log messages",
          "logging_progress.py")


def _noise(line: str) -> bool:
    # MediaPipe/TFLite C++ logs and Ray Data's per-operator tables go to the log file only;
    # Ray's one-line "Total Progress" and every step's own progress lines stay on the console.
    return any(n in line for n in _NOISE) and "Total Progress" not in line


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/demo", help="data root for everything the demo writes")
    ap.add_argument("--train-steps", type=int, default=3000, help="sDiT training steps (the demo preset: sDiT-mini, F=4)")
    ap.add_argument("--fit-steps", type=int, default=300, help="CPU steps fitting the tiny VAE on the crops")
    ap.add_argument("--sample-steps", type=int, default=50, help="respaced denoising steps for reenactment")
    ap.add_argument("--size", type=int, default=64, help="crop side fed to the VAE (paper: 256)")
    ap.add_argument("--engine", choices=["ray", "sequential"], default="ray",
                    help="curate engine and shard runner (sequential: no Ray, e.g. on a loaded machine)")
    ap.add_argument("--videos", type=int, default=0, help="curate only the first N corpus videos (0 = all)")
    ap.add_argument("--work", default="", help="local folder for the demo's inputs and logs (default: the data "
                                               "root when local; scratch space for a URL)")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from pipeline.paths import DataRoot
    from pipeline.storage import scratch_dir

    root = DataRoot.of(args.data)
    data = Path(args.work).resolve() if args.work else (
        root.root if not root.remote else scratch_dir("demo", hashlib.sha1(root.url.encode()).hexdigest()[:12]))
    data.mkdir(parents=True, exist_ok=True)
    url = root.url                      # what every step gets as --data
    py = sys.executable
    logs = data / "logs"
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    from pipeline.synth.corpus import ensure_corpus, make_portraits
    from pipeline.synth.server import SourceServer

    corpus_dir = data / "corpus"
    t0 = time.perf_counter()
    gts = ensure_corpus(corpus_dir, log=lambda m: print(f"=== demo: {m}", flush=True))
    portraits = make_portraits(data / "portraits", n=4)
    timings["corpus"] = round(time.perf_counter() - t0, 1)

    sources, optout = data / "sources.csv", data / "optout.csv"
    if not optout.exists():
        optout.write_text("video_id_or_url,date,reason\n")
    # One scene, one face, 75 frames: the driving video for the reenactment step.
    driving = next((g for g in gts if g["name"] == "audio_480p30"), gts[0])["path"]

    with SourceServer(corpus_dir) as srv:
        text = srv.sources_csv()
        if args.videos:     # the header and the first N rows
            text = "\n".join(text.splitlines()[: args.videos + 1]) + "\n"
        sources.write_text(text)
        print(f"=== demo: serving {len(srv.videos())} videos on {srv.base_url}", flush=True)
        _run("curate", [py, "-m", "pipeline.curate", "--data", url, "--sources", str(sources),
                        "--optout", str(optout), "--dag", "dags/curate.yaml", "--engine", args.engine], logs / "curate.log", timings)
    _run("shards", [py, "-m", "pipeline.shards", "--data", url, "--dag", "dags/shards.yaml", "--models", "tiny",
                    "--size", str(args.size), "--sources", str(sources), "--optout", str(optout),
                    "--stills", str(data / "portraits"), "--fit-steps", str(args.fit_steps), "--runner", args.engine], logs / "shards.log", timings)
    _run("train", [py, "-m", "model.launch", "--data", url, "--config", "dags/train.yaml", "--run", "demo",
                   "preset=demo", f"train.max_steps={args.train_steps}"], logs / "train.log", timings)
    out_video = data / "reenact" / "demo.mp4"
    # reenact and report read local files: on an object store they get local copies, and their outputs go up
    local = ["--ckpt", str(root.pull_tree("train/demo")), "--models", str(root.mirror("models/tiny"))] \
        if root.remote else []
    _run("reenact", [py, "-m", "model.reenact", "--data", str(data), "--source", str(portraits[0]),
                     "--driving", driving, "--steps", str(args.sample_steps), "--side-by-side",
                     "--out", str(out_video), *local], logs / "reenact.log", timings)
    tables = data
    if root.remote:
        tables = data / "tables"
        root.pull_tree("curate", dest=tables / "curate")
        root.pull_tree("shards", skip="cache/", dest=tables / "shards")
    _run("report", [py, "-m", "pipeline.report", "--data", str(tables)], logs / "report.log", timings)
    if root.remote:
        root.put_file(out_video, "reenact/demo.mp4")
        root.put_tree(tables / "report", "report")

    timings["total"] = round(time.perf_counter() - t_start, 1)
    outputs = {
        "corpus": str(corpus_dir), "sources": str(sources), "clips": root.join("curate", "clips.parquet"),
        "curate_stats": root.join("curate", "stats.json"), "shards": root.join("shards"),
        "train_run": root.join("train", "demo"), "reenacted_video": root.join("reenact", "demo.mp4"),
        "report": root.join("report", "index.html"), "logs": str(logs),
    }
    summary = json.dumps({"timings_s": timings, "outputs": outputs}, indent=2)
    (data / "demo.json").write_text(summary)
    if root.remote:
        root.write_text("demo.json", summary)
    print("\n=== demo: done in {:.0f} s".format(timings["total"]))
    for k, v in outputs.items():
        print(f"  {k:16s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
