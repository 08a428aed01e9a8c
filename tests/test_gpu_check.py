"""`make gpu-check` without a GPU: the same script on tiny sizes, so the GPU run's code is exercised here.
Its figures are checked for consistency (MFU = FLOP rate / peak, both precisions trained), not for speed.
Eager steps only: compiling costs a minute of tracing on 2 cores, and test_train.py::test_compiled_equals_eager
already runs the trainer compiled."""
from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine `make gpu-check` itself is the check")
def test_gpu_check_runs_tiny_on_a_cpu(tmp_path, capsys):
    from benchmarks.gpu_check import main

    out = tmp_path / "gpu_check.json"
    assert main(["--out", str(out), "--frames", "4", "--steps", "2", "--warmup", "1", "--agreement-steps", "4",
                 "--peak-tflops", "0.001", "--work", str(tmp_path), "--modes", "eager", "--encode-images", "4"]) == 0
    res = json.loads(out.read_text())
    assert not res["gpu"] and res["peak_source"] == "train.peak_flops"
    modes = [r["compiled"] for r in res["steps"]]
    assert modes == ["eager"]
    for r in res["steps"]:
        assert r["size"] == "tiny" and r["step_ms"] > 0 and r["samples_per_s"] > 0
        assert r["mfu"] == pytest.approx(r["tflops_per_s"] / 0.001, rel=2e-3)   # MFU = FLOP rate / the peak given
    a = res["agreement"]
    assert a["steps"] == 4 and set(a["loss_last"]) == {"fp32", "bf16"}
    assert 0 < a["max_rel_diff"] < 0.05                          # bf16 ran, and tracks fp32 (see test_train)
    assert all(0 <= w <= 1 for w in a["data_wait"].values())
    enc = {r["precision"]: r for r in res["encode"]}
    assert set(enc) == {"fp32", "bf16"} and all(r["vae+clip_images_per_s"] > 0 for r in enc.values())
    assert all(v == "n/a (CPU)" for v in res["targets"].values())
    table = capsys.readouterr().out
    assert "tiny" in table and "bf16 vs fp32" in table and "VAE img/s" in table
    assert not list(tmp_path.glob("gpu_check_*"))                # the scratch directory is removed
