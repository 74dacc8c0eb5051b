"""One tiny end-to-end `dvc repro` of the whole pipeline, every stage, in a temporary copy of the repo."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from test_ingest_stage import REPO, copy_repo

TINY = {
    "data": {"expert": {"n_trajectories": 3}},
    "bc": {"features": 32, "hidden": 32, "stage1_steps": 20, "stage2_steps": 20, "baseline_steps": 20,
           "baseline_hidden": 32, "baseline_seeds": 2, "eval_every": 10, "batch_size": 32},
    "dynamics": {"n_members": 3, "n_elites": 2, "hidden": 32, "n_layers": 2, "max_epochs": 2, "max_epoch_steps": 10,
                 "holdout": 40, "weight_decay": [2.5e-5, 5.0e-5, 1.0e-4], "multistep_episodes": 1,
                 "multistep_horizon": 3},
    "improve": {"algos": ["awr", "rambo"], "seeds": [0, 1], "steps": 20, "batch_size": 32, "log_every": 10,
                "checkpoint_every": 10, "eval_every": 0,
                "rambo": {"rollout_every": 10, "rollout_starts": 32, "adv_every": 10, "adv_steps": 2, "adv_batch": 32}},
    "evaluate": {"episodes": 2, "n_envs": 2, "bootstrap": 50},
}


def merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        base[key] = merge(base[key], value) if isinstance(value, dict) else value
    return base


def test_dvc_repro_whole_pipeline(tmp_path, d4rl_file):
    repo = tmp_path / "repo"
    copy_repo(repo)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    merge(params, TINY)
    params["env"]["id"] = "Hopper-v5"                        # the test data's env, whatever the default is
    params["data"]["expert"]["source"] = f"d4rl:{d4rl_file}"
    params["data"]["suboptimal"]["sources"] = [f"d4rl:{d4rl_file}"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    run = lambda *cmd: subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    dvc = [sys.executable, "-m", "dvc"]
    assert run("git", "init", "-q").returncode == 0
    assert run(*dvc, "init", "-q").returncode == 0

    done = run(*dvc, "repro")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {"ingest", "bc", "reward", "dynamics", "improve@awr-0", "improve@rambo-1", "evaluate", "report"} <= set(lock)

    summary = json.loads((repo / "data/evaluate/summary.json").read_text())
    assert set(summary["policies"]) == {"bc", "bc-1", "csil_bc", "awr-0", "awr-1", "rambo-0", "rambo-1"}
    assert summary["aggregates"]["bc"]["policies"] == ["bc", "bc-1"]     # the baseline over its seeds
    improve = json.loads((repo / "data/improve/awr-1/metrics.json").read_text())
    assert {"final_demo_mse", "start_demo_mse", "csil_bc_demo_mse", "final_weight_ess"} <= set(improve)
    for name in summary["policies"]:
        row = json.loads((repo / f"data/evaluate/{name}/metrics.json").read_text())
        assert {"return_mean", "return_std", "normalized_mean", "normalized_std", "episodes"} <= set(row)
        assert row["episodes"] == 2
    assert {"awr", "rambo"} <= set(summary["aggregates"])
    for path in ("data/bc/policy.pt", "data/improve/rambo-0/policy.pt", "data/dynamics/model.pt"):
        torch.load(repo / path, weights_only=True)
    assert not (repo / "data/improve/awr-0/resume.pt").exists()

    metrics = run(*dvc, "metrics", "show", "--json")
    assert metrics.returncode == 0 and "normalized_mean" in metrics.stdout and "auc" in metrics.stdout
    html = (repo / "data/report/index.html").read_text()
    assert "http://" not in html and "https://" not in html
    for image in (repo / "data/report").glob("*.png"):
        assert image.stat().st_size > 1000

    status = run(*dvc, "status")
    assert status.returncode == 0 and "changed" not in status.stdout, status.stdout
