"""Deterministic ids: the same video and span always get the same id, on any machine."""
from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qs, urlparse


def clip_id(video_id: str, start_frame: int, end_frame: int) -> str:
    """16 hex chars of sha1(video_id:start:end); end is exclusive."""
    return hashlib.sha1(f"{video_id}:{int(start_frame)}:{int(end_frame)}".encode()).hexdigest()[:16]


_YT = re.compile(r"(?:youtube\.com|youtu\.be)", re.I)


def video_id_from_url(url: str) -> str:
    """A stable id for a link: the YouTube id when there is one, else a hash of the URL."""
    u = urlparse(url)
    if _YT.search(u.netloc):
        if "v" in parse_qs(u.query):
            return parse_qs(u.query)["v"][0]
        tail = u.path.rstrip("/").rsplit("/", 1)[-1]
        if tail:
            return tail
    return "u" + hashlib.sha1(url.encode()).hexdigest()[:15]
