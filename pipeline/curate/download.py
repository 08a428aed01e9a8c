"""The download stage: one link -> <data>/media/<safe id>.<ext>, or a recorded reason why not.

yt-dlp is used through its Python API with its own retries switched off: this loop owns
retrying, so every attempt is counted and backed off exponentially (honouring Retry-After).
Transient failures (HTTP 408/425/429/5xx, 403, timeouts, refused/reset connections, truncated
bodies) are retried; permanent ones (404/410/other 4xx, private/removed/unsupported, empty
file, not a decodable video, over the size or duration cap) are not. A source slower than
`min_rate` bytes/s over `min_rate_window_s` is dropped at once as transient and not retried in
this run (the next run tries again): a throttled server would otherwise hold a download slot for
minutes per attempt. (yt-dlp's own `throttledratelimit` re-extracts and resumes in an endless loop
on such a link, so a progress hook enforces the floor instead.)
A download lands in <data>/media/.partial/<safe id>/ (local scratch space when the data root is an
object store) and is moved into place (one rename, or one PUT) only after PyAV has decoded a frame of
it, so a partial or broken file never counts. Opted-out videos never
get here (pipeline.curate.runner.download_step skips them). Ids only ever reach the disk through
safe_name + DataRoot.path.

Result record: {video_id, url, status: ok|failed, error_class: permanent|transient|None,
message (one line), media_path (relative to the data root), bytes, attempts}.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.paths import DataRoot, safe_name
from pipeline.storage import scratch_dir

log = logging.getLogger("pipeline.curate.download")
PARTIAL = ".partial"
_TMP_SUFFIXES = (".part", ".ytdl", ".temp", ".tmp")


@dataclass
class DownloadConfig:
    max_height: int = 1080          # format best[height<=?N]; the paper's crops average 745 px
    max_attempts: int = 4           # yt-dlp calls per video, the first included
    backoff_base_s: float = 2.0     # wait base * 2**(k-1) after the k-th failed attempt
    backoff_max_s: float = 60.0     # cap for one wait (also caps a server's Retry-After)
    socket_timeout_s: float = 20.0
    cookies_file: str = ""          # Netscape cookies.txt (YouTube's bot wall wants a logged-in session)
    proxy: str = ""                 # e.g. http://user:pass@host:3128 or socks5://host:1080
    rate_limit: int = 0             # bytes per second, 0 = unlimited
    max_duration_s: float = 0.0     # 0 = no cap; checked from metadata before and by probe after
    max_filesize: int = 0           # bytes, 0 = no cap
    min_rate: int = 20_000          # bytes/s: an attempt averaging less over the window is dropped (0 = off)
    min_rate_window_s: float = 20.0

    @classmethod
    def from_params(cls, params: dict) -> "DownloadConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValueError(f"unknown download option(s) {unknown}; known: {sorted(names)}")
        return cls(**params)


class Failure(Exception):
    def __init__(self, error_class: str, message: str, retry_after: float | None = None,
                 retry_now: bool = True):
        super().__init__(message)
        self.error_class, self.message, self.retry_after = error_class, message, retry_after
        self.retry_now = retry_now      # False: transient, but not worth another attempt in this run


class TooSlow(Exception):
    """Raised from the progress hook: not a yt-dlp or network error, so yt-dlp lets it through."""


class MinRate:
    """yt-dlp progress hook: raise TooSlow once the bytes of the last `window_s` seconds of an attempt
    average under `min_rate` per second. (A stall with no bytes at all is the socket timeout's job.)"""

    def __init__(self, min_rate: int, window_s: float, clock=time.monotonic):
        self.min_rate, self.window_s, self.clock = min_rate, window_s, clock
        self.samples: list[tuple[float, int]] = []    # (time, downloaded bytes), oldest first

    def __call__(self, d: dict) -> None:
        if d.get("status") != "downloading" or not self.min_rate:
            return
        now, got = self.clock(), int(d.get("downloaded_bytes") or 0)
        self.samples.append((now, got))
        while len(self.samples) > 1 and now - self.samples[1][0] >= self.window_s:
            self.samples.pop(0)                       # keep one sample at least window_s old
        t0, b0 = self.samples[0]
        if now - t0 >= self.window_s and (got - b0) / (now - t0) < self.min_rate:
            total = d.get("total_bytes") or d.get("total_bytes_estimate")
            of = f" of {total / 1000:.0f} kB" if total else ""
            raise TooSlow(f"too slow: {(got - b0) / (now - t0) / 1000:.1f} kB/s over the last {now - t0:.0f} s, "
                          f"under min_rate {self.min_rate / 1000:g} kB/s ({got / 1000:.1f} kB{of} received); "
                          "a throttled or overloaded source, retried on the next run")


def one_line(msg: object, limit: int = 300) -> str:
    s = re.sub(r"\x1b\[[0-9;]*m", "", str(msg))         # yt-dlp colours
    s = " ".join(s.split())
    s = re.sub(r"^(ERROR:\s*)+", "", s)
    return s[:limit]


# ------------------------------------------------------------------ classification
_PERMANENT = re.compile(
    r"unsupported url|private video|video is private|removed|unavailable|does not exist|no longer available|"
    r"copyright|terminated|requested format is not available|no video formats found|"
    r"not a valid url|is not a video|members[- ]only|age[- ]restricted|geo[- ]?restrict", re.I)
_TRANSIENT = re.compile(
    r"timed out|timeout|connection (reset|refused|aborted)|temporary failure|bytes read|more expected|"
    r"incompleteread|content ?too ?short|remote end closed|eof occurred|http error (429|5\d\d)|"
    r"sign in to confirm|too many requests|network is unreachable", re.I)


def _causes(exc: BaseException):
    """The exception and everything it wraps (yt-dlp keeps the cause in exc_info / .cause)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        info = getattr(e, "exc_info", None)
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__,
                 info[1] if isinstance(info, tuple) and len(info) > 1 else None]


def classify(exc: BaseException) -> Failure:
    """permanent or transient, a one-line message, and the server's Retry-After when it sent one."""
    msg = one_line(exc)
    status, retry_after = None, None
    for e in _causes(exc):
        st = getattr(e, "status", None)
        if isinstance(st, int) and 100 <= st < 600:
            status = st
            resp = getattr(e, "response", None)
            ra = getattr(getattr(resp, "headers", None), "get", lambda *_: None)("Retry-After")
            if ra and str(ra).strip().isdigit():
                retry_after = float(ra)
            break
    if status is not None:
        transient = status in (403, 408, 425, 429) or status >= 500
        return Failure("transient" if transient else "permanent", f"HTTP {status}: {msg}", retry_after)
    if _TRANSIENT.search(msg):
        return Failure("transient", msg)
    if re.search(r"did not get any data blocks", msg, re.I):
        return Failure("permanent", f"empty file (the server sent no data): {msg}")
    if _PERMANENT.search(msg):
        return Failure("permanent", msg)
    if any(isinstance(e, (TimeoutError, ConnectionError)) for e in _causes(exc)):
        return Failure("transient", msg)
    # Unknown: worth a bounded number of retries rather than losing the video for good.
    return Failure("transient", msg or type(exc).__name__)


# ------------------------------------------------------------------ yt-dlp
class _YdlLog:
    def __init__(self):
        self.lines: list[str] = []

    def debug(self, msg):
        self.lines.append(msg)

    info = warning = error = debug


def ydl_options(cfg: DownloadConfig, workdir: Path, logger=None) -> dict:
    import imageio_ffmpeg

    opts = {
        "format": f"best[height<=?{int(cfg.max_height)}]",   # direct links report no height: '?' keeps them
        "outtmpl": {"default": str(workdir / "media.%(ext)s")},
        "restrictfilenames": True, "playlist_items": "1", "noplaylist": True,
        "quiet": True, "no_warnings": True, "noprogress": True, "logger": logger or _YdlLog(),
        "retries": 0, "fragment_retries": 0, "extractor_retries": 0, "file_access_retries": 0,
        "socket_timeout": float(cfg.socket_timeout_s), "continuedl": True, "updatetime": False,
        "cachedir": False, "ffmpeg_location": imageio_ffmpeg.get_ffmpeg_exe(),
    }
    if cfg.cookies_file:
        opts["cookiefile"] = str(cfg.cookies_file)
    if cfg.proxy:
        opts["proxy"] = cfg.proxy
    if cfg.rate_limit:
        opts["ratelimit"] = int(cfg.rate_limit)
    if cfg.max_filesize:
        opts["max_filesize"] = int(cfg.max_filesize)
    if cfg.max_duration_s:
        from yt_dlp.utils import match_filter_func

        opts["match_filter"] = match_filter_func(f"duration <=? {float(cfg.max_duration_s)}")
    return opts


def _attempt(url: str, workdir: Path, cfg: DownloadConfig) -> Path:
    """One yt-dlp call; returns the finished file in workdir or raises Failure."""
    import yt_dlp

    logger = _YdlLog()
    opts = ydl_options(cfg, workdir, logger)
    opts["progress_hooks"] = [MinRate(cfg.min_rate, cfg.min_rate_window_s)]
    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            ydl.extract_info(url, download=True)
    except TooSlow as e:
        raise Failure("transient", str(e), retry_now=False) from None
    except Exception as e:     # DownloadError and whatever an extractor throws
        raise classify(e) from None
    done = [p for p in workdir.iterdir() if p.is_file() and not p.name.endswith(_TMP_SUFFIXES)]
    if not done:
        said = " ".join(logger.lines[-3:])
        if re.search(r"max-?filesize", said, re.I):
            raise Failure("permanent", f"larger than max_filesize ({cfg.max_filesize} bytes)")
        if re.search(r"does not pass filter|skipping", said, re.I):
            raise Failure("permanent", f"longer than max_duration_s ({cfg.max_duration_s:g} s)")
        raise Failure("transient", one_line(f"yt-dlp produced no file: {said}") or "yt-dlp produced no file")
    return max(done, key=lambda p: p.stat().st_size)


def _validate(path: Path, cfg: DownloadConfig) -> None:
    from pipeline.video_io import VideoError, probe

    size = path.stat().st_size
    if size == 0:
        raise Failure("permanent", "empty file")
    if cfg.max_filesize and size > cfg.max_filesize:
        raise Failure("permanent", f"larger than max_filesize ({size} > {cfg.max_filesize} bytes)")
    try:
        info = probe(path)
    except VideoError as e:
        raise Failure("permanent", f"not a video: {one_line(e)}") from None
    if cfg.max_duration_s and info.duration_s > cfg.max_duration_s:
        raise Failure("permanent", f"longer than max_duration_s ({info.duration_s:.1f} > {cfg.max_duration_s:g} s)")


def _existing(root: DataRoot, safe: str) -> str | None:
    """The key of this video's finished download, if there is one."""
    found = [n for n in root.ls("media", f"{safe}.*") if n[len(safe) + 1:].isalnum()]
    return root.key("media", found[0]) if found else None


def download(url: str, video_id: str, root: DataRoot | str | os.PathLike, **params) -> dict:
    """Fetch one video; never raises for a bad video (ValueError only for unknown options)."""
    cfg = DownloadConfig.from_params(params)
    root = root if isinstance(root, DataRoot) else DataRoot.of(root)
    rec = {"video_id": video_id, "url": url, "status": "failed", "error_class": None, "message": "",
           "media_path": None, "bytes": 0, "attempts": 0}
    try:
        safe = safe_name(video_id or "")
    except ValueError:
        return {**rec, "error_class": "permanent", "message": "empty video id"}
    if not re.match(r"^https?://", url or "", re.I):
        return {**rec, "error_class": "permanent", "message": f"refusing url scheme: {one_line(url, 80)!r}"}

    have = _existing(root, safe)
    if have is not None:
        try:
            if not root.remote:        # an object store's object is whole or absent: only a local file can be half
                _validate(root.path(have), cfg)
            return {**rec, "status": "ok", "message": "already downloaded", "media_path": have,
                    "bytes": root.size(have)}
        except Failure:
            root.rm(have)              # a broken leftover never counts; fetch again

    # in progress under the data root (local) or in local scratch space (object store: published in one PUT)
    work = root.path("media", PARTIAL, safe) if not root.remote else scratch_dir("partial", safe)
    shutil.rmtree(work, ignore_errors=True)      # a killed run's partial file is not trusted
    work.mkdir(parents=True)
    fail = Failure("transient", "not attempted")
    try:
        for attempt in range(1, max(1, cfg.max_attempts) + 1):
            rec["attempts"] = attempt
            try:
                got = _attempt(url, work, cfg)
                _validate(got, cfg)
                ext = got.suffix.lower() if re.match(r"^\.[a-z0-9]{1,5}$", got.suffix.lower()) else ".mp4"
                final, size = root.key("media", safe + ext), got.stat().st_size
                root.put_file(got, final, move=True)
                return {**rec, "status": "ok", "message": "", "media_path": final, "bytes": size}
            except Failure as f:
                fail = f
            if fail.error_class == "permanent" or not fail.retry_now or attempt == cfg.max_attempts:
                break
            wait = min(cfg.backoff_base_s * 2 ** (attempt - 1), cfg.backoff_max_s)
            if fail.retry_after is not None:
                wait = max(wait, min(fail.retry_after, cfg.backoff_max_s))
            log.info("retry %d/%d for %s in %.2fs: %s", attempt, cfg.max_attempts, safe, wait, fail.message)
            time.sleep(wait)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {**rec, "error_class": fail.error_class, "message": one_line(fail.message)}
