"""The held-out split: deterministic, shared by the trainer (excludes it) and `make eval` (scores on it)."""
from __future__ import annotations

import itertools
import pickle

import pytest
from shardfixtures import truncate, write_shards

from model.config import load_config
from model.data import SequenceStream, make_batches, resolve_shards
from model.split import HeldOut, catalog, heldout_videos, is_held_out, shard_videos, training_split


def test_rule_is_deterministic_and_nested():
    vids = [f"video{i}" for i in range(2000)]
    held = [v for v in vids if is_held_out(v, 0.1)]
    assert 150 < len(held) < 250                                   # ~10 %
    assert held == [v for v in vids if is_held_out(v, 0.1)]        # same answer every time
    assert set(held) <= {v for v in vids if is_held_out(v, 0.2)}   # nested fractions
    counts = {v: 3 for v in vids}
    assert heldout_videos(counts, 0.1, 2) == set(held)              # large corpus: the rule alone
    assert heldout_videos(counts, 0.0, 2) == set()                  # 0 = train on everything


def test_small_corpus_is_topped_up_but_never_past_half_or_the_last_video():
    counts = {f"v{i}": 1 for i in range(6)}
    held = heldout_videos(counts, 0.1, 2)
    assert len(held) >= 2 and sum(counts[v] for v in held) >= 2   # >= 2 clips of >= 2 videos
    assert len(held) <= 3                                          # never more than half of 6
    assert heldout_videos(counts, 0.1, 2) == held                  # deterministic
    assert held <= heldout_videos(counts, 0.1, 50)                # asking for more only adds videos
    assert len(heldout_videos(counts, 0.1, 50)) == 3               # capped at half even when asked for more
    assert len(heldout_videos({"a": 5, "b": 5}, 0.1, 2)) <= 1      # 2 videos: at most one held out
    assert len(heldout_videos({"a": 1, "b": 1, "c": 1}, 0.1, 2)) == 2  # 3 videos: 2 (cross-identity), 1 trained


def test_heldout_is_picklable_for_dataloader_workers():
    h = pickle.loads(pickle.dumps(HeldOut({"a", "b"}, 0.1)))
    assert "a" in h and "c" not in h and None not in h
    rule = pickle.loads(pickle.dumps(HeldOut(None, 0.5)))
    vids = [f"x{i}" for i in range(100)]
    assert [v in rule for v in vids] == [is_held_out(v, 0.5) for v in vids]


def cfg_for(**over):
    o = {"model.size": "tiny", "model.latent_size": 8, "model.clip_dim": 16, "model.frames": 4,
         "data.num_workers": 0, "data.shuffle_buffer": 4, "train.global_batch": 4}
    o.update(over)
    return load_config(None, [f"{k}={v}" for k, v in o.items()])


def test_training_never_sees_a_heldout_video(tmp_path):
    fx = write_shards(tmp_path, n_clips=12, per_shard=2)        # 6 videos, one per shard, no identities
    urls = resolve_shards("", tmp_path)
    by_shard = shard_videos(urls)
    assert catalog(by_shard) == {f"vid{i}": 2 for i in range(6)}
    held, train_urls, note = training_split(urls, 0.1, 2)
    # samples without an identity_id: the video is the person
    assert 2 <= len(held.people) <= 3 and all(p.startswith("video:") for p in held.people) and "held out" in note
    held_vids = {p.split(":", 1)[1] for p in held.people}
    assert len(train_urls) == 6 - len(held_vids)                # shards holding only held-out clips are dropped
    vid = {k: c["meta"]["video_id"] for k, c in fx["clips"].items()}
    # the filter alone (all shards given): held-out clips are skipped, every training clip is reached
    keys = {s["key"] for s in itertools.islice(iter(SequenceStream(urls, cfg_for(), exclude=held)), 300)}
    assert not {vid[k] for k in keys} & held_vids
    assert {vid[k] for k in keys} == set(vid.values()) - held_vids
    batches = make_batches(train_urls, cfg_for(**{"data.num_workers": 2}), exclude=held)
    seen = {vid[k] for _ in range(20) for k in next(batches)[0]["key"]}
    assert seen and not seen & held_vids
    # a resumed run keeps what its checkpoint recorded (here an older video split), even if the rule would
    # now pick otherwise, and says the old split may share people across sides
    held2, _, note2 = training_split(urls, 0.1, 2, recorded=["vid5"])
    assert held2.videos == {"vid5"} and held2.people == held.people and "WARNING" in note2
    assert {"video_id": "vid5"} in held2 and {"video_id": "vid5", "identity_id": "someone"} in held2


def test_a_heldout_person_never_reaches_a_training_batch_whatever_video_they_are_in(tmp_path):
    # personA is clip 0 of vid0 and clip 6 of vid3; the other clips of those videos are other people
    people = {0: "personA", 6: "personA"}
    fx = write_shards(tmp_path, n_clips=12, per_shard=2, identity_of=lambda i: people.get(i, f"p{i}"))
    urls = resolve_shards("", tmp_path)
    person = {k: c["meta"]["identity_id"] for k, c in fx["clips"].items()}
    rec = {"unit": "identity", "fraction": 0.1, "min_clips": 2, "people": ["personA"], "videos": []}
    held, train_urls, note = training_split(urls, 0.1, 2, recorded=rec)
    assert "personA" in held.people and "WARNING" not in note
    # vid0's and vid3's shards stay: they still hold clips of people who train
    assert fx["paths"][0].as_posix() in train_urls and fx["paths"][3].as_posix() in train_urls
    batches = make_batches(train_urls, cfg_for(**{"data.num_workers": 2}), exclude=held)
    seen = [person[k] for _ in range(40) for k in next(batches)[0]["key"]]
    assert "personA" not in seen
    assert {"p1", "p7"} <= set(seen)            # the rest of personA's videos does train
    # the rule alone, over people: personA's two clips fall on one side together
    rule = HeldOut(None, 0.5)
    assert ({"video_id": "vid0", "identity_id": "personA"} in rule) == ({"video_id": "vid3", "identity_id": "personA"} in rule)
    # the checkpoint record round-trips
    back, warn = HeldOut.from_record(held.record())
    assert back.people == held.people and back.videos == held.videos and warn == ""


def test_every_clip_heldout_is_a_clear_error(tmp_path):
    write_shards(tmp_path, n_clips=2, per_shard=2)               # one video
    urls = resolve_shards("", tmp_path)
    with pytest.raises(ValueError, match="every clip is held out"):
        training_split(urls, 0.1, 2, recorded=["vid0"])
    only_held = SequenceStream(urls, cfg_for(), exclude=HeldOut({"vid0"}, 0.1))
    with pytest.raises(RuntimeError, match="held out for evaluation"):
        next(iter(only_held))


def test_unreadable_shard_is_left_to_the_loader(tmp_path):
    fx = write_shards(tmp_path, n_clips=4, per_shard=2)
    truncate(fx["paths"][1], keep=0.01)
    urls = resolve_shards("", tmp_path)
    by_shard = shard_videos(urls)
    assert by_shard[urls[0]] == ["vid0", "vid0"] and by_shard[urls[1]] == []
    assert shard_videos(urls + ["http://example.invalid/a.tar"]) is None  # remote: rule only
    held, keep, note = training_split(["http://example.invalid/a.tar"], 0.3, 2)
    assert held.videos is None and keep == ["http://example.invalid/a.tar"] and "rule" in note
