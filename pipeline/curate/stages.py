"""The curation DAG: typed stage configs, their resources, and the per-video analysis.

dags/curate.yaml names the stages in order with their parameters and Ray resources:
download -> probe -> scenes -> faces -> quality -> filters -> manifest. The runner maps two
Ray Data steps over the sources: `download` (I/O-bound tasks) and `analyse` (one actor per
worker holding the face detector and quality scorer) which runs probe, then the single decode
pass feeding scenes + faces + quality, then filters, and returns manifest rows. `analyse_video`
below is that step as a plain function: the sequential runner and the unit tests call it directly.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.configfile import ConfigError, check_keys, fill_dataclass, load_yaml
from pipeline.curate.faces import FaceScanner, FacesConfig, make_detector, place_crop, segment
from pipeline.curate.filters import FiltersConfig, judge, split_long
from pipeline.curate.probe import ProbeConfig, TruncatedDecode, probe_video, scan
from pipeline.curate.quality import QualityConfig, QualitySampler, make_scorer
from pipeline.curate.retention import MediaConfig
from pipeline.curate.scenes import SceneCutter, ScenesConfig

STAGES = ["download", "probe", "scenes", "faces", "quality", "filters", "manifest"]


@dataclass
class DownloadParams:
    """Handed to pipeline.curate.download.download as keyword arguments (its DownloadConfig owns their meaning)."""
    params: dict = field(default_factory=dict)


@dataclass
class Resources:
    num_cpus: float = 1.0        # Ray CPUs per task/actor; fractional so 2 cores never deadlock
    concurrency: int = 1         # tasks in flight (download) or most actors in the pool (analyse)


@dataclass
class EngineConfig:
    num_cpus: int = 0            # embedded Ray: 0 = all cores of this machine
    object_store_mb: int = 256


@dataclass
class CurateConfig:
    download: DownloadParams = field(default_factory=DownloadParams)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    scenes: ScenesConfig = field(default_factory=ScenesConfig)
    faces: FacesConfig = field(default_factory=FacesConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    resources: dict[str, Resources] = field(default_factory=lambda: {
        "download": Resources(0.25, 2), "analyse": Resources(0.5, 2)})
    engine: EngineConfig = field(default_factory=EngineConfig)
    media: MediaConfig = field(default_factory=MediaConfig)    # what of a download stays (not in the fingerprint)

    def fingerprint(self) -> str:
        """Hash of every parameter that changes results (not resources): resume reuses only matching work."""
        d = {k: dataclasses.asdict(getattr(self, k)) for k in ("download", "probe", "scenes", "faces",
                                                                "quality", "filters")}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def load_dag(path: str | Path | None) -> CurateConfig:
    """Read dags/curate.yaml: {engine: {...}, stages: [{name, params: {...}, resources: {...}}]}.
    Unknown keys, stages or a wrong order raise ConfigError (a ValueError) naming the file."""
    cfg = CurateConfig()
    if path is None:
        return cfg
    doc = load_yaml(path)
    where = str(path)
    check_keys(doc, ("engine", "stages", "media"), where)
    if not isinstance(doc.get("stages") or [], list):
        raise ConfigError(f"{where}: expected a mapping with a 'stages' list")
    cfg.engine = fill_dataclass(EngineConfig, doc.get("engine"), where, "engine")
    cfg.media = fill_dataclass(MediaConfig, doc.get("media"), where, "media")
    seen = []
    for st in doc.get("stages") or []:
        check_keys(st, ("name", "params", "resources"), where, f"stages[{len(seen)}]")
        name = st.get("name")
        if name not in STAGES:
            raise ConfigError(f"{where}: unknown stage {name!r}; stages are {', '.join(STAGES)}")
        seen.append(name)
        params = st.get("params") or {}
        if name == "download":
            from pipeline.curate.download import DownloadConfig

            # a typo fails here, naming the file, not in every worker; the keys given are kept as
            # fill_dataclass typed them (2 and 2.0 are one config, with one fingerprint)
            typed = fill_dataclass(DownloadConfig, params, where, "download.params")
            cfg.download = DownloadParams({k: getattr(typed, k) for k in params})
        elif name != "manifest":
            setattr(cfg, name, fill_dataclass(type(getattr(cfg, name)), params, where, f"{name}.params"))
        if st.get("resources"):
            step = "download" if name == "download" else "analyse"
            cfg.resources[step] = fill_dataclass(Resources, st["resources"], where, f"{name}.resources")
    if seen and seen != [s for s in STAGES if s in seen]:
        raise ConfigError(f"{where}: stages out of order: {seen}; the order is {' -> '.join(STAGES)}")
    return cfg


class Models:
    """Per-worker heavy objects (face detector, quality scorer), built once on first use."""

    def __init__(self, cfg: CurateConfig):
        self.cfg = cfg
        self._det = self._scorer = None

    @property
    def detector(self):
        if self._det is None:
            self._det = make_detector(self.cfg.faces)
        return self._det

    @property
    def scorer(self):
        if self._scorer is None:
            self._scorer = make_scorer(self.cfg.quality)
        return self._scorer


def analyse_video(media: Path, video_id: str, url: str, media_rel: str, cfg: CurateConfig,
                  models: Models) -> dict:
    """probe -> (scenes + faces + quality in one decode) -> crop -> filters, for one downloaded file.

    Returns {"probe": {...}, "clips": [CLIPS rows], "rejections": [...], "times": {stage: cpu s},
    "cuts": [...], "num_frames": n, "message": str}. Raises VideoError for a file that cannot be
    curated (the caller records it as the video's status).
    """
    from pipeline.ids import clip_id

    times = {k: 0.0 for k in ("probe", "scenes", "faces", "quality", "filters")}
    t0 = time.process_time()
    info = probe_video(media, cfg.probe)
    times["probe"] = time.process_time() - t0
    fps = info.fps
    cutter = SceneCutter(cfg.scenes, fps)
    faces = FaceScanner(cfg.faces, models.detector, info.width)
    sampler = QualitySampler(cfg.quality, models.scorer, faces, cfg.faces.face_w_ratio, cfg.faces.face_h_ratio)
    scan_t: dict[str, float] = {}
    message = ""
    try:
        n = scan(media, cfg.probe.small_side, {"scenes": lambda f: cutter.update(f.index, f.small),
                                               "faces": faces.update, "quality": sampler.update}, scan_t)
    except TruncatedDecode as e:  # keep the frames before the damage
        n, message = e.frames, str(e)
    t0 = time.process_time()
    cuts = cutter.finish()
    t1 = time.process_time()
    dets = faces.finish(n)
    spans, bad = segment(dets, cuts, cfg.faces)
    t2 = time.process_time()
    times["scenes"] = scan_t.get("scenes", 0.0) + t1 - t0
    times["faces"] = scan_t.get("faces", 0.0) + t2 - t1
    times["quality"] = scan_t.get("quality", 0.0)
    times["decode"] = scan_t.get("decode", 0.0)

    def span_row(s, e):
        return {"video_id": video_id, "url": url, "start_frame": int(s), "end_frame": int(e),
                "start_s": s / fps, "end_s": e / fps}

    rejections = [{**span_row(s, e), "stage": "faces", "reason": r} for s, e, r in bad]
    clips = []
    f = cfg.filters
    for s, e, det_frames in spans:
        for a, b in split_long(s, e, fps, f.max_duration_s):
            boxes = [dets[k].box for k in det_frames if a <= k < b] or [dets[det_frames[-1]].box]
            crop = place_crop(boxes, info.width, info.height, cfg.faces)
            q = sampler.clip_score(a, b)
            reason = judge((b - a) / fps, crop.size, q, crop.face_w_ratio, crop.face_h_ratio, crop.outside, f)
            row = {"clip_id": clip_id(video_id, a, b), **span_row(a, b), "media_path": media_rel,
                   "duration_s": (b - a) / fps, "fps": fps, "crop_x0": crop.x0, "crop_y0": crop.y0,
                   "crop_size": crop.size, "face_w_ratio": crop.face_w_ratio, "face_h_ratio": crop.face_h_ratio,
                   "quality": q, "quality_scorer": models.scorer.name, "resolution": crop.size,
                   "status": "rejected" if reason else "accepted", "reason": reason}
            clips.append(row)
            if reason:
                rejections.append({**span_row(a, b), "stage": "filters", "reason": reason})
    times["filters"] = time.process_time() - t2
    return {"probe": info.to_dict(), "clips": clips, "rejections": rejections, "times": times,
            "cuts": cuts, "num_frames": n, "detections": faces.calls, "message": message}
