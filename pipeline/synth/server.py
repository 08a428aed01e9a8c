"""A loopback (127.0.0.1) HTTP source server for the generated corpus, with switchable faults.

Routes (all GET and HEAD):
  /v/<name>.mp4          the video itself (Range requests answered with 206); .avi for an AVI
  /page/<name>.html      an HTML page with a <video> tag pointing at /v/<name>.mp4 (or .avi)
  /fault/<mode>[-N]/<name>.mp4   the video behind a fault baked into the URL (for manifests)
  /                      an index of both kinds of links

Fault modes: 404, 410, 429 (with Retry-After: 0), 500, 503, truncate (Content-Length promises
the whole body, half is sent, the connection closes), slow (headers after `delay` seconds),
trickle (the body at `rate` bytes/s: a throttled source), notvideo (200, video/mp4, but text bytes),
empty (200, zero bytes). A fault applies to one path
or to every path, always or only the first N matching requests ("429 twice, then success").

    with SourceServer("data/corpus") as srv:
        srv.fault("429", path=srv.url("talk_360p30"), times=2)
        ...; srv.hits(srv.url("talk_360p30"))   # requests the server saw for that path

    python -m pipeline.synth.server --corpus data/corpus --write-sources manifests/sources.csv
"""
from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

MODES = ("404", "410", "429", "500", "503", "truncate", "slow", "trickle", "notvideo", "empty")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_FAULT_PATH = re.compile(r"^/fault/(?P<mode>[a-z0-9]+)(?:-(?P<times>\d+))?(?P<rest>/v/.+|/page/.+|/[^/]+)$")
NOT_A_VIDEO = b"This is a plain text file served as video/mp4. It is not a video.\n" * 64
VIDEO_TYPES = {"mp4": "video/mp4", "avi": "video/x-msvideo"}     # corpus file extension -> Content-Type


@dataclass
class Fault:
    mode: str
    times: int | None = None        # None = every request; N = the first N requests, then normal
    delay: float = 2.0              # seconds, for "slow"
    rate: int = 2000                # bytes per second, for "trickle"
    used: int = 0


