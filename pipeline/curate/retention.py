"""Media retention: what of a downloaded video stays under the data root once it is analysed.

`media.keep` in dags/curate.yaml:
  all             the download stays in media/ (shards are cut from it).
  accepted_clips  (default) each accepted clip's square crop is re-encoded into its own small file,
                  clips/<safe video id>/<clip_id>.mp4 (every frame of the span, at most `clip_side`
                  pixels a side: enough to rebuild shards with another encoder), and the download is
                  deleted. Source video is several times the accepted clips, so this is what keeps a
                  1M-clip run's storage from piling up (see `make estimate`).
  none            as accepted_clips, and the shard builder also deletes a clip's file once the clip is
                  in a committed shard: only shards remain.
Order on object storage: clip files first (write-once names), then the video's state file (the commit
marker: it names them in clips[].clip_path), then the download is deleted. A run killed in between
leaves unnamed clip files that the re-run overwrites with the same content, or a download that the
re-run deletes. Resume and --force keep working: a video whose download is gone is downloaded again
when it has to be analysed again.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.paths import DataRoot, safe_name

KEEP = ("all", "accepted_clips", "none")


@dataclass
class MediaConfig:
    keep: str = "accepted_clips"   # all | accepted_clips | none
    clip_side: int = 512           # kept crops: at most this many pixels a side (0 = the crop's own size)
    crf: int = 18                  # H.264 constant rate factor of kept crops (lower = better, bigger)

    def __post_init__(self):
        if self.keep not in KEEP:
            raise ValueError(f"media.keep must be one of {', '.join(KEEP)}, got {self.keep!r}")


def clip_key(root: DataRoot, video_id: str, clip_id: str) -> str:
    return root.key("clips", safe_name(video_id), safe_name(clip_id) + ".mp4")


def clip_side(crop_size: int, cfg: MediaConfig) -> int:
    side = min(crop_size, cfg.clip_side) if cfg.clip_side else crop_size
    return max(2, side - side % 2)      # H.264 4:2:0 wants even sides


class _ClipWriter:
    """One kept clip's H.264 file, encoded frame by frame as the single decoding pass reaches them."""

    def __init__(self, path: Path, fps: float, crf: int):
        self.path, self.fps, self.crf, self.c, self.s, self.n = path, fps, crf, None, None, 0

    def add(self, img) -> None:
        import av
        import numpy as np

        if self.c is None:
            from fractions import Fraction

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.c = av.open(str(self.path), "w")
            self.s = self.c.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            self.s.width, self.s.height = img.shape[1], img.shape[0]
            self.s.pix_fmt = "yuv420p"
            # one thread: the same crop always encodes to the same bytes (a re-run rewrites identical files)
            self.s.options = {"crf": str(self.crf), "preset": "veryfast", "threads": "1"}
        for pkt in self.s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
            self.c.mux(pkt)
        self.n += 1

    def close(self) -> None:
        if self.c is not None:
            for pkt in self.s.encode():
                self.c.mux(pkt)
            self.c.close()


def write_clip_files(root: DataRoot, media: Path, video_id: str, clips: list[dict], cfg: MediaConfig) -> int:
    """Re-encode every accepted clip's crop from one decoding pass; sets row["clip_path"] (a key under the
    root) on each accepted row. Returns bytes written. Raises VideoError if the video cannot be read."""
    import tempfile

    from pipeline.storage import scratch_dir
    from pipeline.video_io import crop_square, iter_frames

    acc = sorted((c for c in clips if c["status"] == "accepted"), key=lambda c: c["start_frame"])
    if not acc:
        return 0
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=scratch_dir("clips") if root.remote else root.dir("clips")))
    writers = {c["clip_id"]: _ClipWriter(work / f"{safe_name(c['clip_id'])}.mp4", float(c["fps"]), cfg.crf)
               for c in acc}
    written = 0
    pending = list(acc)

    def publish(c: dict) -> None:
        nonlocal written
        w = writers.pop(c["clip_id"])
        w.close()
        if not w.n:
            return
        k = clip_key(root, video_id, c["clip_id"])
        written += w.path.stat().st_size
        root.put_file(w.path, k, move=True)
        c["clip_path"] = k

    try:
        for i, img in iter_frames(media, acc[0]["start_frame"], max(c["end_frame"] for c in acc)):
            for c in pending:
                if c["start_frame"] <= i < c["end_frame"]:
                    writers[c["clip_id"]].add(crop_square(img, c["crop_x0"], c["crop_y0"], c["crop_size"],
                                                          clip_side(c["crop_size"], cfg)))
            for c in [c for c in pending if c["end_frame"] <= i + 1]:
                pending.remove(c)
                publish(c)
        for c in pending:           # the video ended before the span did: keep what was decoded
            publish(c)
    finally:
        for w in writers.values():
            w.close()
        shutil.rmtree(work, ignore_errors=True)
    return written
