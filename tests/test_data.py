"""Shard loader on synthetic contract shards: sequence sampling, dropout, robustness, schema, safety."""
from __future__ import annotations

import io
import itertools
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from shardfixtures import truncate, write_shards

from model.config import load_config
from model.data import (
    SchemaError,
    SequenceStream,
    check_schema,
    draw_dropout,
    make_batches,
    resolve_shards,
)
from pipeline.configfile import ConfigError
from pipeline.schema import SCHEMA_VERSION


def cfg_for(**over):
    o = {"model.size": "tiny", "model.latent_size": 8, "model.clip_dim": 16, "model.frames": 4,
         "data.num_workers": 0, "data.shuffle_buffer": 4, "train.global_batch": 4}
    o.update(over)
    return load_config(None, [f"{k}={v}" for k, v in o.items()])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, write_shards(root, n_clips=8, per_shard=2)


def test_sequences_come_from_one_clip_with_nonuniform_spacing(shards):
    root, fx = shards
    cfg = cfg_for()
    urls = resolve_shards("", root)
    assert len(urls) == 4 and check_schema(urls, cfg).meta["schema_version"] == SCHEMA_VERSION
    n_neg = n_irregular = 0
    seqs = list(itertools.islice(iter(SequenceStream(urls, cfg)), 200))
    for s in seqs:
        c = fx["clips"][s["key"]]
        T = len(c["time_s.npy"])
        f = s["frames"]
        assert f.shape == (4,) and f.min() >= 0 and f.max() < T            # no frame outside its clip
        assert np.array_equal(s["landmarks"], np.nan_to_num(c["landmarks.npy"][f], nan=0.0))
        assert np.array_equal(s["landmarks_ok"], c["landmarks_ok.npy"][f])
        assert np.all(s["landmarks"][s["landmarks_ok"], :, 2] == c["number"])  # every frame from this clip
        assert np.allclose(s["offsets"], c["time_s.npy"][f] - c["time_s.npy"][f[0]])
        assert s["offsets"][0] == 0
        assert any(np.array_equal(s["clip_emb"], r.astype(np.float32)) for r in c["clip_emb.npy"])  # same clip
        z = (s["latents"] / 0.18215 - c["latent_mean.npy"][f].astype(np.float32)) / c["latent_std.npy"][f].astype(np.float32)
        assert np.abs(z).max() < 7                                         # mean + std * eps, scaled
        n_neg += s["offsets"].min() < 0
        gaps = np.diff(np.sort(c["time_s.npy"][f]))
        n_irregular += not np.allclose(gaps, gaps[0])
    assert n_neg > 0.4 * len(seqs)        # the reference frame is anywhere in the clip
    assert n_irregular > 0.6 * len(seqs)  # spacing is not uniform
    assert len({s["key"] for s in seqs}) == 8


# Hoeffding: the frequency of an event over n independent draws lies farther than eps from its
# probability with chance <= 2 exp(-2 n eps^2). Each bound below is set for a chance <= 1e-9, so these
# seeded tests hold for any sound random stream (a numpy upgrade may change the draws), never by luck.
def hoeffding_eps(n: int, chance: float = 1e-9) -> float:
    return math.sqrt(math.log(2 / chance) / (2 * n))


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_joint_dropout_never_drops_one_condition_alone_and_drops_both_at_the_set_rate(p):
    rng = np.random.default_rng(17)
    n = 100_000
    draws = np.array([draw_dropout(rng, p, "joint") for _ in range(n)])  # (n, 2): drop_landmarks, drop_clip
    assert np.array_equal(draws[:, 0], draws[:, 1])                      # exact: not one sequence drops one alone
    assert abs(draws[:, 0].mean() - p) < hoeffding_eps(n)                # eps = 0.010: p, not p^2 or 2p - p^2


def test_independent_dropout_trains_every_guidance_mode_at_its_rate():
    rng = np.random.default_rng(17)
    n, p = 100_000, 0.1
    draws = np.array([draw_dropout(rng, p, "independent") for _ in range(n)])
    lm, cl = draws[:, 0], draws[:, 1]
    cells = {"clip+landmarks": (~lm & ~cl, (1 - p) ** 2), "landmarks": (~lm & cl, p * (1 - p)),
             "clip": (lm & ~cl, p * (1 - p)), "none": (lm & cl, p * p)}   # mode trained: (mask, probability)
    for mode, (mask, want) in cells.items():
        assert abs(mask.mean() - want) < hoeffding_eps(n), mode


