"""Shared pytest fixtures.

`corpus`        session: the generated face-video corpus, list of ground-truth dicts
                (each with "name", "path" (absolute .mp4), "fps", "num_frames", "cuts", ...;
                see pipeline/synth/corpus.py). Generated once and cached under pytest's cache
                directory, keyed by the generator's source and library versions, so a second
                session (or another engineer's) reuses it; delete .pytest_cache to force a rebuild.
`corpus_by_name` session: {name: ground truth}.
`corpus_dir`    session: the directory holding <name>.mp4 + <name>.json.
`source_server` session: a pipeline.synth.server.SourceServer serving `corpus_dir` on 127.0.0.1.
                Faults are cleared and the request log reset before every test that uses it.
`data_root`     function: a fresh pipeline.paths.DataRoot in tmp_path.
`portraits`     session: a folder of 6 still portrait PNGs (pipeline.synth.corpus.make_portraits).
`shot_net`      session: the real pretrained TransNetV2 (pipeline.curate.transnet.ShotNet), CPU, 1 thread.
`analyse`       session: path -> pipeline.curate.stages.analyse_video's result with the shipped DAG
                (`analyse.cfg`) and its models loaded once.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def _corpus_key(seed: int) -> str:
    import importlib.metadata as md

    h = hashlib.sha1(str(seed).encode())
    for f in ("pipeline/synth/corpus.py", "pipeline/synth/capture.py", "pipeline/synth/heads.py",
              "pipeline/synth/lookalikes.py", "pipeline/synth/transitions.py", "pipeline/curate/landmarks.py"):
        h.update((REPO / f).read_bytes())
    for pkg in ("av", "opencv-python", "numpy", "mediapipe", "scikit-image", "imageio-ffmpeg"):
        try:
            h.update(f"{pkg}={md.version(pkg)}".encode())
        except md.PackageNotFoundError:
            pass
    return h.hexdigest()[:12]


@pytest.fixture(scope="session")
def corpus_dir(request, tmp_path_factory) -> Path:
    from pipeline.synth.corpus import ensure_corpus

    seed = 0
    cache = getattr(request.config, "cache", None)       # absent with -p no:cacheprovider
    base = Path(cache.mkdir("corpus")) if cache is not None else tmp_path_factory.mktemp("corpus-cache")
    final = base / _corpus_key(seed)
    if not (final / "COMPLETE").exists():
        # Build in a private folder and rename, so parallel sessions never see half a corpus.
        tmp = final.with_name(f".build-{final.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        ensure_corpus(tmp, seed=seed)
        try:
            os.rename(tmp, final)
        except OSError:          # another session finished first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
            if not (final / "COMPLETE").exists():
                raise
    return final


@pytest.fixture(scope="session")
def corpus(corpus_dir) -> list[dict]:
    from pipeline.synth.corpus import load_corpus

    gts = load_corpus(corpus_dir)
    assert gts, f"empty corpus in {corpus_dir}"
    return gts


@pytest.fixture(scope="session")
def corpus_by_name(corpus) -> dict[str, dict]:
    return {g["name"]: g for g in corpus}


@pytest.fixture(scope="session")
def _server(corpus_dir):
    from pipeline.synth.server import SourceServer

    with SourceServer(corpus_dir) as srv:
        yield srv


@pytest.fixture
def source_server(_server):
    _server.reset()
    yield _server
    _server.reset()


@pytest.fixture
def data_root(tmp_path):
    from pipeline.paths import DataRoot

    return DataRoot.of(tmp_path / "data")


@pytest.fixture(scope="session")
def portraits(tmp_path_factory) -> list[Path]:
    from pipeline.synth.corpus import make_portraits

    return make_portraits(tmp_path_factory.mktemp("portraits"), n=6, size=256)


@pytest.fixture(scope="session")
def shot_net():
    from pipeline.curate.transnet import ShotNet

    return ShotNet(device="cpu", threads=1)


@pytest.fixture(scope="session")
def analyse():
    from pipeline.curate.stages import Models, analyse_video, load_dag

    cfg = load_dag(REPO / "dags" / "curate.yaml")
    models = Models(cfg)

    def run(path: Path) -> dict:
        return analyse_video(path, path.stem, "", "", cfg, models)

    run.cfg = cfg
    return run


@pytest.fixture(scope="module")
def tiny_sdit():
    """(a tiny sDiT, F = 4 on 8x8 latents, eval mode; its diffusion of 1000 steps): one per test module,
    for the anchored-sampling tests. adaLN-Zero starts at exactly 0 output, so zero parameters get small
    random values and the output depends on the input."""
    import torch

    from model.config import ModelConfig
    from model.diffusion import GaussianDiffusion, linear_betas
    from model.sdit import SDiT

    torch.manual_seed(0)
    m = SDiT(ModelConfig(size="tiny", frames=4, latent_size=8, clip_dim=16)).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return m, GaussianDiffusion(linear_betas(1000))
