"""Object storage under the data root: fsspec filesystems for URLs, local scratch space, pyarrow's view.

A data root may be a local path (as always) or a URL: `s3://bucket/prefix`, `gs://...`, `memory://...`,
`file:///abs/path` (= the local path). `pipeline.paths.DataRoot` is the one surface the code uses; this
module holds what it needs for URLs.

Atomicity, the rules every writer follows:
  - one object: on a local disk a temporary sibling is fsynced and renamed over the name; on an object
    store a PUT (or a completed multipart upload) is atomic by itself: a reader sees the old object or
    the new one, never half. Nothing is ever renamed on an object store (its "rename" is copy + delete).
  - several objects: write-once names plus a commit marker. New content gets a new name, then ONE small
    object that names the set is written last (shards/index.json for the shards, a video's state file
    for its clip files); readers trust only what the marker names, and the next run deletes what no
    marker names. A superseded object is deleted only after the marker that drops it.
  - appends (audit logs, training logs) on an object store are read + rewrite of the whole (small) object
    by its single writer.

Credentials and endpoints come from the clients' own configuration, never from this project's files:
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL (botocore reads it, so do s3fs and our
pyarrow view), ~/.aws, GOOGLE_APPLICATION_CREDENTIALS, FSSPEC_<PROTOCOL>_<KEY> variables.
"""
from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path

# protocols fsspec handles that are not a local disk
LOCAL_PROTOCOLS = ("", "file", "local")
# environment a worker on another node needs to reach the same store (credentials are left to the nodes)
ENDPOINT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")


def split_url(url: str) -> tuple[str, str]:
    """'s3://b/p' -> ('s3', 'b/p'); a local path -> ('', path)."""
    if "://" in url:
        proto, rest = url.split("://", 1)
        return proto.lower(), rest
    return "", url


def is_remote(url: str | os.PathLike) -> bool:
    return split_url(str(url))[0] not in LOCAL_PROTOCOLS


@lru_cache(maxsize=None)
def filesystem(protocol: str):
    """The fsspec filesystem for a protocol, one per process. Listings are never cached: another
    worker may have written since (s3fs would otherwise answer `exists` from a stale listing)."""
    import fsspec

    kw = {"use_listings_cache": False} if protocol in ("s3", "s3a", "gs", "gcs", "az", "abfs") else {}
    return fsspec.filesystem(protocol, **kw)


def open_url(url: str | os.PathLike, mode: str = "rb"):
    """A file object for a local path or a URL (reading, or a plain write where atomicity is not needed)."""
    proto, rest = split_url(str(url))
    if proto in LOCAL_PROTOCOLS:
        return open(rest, mode)
    return filesystem(proto).open(rest, mode)


def scratch_dir(*parts: str) -> Path:
    """Local working space for a remote data root (downloads in progress, media being analysed, model
    mirrors): $REENACTFACES_SCRATCH or <tmp>/reenactfaces-<uid>."""
    base = Path(os.environ.get("REENACTFACES_SCRATCH") or Path(tempfile.gettempdir()) / f"reenactfaces-{os.getuid()}")
    p = base.joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p


def endpoint_env() -> dict[str, str]:
    """The endpoint settings of this process, for Ray workers' runtime_env on another node."""
    return {k: os.environ[k] for k in ENDPOINT_ENV if os.environ.get(k)}


def arrow_filesystem(protocol: str):
    """A pyarrow FileSystem for Parquet / Ray Data readers: pyarrow's own S3FileSystem for s3 (endpoint and
    region from the same environment botocore reads), else fsspec's filesystem wrapped for pyarrow."""
    import pyarrow.fs as pafs

    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kw: dict = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kw.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        return pafs.S3FileSystem(**kw)
    if protocol in LOCAL_PROTOCOLS:
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem(protocol)))


_WDS_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "memory")


def register_webdataset() -> None:
    """Let stock webdataset open object-store URLs through fsspec (it ships only pipe:/curl/gsutil
    openers). Idempotent; http(s) stays webdataset's own."""
    import sys

    import webdataset.gopen as _  # noqa: F401  (the module; webdataset re-exports a function of that name)

    schemes = sys.modules["webdataset.gopen"].gopen_schemes

    def _open(url, mode="rb", bufsize=8192, **kw):
        return open_url(url, mode)

    for proto in _WDS_PROTOCOLS:
        schemes[proto] = _open
