"""`make estimate`: the cost model's arithmetic, its basis lines, and the shard bytes it reads off the contract
checked against a real shard sample."""
from __future__ import annotations

import json

import numpy as np

from benchmarks.estimate import estimate, main, shard_bytes_per_frame

BENCH = {"machine": {}, "areas": {"curate": {
    "accepted_fraction_of_video_s": 0.25, "curate_cpu_s_per_video_s": 0.5, "ratio_to_plain_decode": 2.0,
    "media_bytes_per_video_s": 400_000.0, "kept_clip_bytes_per_accepted_s": 100_000.0}}}
FLOPS = {"vae": 270e9, "clip": 6e9}


def rows(n, **kw):
    args = dict(cores=100, gpus=4, gpu="A100", gpu_util=0.3, clip_s=3.29, accepted_fraction=None, fps=25.0,
                max_frames=0, size=256, flops=FLOPS)
    args.update(kw)
    return {r[0]: r for r in estimate(BENCH, n, **args)}


def test_every_figure_has_a_basis_and_scales_with_the_number_of_clips():
    one, two = rows(1_000_000), rows(2_000_000)
    for name, (_, value, unit, basis) in one.items():
        assert basis and unit, name
        if not name.startswith(("wall", "  of which")):
            assert abs(two[name][1] - 2 * value) <= 1e-9 * abs(value), name
    assert abs(one["accepted clip time"][1] - 1e6 * 3.29 / 3600) < 1e-6            # 914 h: the paper's 920 h
    assert abs(one["source video to curate"][1] - one["accepted clip time"][1] / 0.25) < 1e-6
    assert abs(one["curate CPU"][1] - one["source video to curate"][1] * 0.5) < 1e-6
    frames = 1e6 * 3.29 * 25
    gpu_h = frames * 276e9 / (312e12 * 0.3) / 3600
    assert abs(one["shard encoders (VAE+CLIP) GPU"][1] - gpu_h) < 1e-6 * gpu_h
    # a GPU with a measured gpu-check run: frames / its VAE+CLIP images/s, and the basis says MEASURED
    run = {"device": "NVIDIA H200", "started": "2026-11-30T00:00:00Z",
           "encode": [{"precision": "fp16", "size": 256, "batch": 64, "vae+clip_images_per_s": 455.0}]}
    h200 = rows(1_000_000, gpu="H200", measured=run)["shard encoders (VAE+CLIP) GPU"]
    assert abs(h200[1] - frames / 455.0 / 3600) < 1e-6 * h200[1] and "MEASURED" in h200[3]
    # retention: accepted_clips keeps 100 kB per accepted second instead of 400 kB per source second
    assert one["storage with media.keep: all"][1] > one["storage with media.keep: accepted_clips"][1] > \
        one["storage with media.keep: none"][1] == one["shards"][1]


def test_the_wall_time_is_set_by_the_slower_pool():
    few_gpus, many_gpus = rows(1_000_000, gpus=1), rows(1_000_000, gpus=1000)
    key = next(k for k in few_gpus if k.startswith("wall"))
    assert abs(few_gpus[key][1] - few_gpus["shard encoders (VAE+CLIP) GPU"][1]) < 1e-9
    cpu = many_gpus["curate CPU"][1] + many_gpus["landmarks (face mesh) CPU"][1]
    assert abs(many_gpus[next(k for k in many_gpus if k.startswith("wall"))][1] - cpu / 100) < 1e-9


def test_shard_bytes_per_frame_match_a_real_sample():
    from benchmarks.estimate import IDENTITY_BYTES
    from pipeline.schema import SHARD_MEMBERS
    from pipeline.shards.io import sample_members, tar_bytes

    T = 40
    feats = {"latent_mean": np.zeros((T, 4, 32, 32)), "latent_std": np.zeros((T, 4, 32, 32)),
             "clip_emb": np.zeros((T, 512)), "landmarks": np.zeros((T, 478, 3)), "landmarks_ok": np.ones(T, bool),
             "frame_index": np.arange(T), "time_s": np.zeros(T), "identity": np.zeros(128)}
    members = sample_members(feats, {"clip_id": "0" * 16})
    per_frame, _ = shard_bytes_per_frame(256, 512)
    payload = sum(len(b) for _, b in members)
    m = len(SHARD_MEMBERS)
    # .npy headers (128 B each), meta.json and the identity embedding are per sample, not per frame
    assert abs(payload - IDENTITY_BYTES - T * per_frame) < m * 128 + 100
    # one more sample in a shard adds its payload + one tar header per member (what the estimate counts)
    # + block padding
    one_more = (len(tar_bytes([(f"k{i}", members) for i in range(10)])) - len(tar_bytes([("k0", members)]))) / 9
    assert abs(one_more - (T * per_frame + IDENTITY_BYTES + m * 512)) < m * (128 + 512) + 10240 / 9


def test_without_a_bench_it_says_to_run_make_bench(tmp_path, capsys):
    assert main(["--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "make bench" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "bench.json").write_text(json.dumps({"areas": {"curate": {}}}))
    assert main(["--data", str(tmp_path)]) == 2
