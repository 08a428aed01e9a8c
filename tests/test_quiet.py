"""pipeline.quiet: known native noise is dropped at fd 2, everything else passes through, live."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import os, sys, time
from pipeline.quiet import native_stderr_filtered
with native_stderr_filtered():
    os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    os.write(2, b"real error: disk full\n")
    print("python-level line", file=sys.stderr, flush=True)
    os.write(2, b"W0000 00:00:1.0 x.cc:1] Feedback manager requires a model with a single signature inference.\n")
    time.sleep(0.3)
    os.write(1, b"stdout untouched\n")
os.write(2, b"after the block\n")
"""


def test_known_native_lines_are_dropped_and_the_rest_passes():
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["real error: disk full", "python-level line", "after the block"]
    assert r.stdout == "stdout untouched\n"


def test_mediapipe_models_start_quietly():
    code = ("import numpy as np, skimage.data\n"
            "from pipeline.curate.landmarks import FaceMesh478\n"
            "from pipeline.curate.faces import FacesConfig, MediaPipeFaces\n"
            "img = skimage.data.astronaut()\n"
            "m, d = FaceMesh478(static=True), MediaPipeFaces(FacesConfig())\n"
            "assert m(img) is not None and len(d(img)) == 1\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    assert r.stderr.strip() == "", r.stderr[-2000:]
