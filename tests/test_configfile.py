"""pipeline.configfile: one loader and one error for every config file; the DAG loaders built on it."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.configfile import ConfigError, check_keys, check_type, fill_dataclass, load_yaml

REPO = Path(__file__).resolve().parents[1]


@dataclass
class _Cfg:
    rate: float = 0.5
    steps: int = 10
    flag: bool = False
    band: list = field(default_factory=lambda: [0.1, 0.2])

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


def test_load_yaml_missing_default_is_empty_but_a_named_file_must_exist(tmp_path):
    default = tmp_path / "defaults.yaml"
    assert load_yaml(None) == {} and load_yaml(None, default) == {} and load_yaml(default, default) == {}
    default.write_text("a: 1\n")
    assert load_yaml(None, default) == {"a": 1} and load_yaml(default, default) == {"a": 1}
    with pytest.raises(ConfigError, match=r"^config file not found: .*nope\.yaml$"):
        load_yaml(tmp_path / "nope.yaml", default)
    (tmp_path / "empty.yaml").write_text("# only a comment\n")
    assert load_yaml(tmp_path / "empty.yaml") == {}


@pytest.mark.parametrize("text,words", [
    ("a: [1, 2\nb: 3\n", "malformed YAML (line "),
    ("a: 1\n  b: 2\n", "malformed YAML (line 2)"),
    ("- 1\n- 2\n", "top level must be a mapping, got list"),
    ("just text\n", "top level must be a mapping, got str"),
])
def test_load_yaml_bad_file_is_one_line_naming_it(tmp_path, text, words):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_yaml(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and words in msg and "\n" not in msg


def test_check_keys_names_every_unknown_key_with_its_section():
    check_keys({"rate": 1}, {"rate", "steps"}, "f.yaml", "train")          # fine: no error
    with pytest.raises(ConfigError) as e:
        check_keys({"rate": 1, "rat": 2}, {"rate", "steps"}, "f.yaml", "train")
    assert str(e.value) == "f.yaml: unknown key train.rat (known: rate, steps)"
    with pytest.raises(ConfigError, match=r"^f\.yaml: unknown keys x, y \(known: a\)$"):
        check_keys({"y": 1, "x": 2, "a": 3}, ["a"], "f.yaml")
    with pytest.raises(ConfigError, match=r"^f\.yaml: train must be a mapping, got list$"):
        check_keys([1], {"a"}, "f.yaml", "train")
    assert issubclass(ConfigError, ValueError)        # callers catching ValueError keep working


def test_fill_dataclass_types_defaults_and_errors():
    c = fill_dataclass(_Cfg, {"rate": 3, "steps": 4, "flag": True}, "f.yaml", "s")
    assert c == _Cfg(rate=3.0, steps=4, flag=True) and isinstance(c.rate, float) and isinstance(c.steps, int)
    assert fill_dataclass(_Cfg, None, "f.yaml") == _Cfg() and fill_dataclass(_Cfg, {}, "f.yaml") == _Cfg()
    with pytest.raises(ConfigError, match=r"^f\.yaml: rate: expected float, got True$"):
        fill_dataclass(_Cfg, {"rate": True}, "f.yaml")                       # a bool is not silently 1.0
    with pytest.raises(ConfigError, match=r"^f\.yaml: s\.steps: expected int, got 2\.5$"):
        fill_dataclass(_Cfg, {"steps": 2.5}, "f.yaml", "s")                  # nor a float silently an int
    with pytest.raises(ConfigError, match=r"^f\.yaml: band: expected a list, got 0\.1$"):
        fill_dataclass(_Cfg, {"band": 0.1}, "f.yaml")
    with pytest.raises(ConfigError, match=r"^f\.yaml: unknown key s\.stepz \(known: band, flag, rate, steps\)$"):
        fill_dataclass(_Cfg, {"stepz": 1}, "f.yaml", "s")
    with pytest.raises(ConfigError, match=r"^f\.yaml: s: steps must be >= 0, got -1$"):
        fill_dataclass(_Cfg, {"steps": -1}, "f.yaml", "s")


def test_curate_dag_errors_name_the_file_and_the_dotted_key(tmp_path):
    from pipeline.curate.stages import load_dag

    p = tmp_path / "curate.yaml"
    cases = {
        "stages:\n  - name: faces\n    params: {strid: 2}\n": "unknown key faces.params.strid (known: ",
        "engine: {num_cpu: 1}\nstages: []\n": "unknown key engine.num_cpu (known: num_cpus, object_store_mb)",
        "stagez: []\n": "unknown key stagez (known: engine, media, stages, steps)",
        "stages:\n  - name: faces\n    param: {stride: 2}\n": "unknown key stages[0].param",
        "stages:\n  - name: download\n    params: {max_hieght: 3}\n": "unknown key download.params.max_hieght",
        "steps:\n  analyse: {cpus: 1}\n": "unknown key steps.analyse.cpus (known: concurrency, num_cpus)",
        "steps:\n  manifest: {num_cpus: 1}\n": "unknown key steps.manifest (known: analyse, download)",
        "steps:\n  analyse: {concurrency: two}\n": "steps.analyse.concurrency: expected int, got 'two'",
        "stages:\n  - name: filters\n  - name: faces\n": "stages out of order",
        "stages:\n  - name: facez\n": "unknown stage 'facez'",
        "stages: {faces: 1}\n": "expected a mapping with a 'stages' list",
    }
    for text, words in cases.items():
        p.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_dag(p)
        assert str(e.value).startswith(f"{p}: ") and words in str(e.value), (text, str(e.value))
    p.write_text("engine: {num_cpus: 1}\nstages:\n  - name: probe\n    params: {max_duration_s: 60}\n")
    cfg = load_dag(p)
    assert cfg.engine.num_cpus == 1 and cfg.probe.max_duration_s == 60.0 and isinstance(cfg.probe.max_duration_s, float)
    assert cfg.fingerprint() == load_dag(p).fingerprint()


def test_curate_resources_belong_to_steps_and_a_stage_resources_entry_is_one_line_error(tmp_path):
    """Before, every analysis stage's `resources:` silently replaced the one analyse step's (the last won)."""
    from pipeline.curate.stages import STAGES, STEP_OF, load_dag

    p = tmp_path / "curate.yaml"
    for stage, words in [("probe", "probe.resources: a stage takes no resources; probe runs in the analyse "
                                   "step: set steps.analyse"),
                         ("quality", "quality.resources: a stage takes no resources; quality runs in the analyse"),
                         ("download", "download.resources: a stage takes no resources; download runs in the "
                                      "download step: set steps.download"),
                         ("manifest", "manifest.resources: a stage takes no resources; manifest runs in the driver")]:
        p.write_text(f"stages:\n  - name: {stage}\n    resources: {{num_cpus: 1, concurrency: 1}}\n")
        with pytest.raises(ConfigError) as e:
            load_dag(p)
        assert _one_line(e).startswith(f"{p}: {words}"), _one_line(e)
    p.write_text("steps:\n  download: {num_cpus: 0.5, concurrency: 3}\n  analyse: {num_cpus: 1, concurrency: 4}\n"
                 "stages:\n  - name: probe\n  - name: filters\n")
    cfg = load_dag(p)
    assert (cfg.resources["download"].num_cpus, cfg.resources["download"].concurrency) == (0.5, 3)
    assert (cfg.resources["analyse"].num_cpus, cfg.resources["analyse"].concurrency) == (1.0, 4)
    shipped = load_dag(REPO / "dags" / "curate.yaml")
    assert (shipped.resources["download"].num_cpus, shipped.resources["analyse"].num_cpus) == (0.25, 0.5)
    assert set(STEP_OF) == set(STAGES)


def test_every_curate_stage_has_code_reading_each_of_its_params():
    """No stage without code: each param of each stage in STAGES (manifest's too: clusters.assign) is read,
    as an attribute or a getattr by name, somewhere in pipeline/ (a static check: a dead key fails it)."""
    import ast
    import dataclasses

    from pipeline.curate.download import DownloadConfig
    from pipeline.curate.stages import STAGES, CurateConfig

    read = set()
    for f in (REPO / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                read.add(node.attr)
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr" and len(node.args) > 1 \
                    and isinstance(node.args[1], ast.Constant):
                read.add(node.args[1].value)
    cfg = CurateConfig()
    for stage in STAGES:
        cls = DownloadConfig if stage == "download" else type(getattr(cfg, stage))
        unread = [f.name for f in dataclasses.fields(cls) if f.name not in read]
        assert not unread, f"{stage} params never read: {unread}"


def test_shards_dag_errors_and_values(tmp_path):
    from pipeline.shards.config import load_dag

    p = tmp_path / "shards.yaml"
    for text, words in {
        "name: faces\nstages:\n  encode:\n    batch_frame: 3\n": "unknown key encode.batch_frame (known: ",
        "stages:\n  nope: {a: 1}\n": "unknown key stages.nope (known: decode, encode, stills, write)",
        "tiny: {seed: 1, fit_step: 2}\n": "unknown key tiny.fit_step (known: fit_batch, fit_frames, fit_steps, seed)",
        "foo: 1\n": "unknown key foo (known: ",
        "inputs: 3\n": "inputs must be a mapping, got int",
        "stages:\n  write: {max_actors: 8}\n": "write.max_actors: a resource of the encode step; set it under stages.encode",
        "inputs: {encode_gpus: 0}\n": "inputs.encode_gpus: a resource of the encode step; set it under stages.encode",
        "stages:\n  decode: {max_actors: 2}\n": "unknown key decode.max_actors",
    }.items():
        p.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_dag(p)
        assert str(e.value).startswith(f"{p}: ") and words in str(e.value), (text, str(e.value))
    p.write_text("name: x\ninputs: {clips: c.parquet}\nstages:\n  decode: {size: 64, num_cpus: 0.5}\n"
                 "  stills: {frames: 8}\ntiny: {fit_steps: 7}\n")
    cfg = load_dag(p)
    assert (cfg.name, cfg.clips, cfg.encoder.size, cfg.decode_cpus, cfg.stills_frames, cfg.tiny_fit_steps) == \
        ("x", "c.parquet", 64, 0.5, 8, 7)
    with pytest.raises(ConfigError, match="config file not found"):
        load_dag(tmp_path / "missing.yaml")


@pytest.mark.parametrize("module", ["pipeline.curate", "pipeline.shards"])
def test_cli_malformed_dag_is_one_line_exit_2(tmp_path, module):
    (tmp_path / "dag.yaml").write_text("stages: [\n")
    (tmp_path / "sources.csv").write_text("url,video_id,license,note\n")
    extra = ["--sources", str(tmp_path / "sources.csv")] if module == "pipeline.curate" else []
    r = subprocess.run([sys.executable, "-m", module, "--data", str(tmp_path / "data"), "--dag",
                        str(tmp_path / "dag.yaml"), *extra], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"{tmp_path / 'dag.yaml'}: malformed YAML (line 2)" in r.stderr
    assert not (tmp_path / "data").exists()


def test_check_type_is_strict_but_reads_yaml_numbers():
    assert check_type("k", "1e-4", float) == 1e-4          # PyYAML reads 1e-4 (no dot) as a string
    assert check_type("k", 3, float) == 3.0 and isinstance(check_type("k", 3, float), float)
    assert check_type("k", [1, 2], tuple[float, float]) == (1.0, 2.0)
    assert check_type("k", None, str | None) is None and check_type("k", "a", str | None) == "a"
    assert check_type("k", {"a": [{"x": 1}]}, dict[str, list[dict]]) == {"a": [{"x": 1}]}
    for value, tp, words in [("eight", int, "expected int, got 'eight'"), (True, int, "expected int, got True"),
                             (5, str, "expected str, got 5"), ("yes", bool, "expected true/false, got 'yes'"),
                             ([1], tuple[float, float], "expected a list of 2 values"),
                             ({"a": 1}, dict[str, list[dict]], "k.a: expected a list, got 1")]:
        with pytest.raises(ConfigError, match=words):
            check_type("k", value, tp)


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("dag,text,words", [
    ("train", "model:\n  frames: eight\n", "model.frames: expected int, got 'eight'"),
    ("train", "train:\n  lr: fast\n", "train.lr: expected float, got 'fast'"),
    ("train", "train:\n  compile: 1\n", "train.compile: expected true/false, got 1"),
    ("eval", "max_clips: four\n", "max_clips: expected int, got 'four'"),
    ("eval", "grids:\n  cpu:\n    - {steps: fifty, cfg_scale: 1, guidance: none}\n",
     "grids.cpu[0].steps: expected int, got 'fifty'"),
    ("eval", "grids:\n  cpu:\n    - {steps: 5, cfg: 1, guidance: none}\n", "unknown key grids.cpu[0].cfg"),
    ("reenact", "cfg_scale: high\n", "cfg_scale: expected float, got 'high'"),
    ("curate", "stages:\n  - name: faces\n    params: {stride: eight}\n",
     "faces.params.stride: expected int, got 'eight'"),
    ("shards", "stages:\n  encode: {batch_frames: many}\n", "encode.batch_frames: expected int, got 'many'"),
])
def test_mistyped_dag_value_is_one_line_naming_file_and_key(tmp_path, dag, text, words):
    p = tmp_path / f"{dag}.yaml"
    p.write_text(text)
    if dag == "train":
        from model.config import load_config

        with pytest.raises(ConfigError) as e:
            load_config(p)
    elif dag == "eval":
        from model.evaluate import load_eval_config

        with pytest.raises(SystemExit) as e:
            load_eval_config(str(p))
    elif dag == "reenact":
        from model.reenact import ReenactError, apply_defaults, build_parser

        with pytest.raises(ReenactError) as e:
            apply_defaults(build_parser().parse_args(["--source", "s", "--driving", "d", "--dag", str(p)]))
    elif dag == "curate":
        from pipeline.curate.stages import load_dag

        with pytest.raises(ConfigError) as e:
            load_dag(p)
    else:
        from pipeline.shards.config import load_dag

        with pytest.raises(ConfigError) as e:
            load_dag(p)
    msg = _one_line(e)
    assert f"{p}: " in msg and words in msg, msg


def test_train_cli_mistyped_value_exits_2_with_one_line(tmp_path):
    (tmp_path / "t.yaml").write_text("preset: tiny\ndata:\n  num_workers: two\n")
    r = subprocess.run([sys.executable, "-m", "model.train", "--data", str(tmp_path), "--config", str(tmp_path / "t.yaml")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {tmp_path / 't.yaml'}: data.num_workers: expected int, got 'two'"], r.stderr


def test_curate_set_overrides_a_parameter_and_is_checked_like_the_file(tmp_path):
    """`python -m pipeline.curate --set STAGE.KEY=VALUE` (make curate CURATE_ARGS=...): one parameter
    changed without a copy of the DAG; the value is typed and validated as the file's would be."""
    from pipeline.curate.faces import place_crop
    from pipeline.curate.stages import load_dag

    shipped = REPO / "dags" / "curate.yaml"
    base = load_dag(shipped)
    cfg = load_dag(shipped, ["faces.face_w_band=[0.35, 0.65]", "faces.face_h_band=[0.39,0.77]",
                             "scenes.margin=4", "steps.analyse.concurrency=3", "engine.num_cpus=1"])
    assert cfg.faces.face_w_band == [0.35, 0.65] and cfg.faces.face_h_band == [0.39, 0.77]
    assert cfg.scenes.margin == 4 and isinstance(cfg.scenes.margin, int)
    assert cfg.resources["analyse"].concurrency == 3 and cfg.engine.num_cpus == 1
    assert cfg.faces.stride == base.faces.stride and cfg.filters == base.filters     # the rest is the file's
    assert cfg.fingerprint() != base.fingerprint()                 # resume re-runs what the change affects
    assert load_dag(shipped, ["engine.num_cpus=1"]).fingerprint() == base.fingerprint()
    # what the README's pre-cropped recipe does: a face 0.64 of a 1:1 frame gets the whole frame, unpadded
    face = [(0.18, 0.2, 0.64, 0.64)]
    assert place_crop(face, 512, 512, base.faces).pad_fraction > 0.05
    c = place_crop(face, 512, 512, cfg.faces)
    assert (c.x0, c.y0, c.size, c.pad_fraction) == (0, 0, 512, 0.0)
    # a stage the file does not list is added in pipeline order
    p = tmp_path / "curate.yaml"
    p.write_text("stages:\n  - name: probe\n  - name: filters\n")
    assert load_dag(p, ["quality.every=4"]).quality.every == 4
    cases = {
        "faces.stride=eight": f"{p} with --set: faces.params.stride: expected int, got 'eight'",
        "faces.strid=2": f"{p} with --set: unknown key faces.params.strid",
        "faces.face_w_band=[0.6, 0.7]": "face_w_band",
        "faces=2": "--set 'faces=2': expected SECTION.KEY=VALUE",
        "faces.stride": "--set 'faces.stride': expected SECTION.KEY=VALUE",
        "facez.stride=2": "--set facez.stride: expected STAGE.KEY, engine.KEY, media.KEY or steps.STEP.KEY",
        "steps.analyse=3": "--set steps.analyse: expected STAGE.KEY",
        "faces.face_w_band=[0.35,": "--set faces.face_w_band: value '[0.35,' is not YAML",
        "faces.stride=": "--set faces.stride: no value given",
    }
    for text, words in cases.items():
        with pytest.raises(ConfigError) as e:
            load_dag(p, [text])
        assert words in _one_line(e), (text, _one_line(e))


def test_curate_cli_bad_set_is_one_line_and_writes_nothing(tmp_path, capsys):
    from pipeline.curate.__main__ import main

    data = tmp_path / "data"
    rc = main(["--data", str(data), "--dag", str(REPO / "dags" / "curate.yaml"), "--engine", "sequential",
               "--set", "faces.stride=eight"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert err == "curate: error: ConfigError: dags/curate.yaml with --set: faces.params.stride: expected int, " \
                  "got 'eight'".replace("dags/curate.yaml", str(REPO / "dags" / "curate.yaml"))
    assert not data.exists()