@pytest.mark.parametrize("mode", ["joint", "independent"])
def test_the_training_stream_applies_the_configured_dropout_mode(shards, mode):
    root, _ = shards
    cfg = cfg_for(**{"data.dropout_mode": mode, "data.cond_dropout": 0.5})
    seqs = list(itertools.islice(iter(SequenceStream(resolve_shards("", root), cfg)), 300))
    lm = np.array([s["drop_landmarks"] for s in seqs])
    cl = np.array([s["drop_clip"] for s in seqs])
    alone = np.mean(lm != cl)                       # independent at p = 0.5: one alone with probability 0.5
    if mode == "joint":
        assert alone == 0 and abs(lm.mean() - 0.5) < hoeffding_eps(len(seqs))
    else:
        assert abs(alone - 0.5) < hoeffding_eps(len(seqs))


def test_runs_differing_only_in_dropout_mode_see_the_same_sequences(shards):
    """Same seed, other mode: identical clips, frames and noise; only the drop flags differ (the ablation's control)."""
    root, _ = shards
    urls = resolve_shards("", root)
    runs = {m: list(itertools.islice(iter(SequenceStream(urls, cfg_for(**{"data.dropout_mode": m,
                                                                          "data.cond_dropout": 0.5}))), 60))
            for m in ("joint", "independent")}
    for j, i in zip(runs["joint"], runs["independent"]):
        assert j["key"] == i["key"] and np.array_equal(j["frames"], i["frames"])
        assert np.array_equal(j["latents"], i["latents"])                 # same VAE posterior noise draw
        assert j["drop_landmarks"] == j["drop_clip"] == i["drop_landmarks"]
    assert any(i["drop_landmarks"] != i["drop_clip"] for i in runs["independent"])


def test_paper_config_and_demo_preset_drop_both_conditions_together_at_10_percent():
    yaml_path = Path(__file__).resolve().parents[1] / "dags" / "train.yaml"
    for cfg in (load_config(None), load_config(yaml_path), load_config(yaml_path, ["preset=demo"])):
        assert (cfg.data.dropout_mode, cfg.data.cond_dropout) == ("joint", 0.1), cfg.preset
    assert load_config(yaml_path, ["data.dropout_mode=independent"]).data.dropout_mode == "independent"
    with pytest.raises(ConfigError, match=re.escape("dropout_mode must be independent|joint, got 'both'")):
        load_config(None, ["data.dropout_mode=both"])


def test_missing_and_truncated_shards_are_skipped_and_counted(tmp_path, caplog):
    fx = write_shards(tmp_path, n_clips=8, per_shard=2)
    truncate(fx["paths"][1])
    fx["paths"][2].unlink()
    cfg = cfg_for()
    urls = resolve_shards("", tmp_path)  # index.json still lists the deleted shard
    assert check_schema(urls, cfg)
    with caplog.at_level(logging.WARNING, logger="reenactfaces.data"):
        stream = SequenceStream(urls, cfg)
        for _ in itertools.islice(iter(stream), 300):
            if stream.counters.bad_shards == 2:
                break
    assert stream.counters.bad_shards == 2
    assert any("train-000002.tar" in r.message for r in caplog.records)
    assert any("train-000001.tar" in r.message for r in caplog.records)
    # training batches keep coming from the good shards
    it = make_batches(urls, cfg)
    assert next(it)[0]["latents"].shape == (4, 4, 4, 8, 8)


def test_all_shards_unreadable_is_an_error(tmp_path):
    fx = write_shards(tmp_path, n_clips=2, per_shard=2)
    truncate(fx["paths"][0], keep=0.01)
    with pytest.raises(SchemaError, match="none of the 1 shards is readable"):
        check_schema(resolve_shards("", tmp_path), cfg_for())


@pytest.mark.parametrize("kind,match", [("version", "schema_version 99"), ("member", "lacks members.*landmarks.npy"),
                                        ("latent", r"latents are \(4, 8, 8\).*expects \(4, 32, 32\)"),
                                        ("clipdim", "clip_dim 16 != model.clip_dim 512")])
def test_schema_mismatch_is_a_clear_error(tmp_path, kind, match):
    kw = {"version": dict(schema_version=99), "member": dict(drop_member="landmarks.npy")}.get(kind, {})
    write_shards(tmp_path, n_clips=2, per_shard=2, **kw)
    over = {"latent": {"model.latent_size": 32}, "clipdim": {"model.clip_dim": 512}}.get(kind, {})
    with pytest.raises(SchemaError, match=match):
        check_schema(resolve_shards("", tmp_path), cfg_for(**over))


