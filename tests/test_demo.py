"""`make demo` end to end (small settings): every step runs, the reenacted video has as many frames as the
driving video, every output it prints exists, and nothing is left running."""
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pipeline.video_io import iter_frames

REPO = Path(__file__).resolve().parents[1]


def _daemons(tag: str) -> set[int]:
    """Ray, torchrun and loopback-server processes started under this run: they inherit the demo's
    environment, so the tag finds them and not another run's processes on a shared machine."""
    out = subprocess.run(["pgrep", "-f", "raylet|gcs_server|pipeline.synth.server|torch.distributed.run"],
                         capture_output=True, text=True).stdout
    mine = set()
    for pid in map(int, out.split()):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:            # gone meanwhile, or not ours to read
            continue
        if f"REENACTFACES_TEST_RUN={tag}".encode() in env:
            mine.add(pid)
    return mine


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    tag = uuid.uuid4().hex
    data = tmp_path / "demo"
    p = subprocess.run([sys.executable, "-m", "pipeline.demo", "--data", str(data), "--train-steps", "20",
                        "--fit-steps", "5", "--sample-steps", "5"], cwd=REPO, capture_output=True, text=True,
                       timeout=1800, env={**os.environ, "REENACTFACES_TEST_RUN": tag})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads((data / "demo.json").read_text())
    for name, path in summary["outputs"].items():
        assert Path(path).exists(), f"demo output {name} missing: {path}"
    assert set(summary["timings_s"]) >= {"curate", "shards", "train", "reenact", "report", "total"}
    driving = data / "corpus" / "audio_480p30.mp4"
    n_driving = sum(1 for _ in iter_frames(driving))
    n_out = sum(1 for _ in iter_frames(summary["outputs"]["reenacted_video"]))
    assert n_out == n_driving == 75
    report = json.loads((data / "report" / "report.json").read_text())
    assert report["counts"]["accepted"] > 0 and report["tsne_clip"]["status"] == "ok"
    assert "done in" in p.stdout
    assert _daemons(tag) == set(), "the demo left Ray, torchrun or the loopback server running"
