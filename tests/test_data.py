"""Shard loader on synthetic contract shards: sequence sampling, dropout, robustness, schema, safety."""
from __future__ import annotations

import io
import itertools
import json
import logging

import numpy as np
import pytest
import webdataset as wds
from shardfixtures import truncate, write_shards

from model.config import load_config
from model.data import (
    SchemaError,
    SequenceStream,
    check_schema,
    decode,
    make_batches,
    make_sequence,
    resolve_shards,
)
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
    assert len(urls) == 4 and check_schema(urls, cfg)["schema_version"] == SCHEMA_VERSION
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


def test_dropout_rates():
    rng = np.random.default_rng(0)
    clip = decode_clip()
    n = 4000
    ind = [make_sequence(clip, 4, rng, 0.1, "independent") for _ in range(n)]
    lm = np.mean([s["drop_landmarks"] for s in ind])
    cl = np.mean([s["drop_clip"] for s in ind])
    both = np.mean([s["drop_landmarks"] and s["drop_clip"] for s in ind])
    assert 0.085 < lm < 0.115 and 0.085 < cl < 0.115 and 0.004 < both < 0.02
    joint = [make_sequence(clip, 4, rng, 0.1, "joint") for _ in range(1000)]
    assert all(s["drop_landmarks"] == s["drop_clip"] for s in joint)
    assert 0.07 < np.mean([s["drop_clip"] for s in joint]) < 0.13


def decode_clip():
    from shardfixtures import _npy, make_clip
    arrays = make_clip(3, np.random.default_rng(1))
    raw = {"__key__": "k", "meta.json": json.dumps({"vae_scaling_factor": 0.5}).encode()}
    raw.update({k: _npy(v) for k, v in arrays.items()})
    return decode(raw)


def test_missing_and_truncated_shards_are_skipped_and_counted(tmp_path, caplog):
    fx = write_shards(tmp_path, n_clips=8, per_shard=2)
    truncate(fx["paths"][1])
    fx["paths"][2].unlink()
    cfg = cfg_for()
    urls = resolve_shards("", tmp_path)  # index.json still lists the deleted shard
    assert check_schema(urls, cfg)
    with caplog.at_level(logging.WARNING, logger="reenactfaces.data"):
        seen = []
        for s in itertools.islice(iter(SequenceStream(urls, cfg)), 300):
            seen.append(s)
            if s["bad_shards"] == 2:
                break
    assert seen[-1]["bad_shards"] == 2
    assert any("train-000002.tar" in r.message for r in caplog.records)
    assert any("train-000001.tar" in r.message for r in caplog.records)
    # training batches keep coming from the good shards
    it = make_batches(urls, cfg)
    assert next(it)["latents"].shape == (4, 4, 4, 8, 8)


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
    stream = iter(SequenceStream([str(evil), str(fx["paths"][0])], cfg_for(**{"data.shuffle_buffer": 1})))
    with caplog.at_level(logging.WARNING, logger="reenactfaces.data"):
        got = list(itertools.islice(stream, 10))
    assert max(s["bad_samples"] for s in got) >= 1
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
        b = next(it)
        for w, n, k in zip(b["worker"].tolist(), b["bad_shards"].tolist(), b["key"]):
            workers.add(w)
            keys[w].add(fx["clips"][k]["number"] // 2)  # shard number of the clip
            bad = max(bad, n)
    assert workers == {0, 1}
    assert keys[0] <= {0, 2} and keys[1] <= {1, 3}  # worker w reads shards w::2
    assert bad == 1                                  # worker 1 found the truncated shard 3
