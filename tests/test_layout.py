"""The layering of the code base, read from every module's imports (ast; nothing is imported).

base (pipeline/*.py) <- curate <- shards <- (model, report, demo); synth only for demo, tests and
benchmarks; no import circles between modules."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, set[str]]:
    """{module: set of project modules it imports (anywhere in the file, lazily or not)}."""
    files = [p for top in ("pipeline", "model") for p in (REPO / top).rglob("*.py")]
    names = {_module_name(p) for p in files}
    out = {}
    for p in files:
        deps = set()
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in names}
        out[_module_name(p)] = deps - {_module_name(p)}
    return out


MODS = _modules()


def _room(mod: str) -> str:
    parts = mod.split(".")
    if parts[0] == "model":
        return "model"
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in ("curate", "shards", "synth")):
        return parts[1]
    return {"pipeline.report": "report", "pipeline.demo": "demo"}.get(mod, "base")


def _room_imports(room: str) -> set[str]:
    return {_room(d) for m, deps in MODS.items() if _room(m) == room for d in deps}


def test_the_layout_has_the_three_rooms_and_their_docstrings():
    for pkg in ("pipeline", "pipeline/curate", "pipeline/shards", "pipeline/synth", "model"):
        init = REPO / pkg / "__init__.py"
        assert init.exists(), pkg
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 80, f"{pkg}/__init__.py needs a docstring saying what the room holds"
    assert "pipeline.curate.stages" in MODS and "pipeline.shards.io" in MODS and "pipeline.synth.corpus" in MODS
    # no flat leftovers or shims of the old layout
    for old in ("stages", "faces", "shardio", "shardwriter", "optout", "testmedia", "testserver", "encoders"):
        assert not (REPO / "pipeline" / f"{old}.py").exists(), old
    # encoders.py was split by job (decode, encode, model_sets); no shim of it
    assert not (REPO / "pipeline" / "shards" / "encoders.py").exists()


def test_pipeline_never_imports_model():
    bad = {m: d for m, d in MODS.items() if m.startswith("pipeline") for x in d if x.startswith("model")}
    assert not bad, bad


def test_rooms_import_one_way():
    allowed = {"base": {"base"}, "curate": {"base", "curate"}, "shards": {"base", "curate", "shards"},
               "report": {"base", "curate", "shards"}, "model": {"base", "curate", "shards", "model"},
               "demo": {"base", "synth"}, "synth": {"base", "curate", "shards", "synth"}}
    for room, ok in allowed.items():
        got = _room_imports(room)
        assert got <= ok, f"{room} imports {sorted(got - ok)}"


def test_only_demo_imports_synth():
    users = {m for m, deps in MODS.items() for d in deps if _room(d) == "synth" and _room(m) != "synth"}
    assert users == {"pipeline.demo"}, users


def test_no_import_circles():
    # Tarjan-free check: DFS with colours over the module graph (package __init__ edges included).
    colour, stack, cycles = {}, [], []

    def visit(m):
        colour[m] = 1
        stack.append(m)
        for d in sorted(MODS.get(m, ())):
            if colour.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in colour:
                visit(d)
        stack.pop()
        colour[m] = 2

    for m in sorted(MODS):
        if m not in colour:
            visit(m)
    assert not cycles, cycles


def test_make_help_lists_every_public_target_and_the_readme_names_them():
    """`make help` stays true: every .PHONY target but the internal `browser` step has a `##` line that
    help prints (a name with a digit once fell through its pattern), and the README's targets table
    names each one."""
    import re
    import subprocess

    makefile = (REPO / "Makefile").read_text()
    phony = set(re.search(r"^\.PHONY:(.*)$", makefile, re.M).group(1).split()) - {"browser"}
    out = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert listed == phony, (phony - listed, listed - phony)
    readme = (REPO / "README.md").read_text()
    missing = [t for t in sorted(phony) if f"make {t}" not in readme]
    assert not missing, missing
