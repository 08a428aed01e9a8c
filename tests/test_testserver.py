"""The loopback source server at the HTTP level (plain urllib/http.client, no yt-dlp)."""
from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipeline.curate.sources import load_sources


def _get(url: str, headers: dict | None = None, timeout: float = 5.0):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_serves_videos_pages_and_ranges(source_server, corpus_dir):
    srv = source_server
    assert srv.base_url.startswith("http://127.0.0.1:")
    assert "talk_360p30" in srv.videos()
    data = (corpus_dir / "talk_360p30.mp4").read_bytes()
    code, hdr, body = _get(srv.url("talk_360p30"))
    assert code == 200 and body == data and hdr["Content-Type"] == "video/mp4"
    code, hdr, body = _get(srv.url("talk_360p30"), {"Range": "bytes=100-199"})
    assert code == 206 and body == data[100:200] and hdr["Content-Range"] == f"bytes 100-199/{len(data)}"
    code, _, body = _get(srv.url("talk_360p30"), {"Range": "bytes=-50"})
    assert code == 206 and body == data[-50:]
    assert _get(srv.url("talk_360p30"), {"Range": f"bytes={len(data)}-"})[0] == 416
    code, hdr, body = _get(srv.url("talk_360p30", "page"))
    assert code == 200 and b'<video' in body and b'src="/v/talk_360p30.mp4"' in body
    assert _get(srv.base_url + "/v/missing.mp4")[0] == 404
    assert _get(srv.base_url + "/v/../talk_360p30.json")[0] == 404          # only video files are served
    assert b"talk_360p30" in _get(srv.base_url + "/")[2]
    assert srv.hits(srv.url("talk_360p30")) == 4 and srv.hits() == 8
    # an AVI corpus file is served under its own extension and type, and only under it
    avi = srv.url("avi_header50_25")
    assert avi.endswith("/v/avi_header50_25.avi")
    code, hdr, body = _get(avi, {"Range": "bytes=0-11"})
    assert code == 206 and hdr["Content-Type"] == "video/x-msvideo" and body[:4] == b"RIFF" and body[8:12] == b"AVI "
    assert b'src="/v/avi_header50_25.avi"' in _get(srv.url("avi_header50_25", "page"))[2]
    assert _get(srv.base_url + "/v/avi_header50_25.mp4")[0] == 404


@pytest.mark.parametrize("mode,code", [("404", 404), ("410", 410), ("429", 429), ("500", 500), ("503", 503)])
def test_status_faults_then_recovery(source_server, mode, code):
    srv, url = source_server, source_server.url("cuts_360p25")
    srv.fault(mode, path=url, times=2)
    first, second, third = _get(url), _get(url), _get(url)
    assert first[0] == second[0] == code and third[0] == 200
    if mode == "429":
        assert first[1]["Retry-After"] == "0"
    assert _get(srv.url("talk_360p30"))[0] == 200               # other paths are untouched
    assert [r["fault"] for r in srv.requests[:3]] == [mode, mode, None]


def test_body_faults(source_server, corpus_dir):
    srv, url = source_server, source_server.url("talk_360p30")
    full = (corpus_dir / "talk_360p30.mp4").stat().st_size
    srv.fault("truncate", path=url)
    with pytest.raises(http.client.IncompleteRead) as e:
        with urllib.request.urlopen(url, timeout=5) as r:
            assert int(r.headers["Content-Length"]) == full
            r.read()
    assert len(e.value.partial) == full // 2
    srv.fault("empty", path=url)
    code, hdr, body = _get(url)
    assert code == 200 and body == b"" and hdr["Content-Length"] == "0"
    srv.fault("notvideo", path=url)
    code, hdr, body = _get(url)
    assert code == 200 and hdr["Content-Type"] == "video/mp4" and b"not a video" in body and len(body) < full
    srv.fault("slow", path=url, delay=1.0)
    with pytest.raises((socket.timeout, TimeoutError, urllib.error.URLError)):
        _get(url, timeout=0.3)
    with pytest.raises(ValueError, match="unknown fault mode"):
        srv.fault("teapot")


def test_global_fault_and_baked_fault_urls(source_server):
    srv = source_server
    srv.fault("503")
    assert _get(srv.url("talk_360p30"))[0] == 503 and _get(srv.url("multi_360p24", "page"))[0] == 503
    srv.clear_faults()
    assert _get(srv.url("talk_360p30"))[0] == 200
    baked = srv.url("talk_360p30", fault="429-1")
    assert "/fault/429-1/v/talk_360p30.mp4" in baked
    assert [_get(baked)[0] for _ in range(3)] == [429, 200, 200]
    assert _get(srv.url("talk_360p30", "page", fault="404"))[0] == 404
    assert srv.hits(baked) == 3


def test_cli_writes_sources_that_validate(corpus_dir, tmp_path):
    out = tmp_path / "sources.csv"
    p = subprocess.run([sys.executable, "-m", "pipeline.synth.server", "--corpus", str(corpus_dir),
                        "--write-sources", str(out), "--with-faults", "--once"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    base = p.stdout.splitlines()[0]
    assert base.startswith("http://127.0.0.1:")
    srcs = load_sources(out)
    names = {q.stem for q in Path(corpus_dir).iterdir() if q.suffix in (".mp4", ".avi")}
    assert {s.video_id for s in srcs if not s.video_id.startswith("fault_")} == names
    assert any("/page/" in s.url for s in srcs) and any("/v/" in s.url for s in srcs)
    assert all(s.url.startswith(base) and s.license for s in srcs)
    bad = subprocess.run([sys.executable, "-m", "pipeline.synth.server", "--corpus", str(tmp_path / "none"), "--once"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "no videos" in bad.stderr and "Traceback" not in bad.stderr