def test_pickled_member_is_never_loaded(tmp_path, caplog):
    """An object array (pickle inside .npy) is refused by np.load(allow_pickle=False): sample skipped."""
    fx = write_shards(tmp_path, n_clips=2, per_shard=2)
    evil = tmp_path / "shards" / "evil-000000.tar"
    with wds.TarWriter(str(evil)) as w:
        for cid, c in fx["clips"].items():
            buf = io.BytesIO()
            np.save(buf, np.array([{"boom": 1}], dtype=object), allow_pickle=True)
            s = {"__key__": cid, "meta.json": json.dumps(c["meta"]).encode(), "landmarks.npy": buf.getvalue()}
            for k in ("latent_mean.npy", "latent_std.npy", "clip_emb.npy", "landmarks_ok.npy", "frame_index.npy", "time_s.npy"):
                b = io.BytesIO()
                np.save(b, c[k])
                s[k] = b.getvalue()
            w.write(s)
    stream = SequenceStream([str(evil), str(fx["paths"][0])], cfg_for(**{"data.shuffle_buffer": 1}))
    with caplog.at_level(logging.WARNING, logger="reenactfaces.data"):
        got = list(itertools.islice(iter(stream), 10))
    assert len(got) == 10 and stream.counters.bad_samples >= 1
    assert any("Object arrays cannot be loaded" in r.message for r in caplog.records)


def test_resume_reseeds_and_ranks_split_shards(shards):
    root, fx = shards
    cfg = cfg_for()
    urls = resolve_shards("", root)
    a = [s["frames"].tolist() + [s["key"]] for s in itertools.islice(iter(SequenceStream(urls, cfg)), 20)]
    a2 = [s["frames"].tolist() + [s["key"]] for s in itertools.islice(iter(SequenceStream(urls, cfg)), 20)]
    b = [s["frames"].tolist() + [s["key"]] for s in itertools.islice(iter(SequenceStream(urls, cfg, start_step=500)), 20)]
    assert a == a2 and a != b  # deterministic given (seed, rank, step); a resumed run gets a new stream
    mine = {k for k, c in fx["clips"].items() if c["number"] // 2 in (1, 3)}  # shards 1 and 3 = rank 1 of 2
    keys = {s["key"] for s in itertools.islice(iter(SequenceStream(urls, cfg, rank=1, world=2)), 40)}
    assert keys and keys <= mine
    # fewer shards than ranks: every rank still reads (a rank with no shard would hang DDP)
    assert next(iter(SequenceStream(urls[:1], cfg, rank=3, world=4)))["key"]


def test_worker_processes_split_shards_and_report_bad_ones(tmp_path):
    fx = write_shards(tmp_path, n_clips=8, per_shard=2)
    truncate(fx["paths"][3])
    urls = resolve_shards("", tmp_path)
    it = make_batches(urls, cfg_for(**{"data.num_workers": 2}))
    workers, bad, keys = set(), 0, {0: set(), 1: set()}
    for _ in range(25):
        b, counters = next(it)     # a batch comes from one worker; its counters travel beside it
        w = counters.worker
        workers.add(w)
        keys[w].update(fx["clips"][k]["number"] // 2 for k in b["key"])  # shard numbers of the clips
        bad = max(bad, counters.bad_shards)
    assert workers == {0, 1}
    assert keys[0] <= {0, 2} and keys[1] <= {1, 3}  # worker w reads shards w::2
    assert bad == 1                                  # worker 1 found the truncated shard 3


def test_check_schema_reports_the_shards_dims_and_leaves_the_config_alone(shards):
    """0 = "from the shards": check_schema accepts any size then, returns what it read, and edits nothing;
    model.config.with_shard_dims adopts the values (a given non-zero value is never overwritten)."""
    from model.config import with_shard_dims

    root, _ = shards
    cfg = cfg_for(**{"model.latent_size": 0, "model.clip_dim": 0})
    dims = check_schema(resolve_shards("", root), cfg)
    assert (dims.latent_size, dims.latent_channels, dims.clip_dim) == (8, 4, 16) and dims.meta["clip_dim"] == 16
    assert (cfg.model.latent_size, cfg.model.clip_dim) == (0, 0)
    with_shard_dims(cfg, dims.latent_size, dims.clip_dim)
    assert (cfg.model.latent_size, cfg.model.clip_dim) == (8, 16)
    given = with_shard_dims(cfg_for(), 32, 512)
    assert (given.model.latent_size, given.model.clip_dim) == (8, 16)
