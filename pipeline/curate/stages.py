"""The curation DAG: typed stage configs, their resources, and the per-video analysis.

dags/curate.yaml names the stages in order with their parameters:
download -> probe -> scenes -> faces -> quality -> identity -> filters -> manifest, and under `steps:`
the Ray resources of the two steps that run them (STEP_OF): the runner maps `download` (I/O-bound
tasks) and `analyse` (one actor per worker holding the face detector, face mesh and quality scorer)
over the sources; `manifest` runs in the driver (clusters.assign reads its params) and takes no
resources. Resources belong to a step, never a stage: a stage's `resources:` is an error. `analyse`
runs probe, then the single decode pass (decodepass.run_consumers over an ordered list) feeding
scenes + faces + face verification (verify.py: the mesh on sampled crops; its bounds are in the
filters' params) + quality + identity (chips and frame hashes), then filters, then
the identity embedding of each accepted clip, and returns manifest rows. Identities across videos and
duplicates are a dataset-level step in the driver (pipeline/curate/clusters.py). `analyse_video`
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
from pipeline.curate.clusters import ManifestConfig
from pipeline.curate.decodepass import FrameTimes, run_consumers
from pipeline.curate.faces import FacesConfig, make_detector, place_crop
from pipeline.curate.filters import FiltersConfig, judge, split_long
from pipeline.curate.identity import IdentityConfig, IdentitySampler, make_encoder
from pipeline.curate.probe import ProbeConfig, probe_video
from pipeline.curate.quality import QualityConfig, QualitySampler, make_scorer
from pipeline.curate.retention import MediaConfig
from pipeline.curate.scenes import ScenesConfig, ShotDetector, transition_intervals
from pipeline.curate.tracking import FaceScanner, segment, split_to_fit
from pipeline.curate.verify import FaceVerifier
from pipeline.records import ClipRow

STAGES = ["download", "probe", "scenes", "faces", "quality", "identity", "filters", "manifest"]
# the step that runs each stage: its resources are the step's (dags/curate.yaml `steps:`)
STEP_OF = {"download": "download", "probe": "analyse", "scenes": "analyse", "faces": "analyse",
           "quality": "analyse", "identity": "analyse", "filters": "analyse", "manifest": "driver"}
STEPS = ("download", "analyse")          # the steps that take resources (the driver takes none)


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
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    manifest: ManifestConfig = field(default_factory=ManifestConfig)   # dataset-level: not in the fingerprint
    resources: dict[str, Resources] = field(default_factory=lambda: {
        "download": Resources(0.25, 2), "analyse": Resources(0.5, 2)})
    engine: EngineConfig = field(default_factory=EngineConfig)
    media: MediaConfig = field(default_factory=MediaConfig)    # what of a download stays (not in the fingerprint)

    def fingerprint(self) -> str:
        """Hash of every parameter that changes results (not resources): resume reuses only matching work."""
        d = {k: dataclasses.asdict(getattr(self, k)) for k in ("download", "probe", "scenes", "faces",
                                                                "quality", "identity", "filters")}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def load_dag(path: str | Path | None, sets: list[str] | tuple[str, ...] = ()) -> CurateConfig:
    """Read dags/curate.yaml: {engine, media, steps: {download|analyse: {num_cpus, concurrency}},
    stages: [{name, params: {...}}]}. Unknown keys, stages, a wrong order, a mistyped value or a
    stage's own `resources:` raise ConfigError (a ValueError), one line naming the file and the key.

    `sets`: command-line overrides "STAGE.KEY=VALUE" (a stage's params), "engine.KEY=...",
    "media.KEY=...", "steps.STEP.KEY=..."; applied to the file's values, then checked like them."""
    cfg = CurateConfig()
    if path is None and not sets:
        return cfg
    doc = load_yaml(path) if path is not None else {}
    where = str(path) if path is not None else "defaults"
    if sets:
        _apply_sets(doc, sets, where)
        where += " with --set"
    check_keys(doc, ("engine", "stages", "steps", "media"), where)
    if not isinstance(doc.get("stages") or [], list):
        raise ConfigError(f"{where}: expected a mapping with a 'stages' list")
    cfg.engine = fill_dataclass(EngineConfig, doc.get("engine"), where, "engine")
    cfg.media = fill_dataclass(MediaConfig, doc.get("media"), where, "media")
    steps = doc.get("steps") or {}
    check_keys(steps, STEPS, where, "steps")
    for step, res in steps.items():
        cfg.resources[step] = fill_dataclass(Resources, res, where, f"steps.{step}")
    seen = []
    for st in doc.get("stages") or []:
        check_keys(st, ("name", "params", "resources"), where, f"stages[{len(seen)}]")
        name = st.get("name")
        if name not in STAGES:
            raise ConfigError(f"{where}: unknown stage {name!r}; stages are {', '.join(STAGES)}")
        if "resources" in st:   # before: each analysis stage's silently replaced the one analyse step's
            step = STEP_OF[name]
            raise ConfigError(f"{where}: {name}.resources: a stage takes no resources; " + (
                f"{name} runs in the {step} step: set steps.{step}" if step in STEPS else
                f"{name} runs in the driver, which takes none"))
        seen.append(name)
        params = st.get("params") or {}
        if name == "download":
            from pipeline.curate.download import DownloadConfig

            # a typo fails here, naming the file, not in every worker; the keys given are kept as
            # fill_dataclass typed them (2 and 2.0 are one config, with one fingerprint)
            typed = fill_dataclass(DownloadConfig, params, where, "download.params")
            cfg.download = DownloadParams({k: getattr(typed, k) for k in params})
        else:
            setattr(cfg, name, fill_dataclass(type(getattr(cfg, name)), params, where, f"{name}.params"))
    if seen and seen != [s for s in STAGES if s in seen]:
        raise ConfigError(f"{where}: stages out of order: {seen}; the order is {' -> '.join(STAGES)}")
    return cfg


def _apply_sets(doc: dict, sets, where: str) -> None:
    """Write each "section.key=value" override into the raw DAG document (stages in pipeline order)."""
    from pipeline.configfile import parse_assignment

    for text in sets:
        keys, value = parse_assignment(text)
        head = keys[0]
        if head in STAGES and len(keys) == 2:
            stages = doc.setdefault("stages", [])
            if not isinstance(stages, list):
                raise ConfigError(f"{where}: expected a mapping with a 'stages' list")
            entry = next((st for st in stages if isinstance(st, dict) and st.get("name") == head), None)
            if entry is None:
                entry = {"name": head}
                stages.append(entry)
                stages.sort(key=lambda st: STAGES.index(st["name"]) if st.get("name") in STAGES else -1)
            entry.setdefault("params", {})[keys[1]] = value
        elif head in ("engine", "media") and len(keys) == 2:
            doc.setdefault(head, {})[keys[1]] = value
        elif head == "steps" and len(keys) == 3:
            doc.setdefault("steps", {}).setdefault(keys[1], {})[keys[2]] = value
        else:
            raise ConfigError(f"--set {'.'.join(keys)}: expected STAGE.KEY, engine.KEY, media.KEY or "
                              f"steps.STEP.KEY (stages: {', '.join(STAGES)})")


class Models:
    """Per-worker heavy objects (face detector, face mesh, quality scorer, shot network, identity encoder),
    built once on first use."""

    def __init__(self, cfg: CurateConfig):
        self.cfg = cfg
        self._det = self._scorer = self._mesh = self._shot_net = self._identity = None

    @property
    def detector(self):
        if self._det is None:
            self._det = make_detector(self.cfg.faces)
        return self._det

    @property
    def mesh(self):
        if self._mesh is None:
            from pipeline.curate.landmarks import FaceMesh478

            # two faces: verify.tracked_mesh picks the tracked one when a second face shares the crop
            self._mesh = FaceMesh478(static=True, max_faces=2)
        return self._mesh

    @property
    def scorer(self):
        if self._scorer is None:
            self._scorer = make_scorer(self.cfg.quality)
        return self._scorer

    @property
    def shot_net(self):
        """TransNetV2 (None unless scenes.detector is transnetv2)."""
        if self._shot_net is None and self.cfg.scenes.detector == "transnetv2":
            from pipeline.curate.transnet import ShotNet

            self._shot_net = ShotNet(self.cfg.scenes.transnet_device, self.cfg.scenes.transnet_threads)
        return self._shot_net

    @property
    def identity(self):
        if self._identity is None:
            self._identity = make_encoder(self.cfg.identity)
        return self._identity


def analyse_video(media: Path, video_id: str, url: str, media_rel: str, cfg: CurateConfig,
                  models: Models) -> dict:
    """probe -> (scenes + faces + quality in one decode) -> crop -> filters, for one downloaded file.

    Returns {"probe": {...} (fps: measured; header_fps: the container's), "clips": [CLIPS rows],
    "rejections": [...], "times": {stage: cpu s}, "cuts": [hard cut frames], "boundaries": [{start,
    end, kind}], "num_frames": n, "message": str}. Frames of gradual boundaries (+ scenes.margin) are
    rejections with reason "transition"; every decoded frame lies in exactly one clip row or one
    rejection (manifest.frame_accounting). Raises VideoError for a file that cannot be curated (the
    caller records it as the video's status).
    """
    from pipeline.ids import clip_id
    from pipeline.video_io import end_time, measured_fps

    times = {k: 0.0 for k in ("probe", "scenes", "transnet", "faces", "verify", "quality", "identity", "filters")}
    t0 = time.process_time()
    info = probe_video(media, cfg.probe)
    times["probe"] = time.process_time() - t0
    shots = ShotDetector(cfg.scenes, info.fps, models.shot_net)   # the header's rate: PySceneDetect's timecodes
    # min_face_px counts stored pixels: undo the SAR's stretch of the display width (rotated: the height's)
    faces = FaceScanner(cfg.faces, models.detector, info.width / (info.sar if info.rotation % 180 == 0 else 1.0),
                        identity=models.identity, shots=shots)
    # the verifier samples by the header rate (only its sampling density depends on it)
    verifier = FaceVerifier(cfg.faces, cfg.filters, models.mesh, faces, info.width, info.height, info.fps)
    sampler = QualitySampler(cfg.quality, models.scorer, faces, cfg.faces.face_w_ratio, cfg.faces.face_h_ratio)
    idents = IdentitySampler(cfg.identity, models.identity, faces, cfg.faces.face_w_ratio, cfg.faces.face_h_ratio)
    # one decode pass, in this order: the samplers after it read the face scanner's detection of their frame
    scan_t: dict[str, float] = {}                 # CPU s per consumer (update + finish) and "decode"
    run = run_consumers(media, cfg.probe.small_side, [shots, faces, verifier, sampler, idents, FrameTimes()], scan_t)
    n, message = run.num_frames, run.message
    boundaries, dets, stamps = run.results["scenes"], run.results["faces"], run.results["timestamps"]
    t0 = time.process_time()
    # transition frames (+ margin) belong to no clip: their edges split face tracks like cuts do
    gaps = transition_intervals(boundaries, n, cfg.scenes.margin)
    edges = [b.start for b in boundaries if b.kind == "cut"] + [x for g in gaps for x in g]
    t1 = time.process_time()
    spans, bad = segment(dets, edges, cfg.faces)
    spans = [sp for sp in spans if not any(a <= sp.start and sp.end <= b for a, b in gaps)]
    for sp in spans:                               # a track that meets a transition window says so
        sp.start_split = "transition" if any(sp.start == b for _, b in gaps) else sp.start_split
        sp.end_split = "transition" if any(sp.end == a for a, _ in gaps) else sp.end_split
    bad = [(s, e, r) for s0, e0, r in bad for s, e in _outside(s0, e0, gaps)]
    t2 = time.process_time()
    times["transnet"] = shots.net_seconds          # the network's share, counted apart from the cheap pass
    times["scenes"] = scan_t.get("scenes", 0.0) + t1 - t0 - times["transnet"]
    # the tracker's identity embeddings count as identity (the model), not as tracking
    times["faces"] = scan_t.get("faces", 0.0) + t2 - t1 - faces.identity_s
    times["quality"] = scan_t.get("quality", 0.0)
    times["identity"] = scan_t.get("identity", 0.0) + faces.identity_s
    times["verify"] = scan_t.get("verify", 0.0)
    times["decode"] = scan_t.get("decode", 0.0) + scan_t.get("timestamps", 0.0)
    # Time from the frames' timestamps: edge[i] is when frame i starts showing, edge[n] when the video ends.
    # fps is the measured mean rate (an AVI header may say 50 for frames at 25; phones record VFR).
    edge = stamps[:n] + [end_time(stamps[:n], info.fps)]
    fps = measured_fps(stamps[:n], info.fps)

    def span_row(s, e):
        return {"video_id": video_id, "url": url, "start_frame": int(s), "end_frame": int(e),
                "start_s": edge[s], "end_s": edge[e]}

    rejections = [{**span_row(s, e), "stage": "scenes", "reason": "transition"} for s, e in gaps]
    rejections += [{**span_row(s, e), "stage": "faces", "reason": r} for s, e, r in bad]
    clips: list[ClipRow] = []
    f = cfg.filters
    def crop_holds(frames):
        return place_crop([dets[k].box for k in frames], info.width, info.height, cfg.faces).outside <= f.max_face_outside

    for sp in spans:
        # where one fixed crop cannot hold the drifting face, the clip ends ("drift"); long ones are cut in parts
        parts, edges = [], []
        for a0, b0, frames in split_to_fit(sp, crop_holds):
            pieces = split_long(a0, b0, fps, f.max_duration_s)
            parts += [(a, b, frames) for a, b in pieces]
            edges += ["max_duration"] * (len(pieces) - 1) + ["drift"]
        edges[-1:] = []
        for j, (a, b, frames) in enumerate(parts):
            boxes = [dets[k].box for k in frames if a <= k < b] or [dets[frames[-1]].box]
            region, inset = verifier.region(a, b)      # a picture-in-picture, or the picture inside black bars
            crop = place_crop(boxes, info.width, info.height, cfg.faces, region=region, inset=inset)
            q = sampler.clip_score(a, b)
            duration = edge[b] - edge[a]
            face = verifier.check(a, b, frames)
            reason = judge(duration, crop.size, q, crop, face, f)
            row = ClipRow(clip_id(video_id, a, b), video_id, url, media_path=media_rel, clip_path="",
                          start_frame=int(a), end_frame=int(b), start_s=edge[a], end_s=edge[b],
                          duration_s=duration, fps=fps, crop_x0=crop.x0, crop_y0=crop.y0, crop_size=crop.size,
                          face_w_ratio=crop.face_w_ratio, face_h_ratio=crop.face_h_ratio,
                          pad_fraction=crop.pad_fraction, face_confidence=face.confidence,
                          landmark_rate=face.landmark_rate, yaw_deg=face.yaw_deg, flat_skin=face.flat_skin,
                          expression=face.expression,
                          quality=q, quality_scorer=models.scorer.name,
                          # stored samples across the crop on its coarser axis (display pixels stretch a SAR > 1)
                          resolution=int(round(crop.size / max(info.sar, 1.0))),
                          status="rejected" if reason else "accepted", reason=reason,
                          start_split=sp.start_split if j == 0 else edges[j - 1],
                          end_split=sp.end_split if j == len(parts) - 1 else edges[j])
            clips.append(row)
            if reason:
                rejections.append({**span_row(a, b), "stage": "filters", "reason": reason})
    t3 = time.process_time()
    times["filters"] = t3 - t2
    clip_faces = 0
    for k, row in enumerate(clips):   # the ResNet runs for accepted clips only (~0.15 CPU s a face with dlib)
        if row.status == "accepted":
            clips[k] = dataclasses.replace(row, **idents.clip_identity(row.start_frame, row.end_frame),
                                           identity_model=models.identity.name)
            clip_faces += clips[k].identity_frames
    clip_s = time.process_time() - t3
    times["identity"] += clip_s
    # finer than `times` (whose stages add up to the video's CPU): what the bench breaks down
    detail = {"face_detect_s": faces.detect_s, "tracking_s": times["faces"] - faces.detect_s,
              "identity_chips_s": scan_t.get("identity", 0.0), "identity_tracking_s": faces.identity_s,
              "identity_tracking_faces": faces.identity_faces, "identity_clip_s": clip_s,
              "identity_clip_faces": clip_faces}
    probed = {**info.to_dict(), "header_fps": info.fps, "fps": fps, "duration_s": edge[n] if n else info.duration_s}
    return {"probe": probed, "clips": [c.to_dict() for c in clips], "rejections": rejections, "times": times,
            "cuts": [b.start for b in boundaries if b.kind == "cut"],
            "boundaries": [b.to_dict() for b in boundaries], "num_frames": n, "detections": faces.calls,
            "verify_samples": len(verifier.samples), "detail": detail, "message": message}



def _outside(s: int, e: int, gaps: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Pieces of [s, e) outside the sorted, disjoint intervals `gaps`."""
    out = []
    for a, b in gaps:
        if b <= s or a >= e:
            continue
        if a > s:
            out.append((s, a))
        s = max(s, b)
    return out + ([(s, e)] if e > s else [])
