"""pipeline.configfile: one loader and one error for every config file; the DAG loaders built on it."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.configfile import ConfigError, check_keys, fill_dataclass, load_yaml

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
    assert fill_dataclass(_Cfg, {"rate": True}, "f.yaml").rate is True        # a bool is not silently 1.0
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
        "stagez: []\n": "unknown key stagez (known: engine, media, stages)",
        "stages:\n  - name: faces\n    param: {stride: 2}\n": "unknown key stages[0].param",
        "stages:\n  - name: download\n    params: {max_hieght: 3}\n": "unknown key download.params.max_hieght",
        "stages:\n  - name: probe\n    resources: {cpus: 1}\n": "unknown key probe.resources.cpus",
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


def test_shards_dag_errors_and_values(tmp_path):
    from pipeline.shards.config import load_dag

    p = tmp_path / "shards.yaml"
    for text, words in {
        "name: faces\nstages:\n  encode:\n    batch_frame: 3\n": "unknown key encode.batch_frame (known: ",
        "stages:\n  nope: {a: 1}\n": "unknown key stages.nope (known: decode, encode, stills, write)",
        "tiny: {seed: 1, fit_step: 2}\n": "unknown key tiny.fit_step (known: fit_batch, fit_frames, fit_steps, seed)",
        "foo: 1\n": "unknown key foo (known: ",
        "inputs: 3\n": "inputs must be a mapping, got int",
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
