"""`make demo` end to end (small settings): every step runs, the reenacted video has as many frames as the
driving video, every output it prints exists, and nothing is left running."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.video_io import iter_frames

REPO = Path(__file__).resolve().parents[1]


def _daemons() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "raylet|gcs_server|pipeline.synth.server|torch.distributed.run"],
                         capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    before = _daemons()
    data = tmp_path / "demo"
    p = subprocess.run([sys.executable, "-m", "pipeline.demo", "--data", str(data), "--train-steps", "20",
                        "--fit-steps", "5", "--sample-steps", "5"], cwd=REPO, capture_output=True, text=True,
                       timeout=1800)
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
    assert _daemons() - before == set(), "the demo left Ray, torchrun or the loopback server running"