class _Handler(BaseHTTPRequestHandler):
    server_version = "reenactfaces-testserver/1"
    protocol_version = "HTTP/1.0"   # one request per connection: a truncated body ends with EOF

    def log_message(self, *args):   # requests are recorded in SourceServer.requests instead
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        srv: SourceServer = self.server.owner
        raw = unquote(urlparse(self.path).path)
        fault, path = srv._take_fault(raw)
        srv._log(self.command, raw, self.headers.get("Range"), fault.mode if fault else None,
                 proxied=self.path.lower().startswith("http"), cookie=self.headers.get("Cookie"))
        try:
            if fault and fault.mode == "slow":
                time.sleep(fault.delay)
                fault = None
            if fault and fault.mode in ("404", "410", "429", "500", "503"):
                extra = {"Retry-After": "0"} if fault.mode == "429" else {}
                return self._send(int(fault.mode), b"fault: %s\n" % fault.mode.encode(), "text/plain", head, extra)
            if fault and fault.mode == "empty":
                return self._send(200, b"", "video/mp4", head)
            if fault and fault.mode == "notvideo":
                return self._send(200, NOT_A_VIDEO, "video/mp4", head)
            body, ctype = srv._resolve(path)
            if body is None:
                return self._send(404, b"not found\n", "text/plain", head)
            self._send_ranged(body, ctype, head, truncate=bool(fault and fault.mode == "truncate"),
                              rate=fault.rate if fault and fault.mode == "trickle" else 0)
        except (BrokenPipeError, ConnectionResetError):
            pass                    # the client went away (yt-dlp closes probes early): not our problem

    def _send(self, code: int, body: bytes, ctype: str, head: bool, extra: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_ranged(self, body: bytes, ctype: str, head: bool, truncate: bool, rate: int = 0) -> None:
        start, end, code = 0, len(body) - 1, 200
        m = re.match(r"bytes=(\d*)-(\d*)$", self.headers.get("Range") or "")
        if m and ctype in VIDEO_TYPES.values() and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), end) if m.group(2) else end
            else:                   # suffix range: the last N bytes
                start = max(0, len(body) - int(m.group(2)))
            if start >= len(body) or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            code = 206
        part = body[start:end + 1]
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(part)))
        self.send_header("Accept-Ranges", "bytes")
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
        self.end_headers()
        if head:
            return
        if truncate:                # promise len(part), deliver half, hang up
            self.wfile.write(part[: len(part) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if rate:                    # a tenth of a second's worth at a time, until done or the client hangs up
            chunk = max(1, rate // 10)
            for i in range(0, len(part), chunk):
                self.wfile.write(part[i:i + chunk])
                self.wfile.flush()
                time.sleep(0.1)
            return
        self.wfile.write(part)


class SourceServer:
    """Threaded loopback server over a corpus folder (<name>.mp4 / <name>.avi files)."""

    def __init__(self, corpus_dir: str | Path, port: int = 0):
        self.corpus_dir = Path(corpus_dir)
        self._lock = threading.Lock()
        self._faults: dict[str | None, Fault] = {}
        self._path_faults: dict[str, int] = {}      # counters for faults baked into /fault/ URLs
        self.requests: list[dict] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    # -- lifecycle
    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "SourceServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="testserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> "SourceServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- links
    def videos(self) -> list[str]:
        return sorted(p.stem for ext in VIDEO_TYPES for p in self.corpus_dir.glob(f"*.{ext}") if _NAME.match(p.stem))

    def _file(self, name: str) -> Path | None:
        return next((f for f in (self.corpus_dir / f"{name}.{ext}" for ext in VIDEO_TYPES) if f.is_file()), None)

    def url(self, name: str, kind: str = "direct", fault: str | None = None) -> str:
        """kind: direct (the video file) or page (HTML with <video>); fault bakes a mode ("429-2") into the URL."""
        f = self._file(name)
        path = {"direct": f"/v/{name}{f.suffix if f else '.mp4'}", "page": f"/page/{name}.html"}[kind]
        return self.base_url + (f"/fault/{fault}" if fault else "") + path

    # -- faults and the request log
    def fault(self, mode: str, path: str | None = None, times: int | None = None, delay: float = 2.0,
              rate: int = 2000) -> None:
        """Switch a fault on for one path (or a full URL of this server), or for all paths (path=None)."""
        if mode not in MODES:
            raise ValueError(f"unknown fault mode {mode!r} (one of {', '.join(MODES)})")
        with self._lock:
            self._faults[self._key(path)] = Fault(mode, times, delay, rate)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._path_faults.clear()

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self._path_faults.clear()
            self.requests.clear()

    def hits(self, path: str | None = None) -> int:
        """Requests seen for a path or URL (all requests when None)."""
        key = self._key(path)
        with self._lock:
            return sum(1 for r in self.requests if key is None or r["path"] == key)

    @staticmethod
    def _key(path: str | None) -> str | None:
        return None if path is None else unquote(urlparse(path).path) or "/"

    def _log(self, method: str, path: str, rng: str | None, fault: str | None, **extra) -> None:
        with self._lock:
            self.requests.append({"method": method, "path": path, "range": rng, "fault": fault,
                                  "time": time.time(), **extra})

    def _take_fault(self, path: str) -> tuple[Fault | None, str]:
        """The fault this request meets (consuming one use), and the path with any /fault/ prefix
        removed. Requests are logged under their full path, so a baked fault URL has its own count."""
        with self._lock:
            m = _FAULT_PATH.match(path)
            if m and m.group("mode") in MODES:
                n = self._path_faults.get(path, 0)
                self._path_faults[path] = n + 1
                times = int(m.group("times")) if m.group("times") else None
                fault = Fault(m.group("mode")) if times is None or n < times else None
                return fault, m.group("rest")
            for key in (path, None):
                f = self._faults.get(key)
                if f and (f.times is None or f.used < f.times):
                    f.used += 1
                    return f, path
        return None, path

    def _resolve(self, path: str) -> tuple[bytes | None, str]:
        if path in ("/", "/index.html"):
            items = "".join(f'<li><a href="/v/{f.name}">{f.name}</a> <a href="/page/{n}.html">page</a></li>'
                            for n in self.videos() for f in [self._file(n)])
            return f"<!doctype html><html><body><ul>{items}</ul></body></html>".encode(), "text/html"
        m = re.match(r"^/(v|page)/([A-Za-z0-9_.-]+)\.([a-z0-9]+)$", path)
        if not m or not (m.group(1) == "v" and m.group(3) in VIDEO_TYPES or m.group(1) == "page" and m.group(3) == "html"):
            return None, ""
        name = m.group(2)
        f = self._file(name)
        if f is None or (m.group(1) == "v" and f.suffix != "." + m.group(3)):
            return None, ""
        ctype = VIDEO_TYPES[f.suffix[1:]]
        if m.group(1) == "v":
            return f.read_bytes(), ctype
        page = (f"<!doctype html><html><head><title>{name}</title></head><body><h1>{name}</h1>"
                f'<video controls width="640"><source src="/v/{f.name}" type="{ctype}"></video>'
                f"</body></html>")
        return page.encode(), "text/html; charset=utf-8"

    # -- manifest
    def sources_csv(self, with_faults: bool = False) -> str:
        """sources.csv text: every corpus video, alternately as a direct link and as an HTML page."""
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["url", "video_id", "license", "note"])
        lic = "CC0 generated test media; photos: NASA astronaut (public domain), Grace Hopper (public domain)"
        for i, name in enumerate(self.videos()):
            kind = "direct" if i % 2 == 0 else "page"
            w.writerow([self.url(name, kind), name, lic, f"loopback test corpus ({kind} link)"])
        if with_faults and self.videos():
            name = self.videos()[0]
            for mode in ("404", "notvideo", "empty", "429-1"):
                w.writerow([self.url(name, "direct", fault=mode), f"fault_{mode}", lic, f"fault mode {mode}"])
        return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Serve the test corpus on 127.0.0.1 (direct MP4 links and HTML pages).")
    ap.add_argument("--corpus", required=True, help="folder with <name>.mp4 (python -m pipeline.synth.corpus --out DIR)")
    ap.add_argument("--write-sources", metavar="FILE", help="write a sources.csv pointing at this server")
    ap.add_argument("--with-faults", action="store_true", help="also list a few fault URLs (404, not a video...)")
    ap.add_argument("--generate", action="store_true", help="generate the corpus first if the folder has no videos")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port")
    ap.add_argument("--timeout", type=float, default=0, help="stop after this many seconds (0 = until killed)")
    ap.add_argument("--once", action="store_true", help="print the URL, write the CSV, and exit at once")
    args = ap.parse_args(argv)

    corpus = Path(args.corpus)
    if args.generate and not list(corpus.glob("*.mp4")):
        from pipeline.synth.corpus import generate_corpus

        generate_corpus(corpus)
    srv = SourceServer(corpus, args.port)
    if not srv.videos():
        ap.error(f"no videos in {corpus}; run: python -m pipeline.synth.corpus --out {corpus}")
    srv.start()
    print(srv.base_url, flush=True)
    if args.write_sources:
        from pipeline.paths import atomic_write_text

        atomic_write_text(Path(args.write_sources), srv.sources_csv(args.with_faults))
        print(f"wrote {args.write_sources} ({len(srv.videos())} videos)", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if not args.once:
            stop.wait(args.timeout if args.timeout > 0 else None)
    except KeyboardInterrupt:
        pass
    srv.stop()
    print(f"served {srv.hits()} requests", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
