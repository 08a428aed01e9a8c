"""The download stage with the real yt-dlp against the loopback server and its fault modes."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pipeline.curate import download as dl
from pipeline.curate.download import DownloadConfig, download, ydl_options
from pipeline.curate.runner import download_step
from pipeline.curate.sources import OptOut, load_inputs

# A generous socket timeout: the machine is shared, and a starved server thread must not look "slow".
FAST = dict(backoff_base_s=0.01, backoff_max_s=0.05, socket_timeout_s=3.0, max_attempts=3)
VIDEO = "talk_360p30"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _media(data_root) -> list[str]:
    return [str(p.relative_to(data_root.root)) for p in _files(data_root.root)]


@pytest.mark.parametrize("kind", ["direct", "page"])
def test_real_ytdlp_downloads_direct_link_and_html_page(source_server, corpus_dir, data_root, kind):
    url = source_server.url(VIDEO, kind)
    rec = download(url, "vid1", data_root, **FAST)
    assert rec == {"video_id": "vid1", "url": url, "status": "ok", "error_class": None, "message": "",
                   "media_path": "media/vid1.mp4", "bytes": (corpus_dir / f"{VIDEO}.mp4").stat().st_size,
                   "attempts": 1}
    assert (data_root.root / rec["media_path"]).read_bytes() == (corpus_dir / f"{VIDEO}.mp4").read_bytes()
    assert _media(data_root) == ["media/vid1.mp4"]                     # no partial leftovers
    if kind == "page":
        assert source_server.hits(source_server.url(VIDEO, "page")) >= 1
    # A second run finds the finished file and asks the server nothing.
    before = source_server.hits()
    again = download(url, "vid1", data_root, **FAST)
    assert again["status"] == "ok" and again["attempts"] == 0 and "already" in again["message"]
    assert source_server.hits() == before


# mode, times, status, error_class, attempts, message pattern
FAULTS = [
    ("404", None, "failed", "permanent", 1, r"HTTP 404"),
    ("410", None, "failed", "permanent", 1, r"HTTP 410"),
    ("429", 2, "ok", None, 3, r"^$"),
    ("429", None, "failed", "transient", 3, r"HTTP 429"),
    ("500", None, "failed", "transient", 3, r"HTTP 500"),
    ("503", 1, "ok", None, 2, r"^$"),
    ("truncate", 2, "ok", None, 2, r"^$"),
    ("truncate", None, "failed", "transient", 3, r"bytes read"),
    ("slow", 1, "ok", None, 2, r"^$"),
    ("notvideo", None, "failed", "permanent", 1, r"not a video"),
    ("empty", None, "failed", "permanent", 1, r"empty"),
]


@pytest.mark.parametrize("mode,times,status,error_class,attempts,msg", FAULTS,
                         ids=[f"{m}-{t or 'always'}" for m, t, *_ in FAULTS])
def test_fault_modes_are_classified(source_server, corpus_dir, data_root, mode, times, status, error_class,
                                    attempts, msg):
    url = source_server.url(VIDEO)
    source_server.fault(mode, path=url, times=times, delay=5.0)
    rec = download(url, "v", data_root, **FAST)
    log = [(r["path"], r["range"], r["fault"]) for r in source_server.requests]
    assert (rec["status"], rec["error_class"], rec["attempts"]) == (status, error_class, attempts), (rec, log)
    assert re.search(msg, rec["message"]), rec["message"]
    assert "\n" not in rec["message"] and len(rec["message"]) <= 300
    if status == "ok":
        # Resumed or retried downloads are byte-identical to the source.
        assert (data_root.root / rec["media_path"]).read_bytes() == (corpus_dir / f"{VIDEO}.mp4").read_bytes()
    else:
        assert rec["media_path"] is None and _media(data_root) == []   # a partial file never counts


def test_a_trickling_source_is_dropped_early_with_a_clear_transient_error(source_server, corpus_dir, data_root):
    # 2 kB/s: the 260 kB video would hold the slot for 2 minutes per attempt. With a 20 kB/s floor over
    # 1 s the attempt ends after about a second, and is not retried in this run (the next run retries it).
    url = source_server.url(VIDEO)
    size = (corpus_dir / f"{VIDEO}.mp4").stat().st_size
    source_server.fault("trickle", path=url, rate=2000)
    rec = download(url, "slowpoke", data_root, **{**FAST, "min_rate": 20_000, "min_rate_window_s": 1.0})
    assert (rec["status"], rec["error_class"], rec["attempts"]) == ("failed", "transient", 1), rec
    m = re.search(r"^too slow: ([\d.]+) kB/s over the last \d+ s, under min_rate 20 kB/s \(([\d.]+) kB of (\d+) kB "
                  r"received\)", rec["message"])
    assert m, rec["message"]
    rate, got, total = (float(g) for g in m.groups())
    assert rate < 20 and total == round(size / 1000)
    assert got * 1000 < size / 4                # it gave up early: most of the body was never sent
    # one attempt: yt-dlp's generic extractor looks at the link once, then downloads it once
    assert [r["method"] for r in source_server.requests if r["path"] == "/v/" + VIDEO + ".mp4"] == ["GET", "GET"]
    assert _media(data_root) == []
    # a source above the floor is left alone (100 kB/s: about 3 s for the whole file)
    source_server.reset()
    source_server.fault("trickle", path=url, rate=100_000)
    ok = download(url, "steady", data_root, **{**FAST, "min_rate": 20_000, "min_rate_window_s": 1.0})
    assert ok["status"] == "ok" and ok["attempts"] == 1, ok
    assert (data_root.root / ok["media_path"]).read_bytes() == (corpus_dir / f"{VIDEO}.mp4").read_bytes()


def test_min_rate_hook_judges_the_last_window_only():
    clock = iter(float(t) for t in range(100)).__next__
    hook = dl.MinRate(min_rate=1000, window_s=3, clock=clock)
    # a fast start (10 kB/s) does not excuse a slow tail: the rate is over the last 3 s, not since the start
    for got in (0, 10_000, 20_000, 30_000, 30_500, 31_000):
        hook({"status": "downloading", "downloaded_bytes": got})
    with pytest.raises(dl.TooSlow, match=r"too slow: 0.5 kB/s over the last 3 s, under min_rate 1 kB/s"):
        hook({"status": "downloading", "downloaded_bytes": 31_500})
    quick = dl.MinRate(min_rate=1000, window_s=3, clock=iter(float(t) for t in range(100)).__next__)
    for got in range(0, 50_000, 2000):      # 2 kB/s throughout: never too slow
        quick({"status": "downloading", "downloaded_bytes": got})
    dl.MinRate(0, 3)({"status": "downloading", "downloaded_bytes": 0})   # 0 = off


def test_fault_on_the_video_behind_a_page(source_server, data_root):
    source_server.fault("404", path=source_server.url(VIDEO))
    rec = download(source_server.url(VIDEO, "page"), "p", data_root, **FAST)
    assert (rec["status"], rec["error_class"]) == ("failed", "permanent")


def test_backoff_is_exponential_and_capped(source_server, data_root, monkeypatch):
    waits = []
    monkeypatch.setattr(dl.time, "sleep", waits.append)
    source_server.fault("500", path=source_server.url(VIDEO))
    rec = download(source_server.url(VIDEO), "b", data_root, backoff_base_s=0.5, backoff_max_s=1.5, max_attempts=5)
    assert rec["attempts"] == 5 and rec["error_class"] == "transient"
    assert waits == [0.5, 1.0, 1.5, 1.5]


def test_optout_is_never_requested(source_server, data_root, tmp_path):
    (tmp_path / "optout.csv").write_text("video_id_or_url,date,reason\n"
                                         f"by_id,2026-01-01,asked\n{source_server.url('multi_360p24')},2026-01-02,\n")
    # Opt-out is applied where the product applies it: load_inputs marks the row, download_step skips it.
    (tmp_path / "listed.csv").write_text(f"url,video_id\n{source_server.url(VIDEO)},by_id\n"
                                         f"{source_server.url('multi_360p24')},other\n")
    a, b = [download_step(it, str(data_root.root), FAST)
            for it in load_inputs(tmp_path / "listed.csv", tmp_path / "optout.csv")]
    assert a["status"] == b["status"] == "skipped_optout" and a["attempts"] == b["attempts"] == 0
    assert source_server.hits() == 0 and _media(data_root) == []
    # Over parsed sources: only the one not opted out is fetched.
    (tmp_path / "sources.csv").write_text(f"url,video_id\n{source_server.url(VIDEO)},by_id\n"
                                          f"{source_server.url('cuts_360p25', 'page')},fine\n")
    recs = [download_step(it, str(data_root.root), FAST)
            for it in load_inputs(tmp_path / "sources.csv", tmp_path / "optout.csv")]
    assert [r["status"] for r in recs] == ["skipped_optout", "ok"]
    assert {r["path"] for r in source_server.requests} <= {"/page/cuts_360p25.html", "/v/cuts_360p25.mp4"}


def test_hostile_ids_never_leave_the_data_root(source_server, data_root, tmp_path):
    hostile = ["../../escape", "/etc/passwd", "a;rm -rf $HOME `id`", "x" * 300, "..", "media/../../up"]
    outside_before = {p for p in _files(tmp_path) if data_root.root not in p.parents}
    for i, vid in enumerate(hostile):
        rec = download(source_server.url(VIDEO, "direct" if i % 2 else "page"), vid, data_root, **FAST)
        assert rec["status"] == "ok" and rec["video_id"] == vid, rec
        p = (data_root.root / rec["media_path"]).resolve()
        assert p.parent == data_root.root / "media" and p.is_file()
    outside_after = {p for p in _files(tmp_path) if data_root.root not in p.parents}
    assert outside_after == outside_before
    assert len(_media(data_root)) == len(hostile)


def test_size_and_duration_caps(source_server, data_root):
    url = source_server.url(VIDEO)                       # 4 s, ~260 kB
    big = download(url, "big", data_root, max_filesize=10_000, **FAST)
    long = download(url, "long", data_root, max_duration_s=1.0, **FAST)
    assert (big["status"], big["error_class"]) == ("failed", "permanent") and "max_filesize" in big["message"]
    assert (long["status"], long["error_class"]) == ("failed", "permanent") and "max_duration" in long["message"]
    assert big["attempts"] == long["attempts"] == 1 and _media(data_root) == []
    ok = download(url, "fits", data_root, max_filesize=10_000_000, max_duration_s=10, **FAST)
    assert ok["status"] == "ok"


def test_proxy_and_cookies_are_used(source_server, data_root, tmp_path):
    # The loopback server doubles as an HTTP proxy: a host that does not exist can only be reached through it.
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n"
                       "videos.invalid\tFALSE\t/\tFALSE\t0\tsession\tsecret123\n")
    rec = download(f"http://videos.invalid/v/{VIDEO}.mp4", "proxied", data_root, proxy=source_server.base_url,
                   cookies_file=str(cookies), **FAST)
    assert rec["status"] == "ok", rec
    seen = [r for r in source_server.requests if r["path"] == f"/v/{VIDEO}.mp4"]
    assert seen and all(r["proxied"] for r in seen)
    assert any("session=secret123" in (r["cookie"] or "") for r in seen)


def test_unreachable_server_is_transient(data_root):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                            # nothing listens there now
    rec = download(f"http://127.0.0.1:{port}/v/x.mp4", "down", data_root, **FAST)
    assert (rec["status"], rec["error_class"], rec["attempts"]) == ("failed", "transient", 3)


def test_options_and_bad_input(data_root, tmp_path):
    opts = ydl_options(DownloadConfig(max_height=480, cookies_file="c.txt", proxy="socks5://p:1080",
                                      rate_limit=50_000, max_filesize=10**6, socket_timeout_s=7), tmp_path)
    assert opts["format"] == "best[height<=?480]" and opts["cookiefile"] == "c.txt"
    assert opts["proxy"] == "socks5://p:1080" and opts["ratelimit"] == 50_000 and opts["max_filesize"] == 10**6
    assert opts["socket_timeout"] == 7 and os.path.exists(opts["ffmpeg_location"])
    assert opts["retries"] == 0 and opts["extractor_retries"] == 0     # our loop owns retries
    # yt-dlp's throttledratelimit re-extracts and resumes forever on a plain link: the floor is our hook's
    assert "throttledratelimit" not in opts
    with pytest.raises(ValueError, match="unknown download option.*max_hieght"):
        download("http://127.0.0.1/x", "x", data_root, max_hieght=3)
    bad = download("file:///etc/passwd", "f", data_root)
    assert (bad["status"], bad["error_class"], bad["attempts"]) == ("failed", "permanent", 0)
    assert download("http://127.0.0.1/x", "", data_root)["error_class"] == "permanent"
    assert OptOut().matches("x", "http://h/") is False


def test_broken_leftovers_are_replaced(source_server, data_root):
    media = data_root.dir("media")
    (media / "left.mp4").write_bytes(b"half a file from a killed run")
    stale = data_root.dir("media", ".partial", "left")
    (stale / "media.mp4.part").write_bytes(b"junk")
    rec = download(source_server.url(VIDEO), "left", data_root, **FAST)
    assert rec["status"] == "ok" and rec["attempts"] == 1
    assert (media / "left.mp4").stat().st_size == rec["bytes"] > 1000
    assert not stale.exists()
