"""One tiny end-to-end `dvc repro` of the whole pipeline, every stage, in a temporary copy of the repo:
its outputs, the params each stage reads against dvc.yaml, metrics and plots as users see them, and
a forced second run that must leave dvc.lock byte-identical."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from conftest import copy_episodes, write_d4rl
from test_dvc_graph import stage_script, undeclared_reads
from test_ingest_stage import REPO, copy_repo

from pipeline.params_trace import TRACE_ENV

pytestmark = pytest.mark.e2e

TINY = {
    "data": {"expert": {"n_trajectories": 3}},
    "bc": {"features": 32, "hidden": 32, "stage1_steps": 20, "stage2_steps": 20, "baseline_steps": 20,
           "baseline_hidden": 32, "baseline_seeds": 2, "eval_every": 10, "batch_size": 32},
    "reward": {"refine_steps": 20, "refine_batch_size": 32},
    "dynamics": {"n_members": 3, "n_elites": 2, "hidden": 32, "n_layers": 2, "max_epochs": 2, "max_epoch_steps": 10,
                 "holdout": 40, "weight_decay": [2.5e-5, 5.0e-5, 1.0e-4], "multistep_episodes": 1,
                 "multistep_horizon": 3},
    "improve": {"algos": ["awr", "rambo"], "seeds": [0, 1], "steps": 20, "critic_pretrain_steps": 10, "batch_size": 32,
                "log_every": 10, "checkpoint_every": 10, "eval_every": 10, "eval_episodes": 1,
                "rambo": {"rollout_every": 10, "rollout_starts": 32, "adv_every": 10, "adv_steps": 2, "adv_batch": 32}},
    "evaluate": {"episodes": 2, "n_envs": 2, "bootstrap": 50},
}


def merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        base[key] = merge(base[key], value) if isinstance(value, dict) else value
    return base


@dataclass
class TinyRun:
    repo: Path
    trace: Path                                   # PIPELINE_PARAMS_TRACE of the first `dvc repro`
    run: Callable[..., subprocess.CompletedProcess]

    def dvc(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "dvc", *args, **env)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, _hopper_rollouts: list[dict]) -> TinyRun:
    """One `dvc repro` of the whole pipeline on a tiny budget, shared by the tests below."""
    root = tmp_path_factory.mktemp("pipeline")
    d4rl_file = write_d4rl(root / "hopper-random-v2.hdf5", copy_episodes(_hopper_rollouts))
    repo = root / "repo"
    copy_repo(repo)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    merge(params, TINY)
    params["env"]["id"] = "Hopper-v5"                        # the test data's env, whatever the default is
    params["data"]["expert"]["source"] = f"d4rl:{d4rl_file}"
    params["data"]["suboptimal"]["sources"] = [f"d4rl:{d4rl_file}"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    base_env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1",
                "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@t"}
    base_env.pop(TRACE_ENV, None)

    def run(*cmd: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=repo, env={**base_env, **env}, capture_output=True, text=True)

    assert run("git", "init", "-q").returncode == 0
    tiny = TinyRun(repo, root / "params_trace.tsv", run)
    assert tiny.dvc("init", "-q").returncode == 0
    shutil.copy2(REPO / ".dvc" / "config", repo / ".dvc" / "config")          # plots.html_template
    shutil.copytree(REPO / ".dvc" / "plots", repo / ".dvc" / "plots")        # its template, learning_curves.json
    first = tiny.dvc("repro", **{TRACE_ENV: str(tiny.trace)})
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return tiny


def test_dvc_repro_whole_pipeline(tiny: TinyRun) -> None:
    repo = tiny.repo
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {"ingest", "bc", "reward", "dynamics", "improve@awr-0", "improve@awr-1", "improve@rambo-0",
            "improve@rambo-1", "evaluate", "report"} <= set(lock)
    # one batched run per learner: seed 1's stage copied seed 0's batch, byte for byte the same artefacts
    for algo in ("awr", "rambo"):
        assert (repo / f"data/.batch/{algo}/{algo}-1/policy.pt").read_bytes() == \
            (repo / f"data/improve/{algo}-1/policy.pt").read_bytes()

    summary = json.loads((repo / "data/evaluate/summary.json").read_text())
    assert set(summary["policies"]) == {"bc", "bc-1", "csil_bc", "awr-0", "awr-1", "rambo-0", "rambo-1"}
    assert summary["aggregates"]["bc"]["policies"] == ["bc", "bc-1"]     # the baseline over its seeds
    improve = json.loads((repo / "data/improve/awr-1/metrics.json").read_text())
    assert {"final_demo_mse", "start_demo_mse"} <= set(improve)
    for name in summary["policies"]:
        row = json.loads((repo / f"data/evaluate/{name}/metrics.json").read_text())
        assert {"return_mean", "return_std", "normalized_mean", "normalized_std", "episodes"} <= set(row)
        assert row["episodes"] == 2
    assert {"awr", "rambo"} <= set(summary["aggregates"])
    reward = json.loads((repo / "data/reward/details.json").read_text())   # the refined reward, and what it was
    assert reward["refine_steps"] == 20 and [row["step"] for row in reward["refine_curve"]][-1] == 20
    assert {"auc", "suboptimal_episode_spearman"} <= set(reward["unrefined"])
    for path in ("data/bc/policy.pt", "data/reward/policy.pt", "data/improve/rambo-0/policy.pt", "data/dynamics/model.pt"):
        torch.load(repo / path, weights_only=True)
    leftovers = [p for p in (repo / "data").rglob("*") if ".staging-" in p.name or p.suffix == ".tmp"
                 or p.name.startswith("resume") or (p.parent.name == ".resume" and p.is_file())]
    assert not leftovers

    html = (repo / "data/report/index.html").read_text()
    assert "http://" not in html and "https://" not in html
    for image in (repo / "data/report").glob("*.png"):
        assert image.stat().st_size > 1000

    status = tiny.dvc("status")
    assert status.returncode == 0 and "changed" not in status.stdout, status.stdout


def test_stages_declare_every_param_they_read(tiny: TinyRun) -> None:
    stages = yaml.safe_load((tiny.repo / "dvc.yaml").read_text())["stages"]
    trace = tiny.trace.read_text()
    scripts = {os.path.normpath(line.split("\t")[0]) for line in trace.splitlines()}
    reading = {os.path.normpath(stage_script(s["cmd"])) for name, s in stages.items() if name != "report"}
    assert reading <= scripts, f"no params reads traced for {sorted(reading - scripts)}"
    assert undeclared_reads(trace, stages) == {}, "dvc.yaml params: misses keys these stages read"


def test_metrics_are_what_runs_compare(tiny: TinyRun) -> None:
    shown = tiny.dvc("metrics", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    files = next(iter(json.loads(shown.stdout).values()))["data"]      # one revision: the workspace
    leaves = {f"{path}:{key}" for path, content in files.items() for key in flatten(content.get("data", {}))}
    assert len(leaves) < 40, sorted(leaves)
    assert "data/evaluate/scores.json:iqm.awr" in leaves and "data/reward/metrics.json:auc" in leaves
    assert not any(path.startswith("data/ingested") for path in files)     # provenance is not a metric


def test_plots_show_draws_learning_curves(tiny: TinyRun) -> None:
    out = tiny.repo / "plots-html"
    shown = tiny.dvc("plots", "show", "-o", str(out))
    assert shown.returncode == 0 and "failed" not in (shown.stdout + shown.stderr).lower(), shown.stdout + shown.stderr
    page = (out / "index.html").read_text()
    for series in ("val_mse", "holdout_mse", "suboptimal", "normalized_mean", "eval_return", "demo_mse"):
        assert series in page
    assert "vegaEmbed" in page and "cdn.jsdelivr" not in page and "<script src=" not in page   # draws offline


def test_forced_repro_gives_the_same_lock(tiny: TinyRun) -> None:
    """Same code + params + data -> byte-identical outputs, so dvc.lock does not change."""
    before = (tiny.repo / "dvc.lock").read_text()
    again = tiny.dvc("repro", "--force")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("Running stage") >= 8, again.stdout     # every stage really ran again
    after = (tiny.repo / "dvc.lock").read_text()
    if after != before:
        old, new = yaml.safe_load(before)["stages"], yaml.safe_load(after)["stages"]
        changed = {name: [o["path"] for o in new[name].get("outs", []) if o not in old[name].get("outs", [])]
                   for name in new if new[name] != old.get(name)}
        pytest.fail(f"dvc.lock changed after a forced re-run; outputs with new hashes: {changed}")


def flatten(d: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in d.items():
        if isinstance(value, dict):
            out += flatten(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(prefix + key)
    return out
