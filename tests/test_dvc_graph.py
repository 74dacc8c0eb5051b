"""dvc.yaml is the code's graph: each stage depends on every repo module its script imports, and
the params tracing that tests/test_pipeline.py uses to check each stage's `params:` works."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "pipeline"


def module_file(name: str) -> Path | None:
    """pipeline.a.b -> pipeline/a/b.py or pipeline/a/b/__init__.py (relative to the repo), if it exists."""
    base = Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (REPO / candidate).is_file():
            return candidate
    return None


def imported_modules(path: Path, module: str | None) -> set[str]:
    """Every `pipeline...` module ``path`` imports anywhere (module level or inside functions).

    ``from pipeline.a import b`` counts pipeline.a and, when b is a submodule, pipeline.a.b.
    ``module`` is the file's own dotted name (None for a script), for relative imports.
    """
    names: set[str] = set()
    package = (module if path.name == "__init__.py" else module.rpartition(".")[0]) if module else ""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


def import_closure(script: Path) -> set[Path]:
    """Repo files (relative paths) that running ``script`` imports, transitively, packages' __init__ included."""
    files: set[Path] = set()
    todo = [(REPO / script, None)]
    while todo:
        path, module = todo.pop()
        for name in imported_modules(path, module):
            parts = name.split(".")
            for k in range(1, len(parts) + 1):       # importing a.b.c runs a/__init__ and a/b/__init__ first
                sub = ".".join(parts[:k])
                found = module_file(sub)
                if found is not None and found not in files:
                    files.add(found)
                    todo.append((REPO / found, sub))
    return files


def stage_script(cmd: str) -> Path:
    words = cmd.split()
    scripts = [w for w in words if w.endswith(".py")]
    assert words[0] == "python" and len(scripts) == 1, f"unexpected stage command {cmd!r}"
    return Path(scripts[0])


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(d) or Path(d) in path.parents for d in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_deps_cover_the_import_closure(stage: str) -> None:
    spec = STAGES[stage]
    script = stage_script(spec["cmd"])
    deps = [str(d) for d in spec.get("deps", [])]
    closure = import_closure(script) | {script}
    missing = sorted(str(p) for p in closure if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage!r} imports {missing} but does not list them in deps"
    # and no code dep the stage no longer imports (a renamed or removed module)
    stale = sorted(d for d in deps if d.endswith(".py") and Path(d) not in closure)
    assert not stale, f"dvc.yaml stage {stage!r} lists {stale} in deps but does not import them"


def test_closure_follows_function_level_and_transitive_imports() -> None:
    closure = import_closure(Path("stages/evaluate.py"))
    assert Path("pipeline/__init__.py") in closure                       # run by any pipeline.* import
    assert Path("pipeline/policies.py") in closure
    assert Path("pipeline/distributions.py") in closure                  # via pipeline.policies
    assert not any(p.parts[0] == "stages" for p in closure)


def declared(key: str, params: list) -> bool:
    """Is ``key`` (dotted) covered by a stage's dvc.yaml ``params:``? A section covers its keys."""
    for entry in params:
        if isinstance(entry, dict):            # {"params.yaml": None} (all of it) or {"file": [keys]}
            for file, keys in entry.items():
                if file == "params.yaml" and (not keys or declared(key, keys)):
                    return True
        elif key == entry or key.startswith(f"{entry}."):
            return True
    return False


def undeclared_reads(trace: str, stages: dict) -> dict[str, list[str]]:
    """Stage name -> keys read (per a PIPELINE_PARAMS_TRACE file) that its `params:` do not declare."""
    by_script: dict[str, set[str]] = {}
    for line in trace.splitlines():
        script, key = line.split("\t")
        by_script.setdefault(os.path.normpath(script), set()).add(key)
    found = {}
    for name, spec in stages.items():
        keys = by_script.get(os.path.normpath(stage_script(spec["cmd"])), set())
        missing = sorted(k for k in keys if not declared(k, spec.get("params", [])))
        if missing:
            found[name] = missing
    return found


def test_params_trace_records_the_keys_read(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("seed: 3\n")
    trace = tmp_path / "trace.tsv"
    code = ("import dataclasses; from pipeline.config import load_params; p = load_params(); "
            "p.seed; p.bc.lr; p.bc.lr; dataclasses.asdict(p.reward); p.improve")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PIPELINE_PARAMS_TRACE": str(trace)}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True)
    keys = [line.split("\t")[1] for line in trace.read_text().splitlines()]
    assert sorted(keys) == ["bc.lr", "reward.alpha", "reward.hist_bins", "reward.r_min", "reward.refine_batch_size",
                            "reward.refine_lr", "reward.refine_steps", "seed"]
    assert declared("bc.lr", ["bc"]) and declared("env.id", [{"params.yaml": None}])
    assert not declared("bcx", ["bc"]) and not declared("env.id", ["env.obs_bound"])
    assert undeclared_reads("stages/bc.py\tbc.lr\nstages/bc.py\tenv.id\n",
                            {"bc": {"cmd": "python stages/bc.py", "params": ["bc"]}}) == {"bc": ["env.id"]}
