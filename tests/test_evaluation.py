"""Normalised scores, reference lookup, aggregates and roll-outs against a plain single-env loop."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from pipeline.config import ParamsError
from pipeline.evaluation import (D4RL_REF_SCORES, Reference, aggregate_runs, dataset_reference, env_family,
                                 evaluate_policy, interquartile_mean, normalized_score, reference_scores, score_row,
                                 summarize)
from pipeline.policies import TanhGaussianMLP, save_policy
from pipeline.stage import ArtefactError


class ScriptedPolicy:
    """Deterministic, elementwise in the batch (so batching cannot change a single bit)."""

    def __init__(self, act_dim: int, gain: float = 0.3):
        self.act_dim, self.gain = act_dim, gain

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        d = self.act_dim
        # Mixes two observation slices; with gain 0.3 Hopper episodes last ~20-180 steps.
        return torch.tanh(self.gain * torch.sin(7.0 * obs[:, -d:] + 0.5 * obs[:, :d]))


def single_env_returns(policy: ScriptedPolicy, env_id: str, episodes: int, seed: int) -> tuple[list, list]:
    env = gym.make(env_id)
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    returns, lengths = [], []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        total, steps, done = 0.0, 0, False
        while not done:
            a = policy.act(torch.as_tensor(obs[None], dtype=torch.float32)).numpy()[0].astype(np.float64)
            obs, r, term, trunc, _ = env.step(low + (a + 1.0) * 0.5 * (high - low))
            total, steps, done = total + float(r), steps + 1, term or trunc
        returns.append(total)
        lengths.append(steps)
    env.close()
    return returns, lengths


def test_normalized_score_arithmetic():
    ref = Reference(-20.0, 180.0, "test")
    np.testing.assert_allclose(normalized_score([-20.0, 180.0, 80.0, 380.0], ref), [0.0, 100.0, 50.0, 200.0])
    assert float(normalized_score(30.0, ref)) == pytest.approx(25.0)
    low, high = D4RL_REF_SCORES["hopper"]
    assert float(normalized_score(3234.3, reference_scores("Hopper-v5"))) == pytest.approx(100.0)
    assert float(normalized_score(low + 0.5 * (high - low), reference_scores("Hopper-v5"))) == pytest.approx(50.0)


def test_reference_lookup_order():
    assert env_family("Hopper-v5") == "hopper"
    assert env_family("HalfCheetah-v4") == "halfcheetah"
    assert env_family("ns/Walker2d-v5") == "walker2d"
    assert env_family("AntMaze_UMaze-v5") != "ant"
    for env_id, family in [("Hopper-v5", "hopper"), ("HalfCheetah-v5", "halfcheetah"),
                           ("Walker2d-v5", "walker2d"), ("Ant-v5", "ant")]:
        ref = reference_scores(env_id, "auto", dataset_ref=(0.0, 1.0))
        assert (ref.low, ref.high) == D4RL_REF_SCORES[family] and "D4RL" in ref.source
    ref = reference_scores("Pendulum-v1", "auto", dataset_ref=(-1500.0, -150.0))
    assert (ref.low, ref.high) == (-1500.0, -150.0) and "dataset" in ref.source
    ref = reference_scores("Hopper-v5", [0, 1000], dataset_ref=(-1.0, 1.0))
    assert (ref.low, ref.high) == (0.0, 1000.0) and "params" in ref.source
    with pytest.raises(ParamsError, match="env.ref_scores"):
        reference_scores("Pendulum-v1", "auto")
    with pytest.raises(ParamsError, match="min < max"):
        reference_scores("Pendulum-v1", [5.0, 5.0])


def test_dataset_reference_found_in_nested_metadata():
    assert dataset_reference({"expert": {"episodes": 3}}, {}) is None
    summary = {"expert": {"source": {"id": "minari:x", "ref_min_score": -3, "ref_max_score": 7.5}}}
    assert dataset_reference(summary) == (-3.0, 7.5)
    assert dataset_reference({}, {"minari": [{"ref_min": 1, "ref_max": 2}]}) == (1.0, 2.0)


def test_interquartile_mean_and_aggregates():
    assert interquartile_mean(np.array([1, 2, 3, 4, 5, 6, 7, 100])) == pytest.approx(4.5)
    assert interquartile_mean(np.array([3.0])) == pytest.approx(3.0)
    const = aggregate_runs(np.full((3, 4), 42.0), n_bootstrap=100, seed=0)
    assert const == {"runs": 3, "mean": 42.0, "iqm": 42.0, "iqm_ci95_low": 42.0, "iqm_ci95_high": 42.0}
    scores = np.random.default_rng(1).normal(50.0, 10.0, size=(5, 10))
    a, b = aggregate_runs(scores, 500, seed=3), aggregate_runs(scores, 500, seed=3)
    assert a == b
    assert a["mean"] == pytest.approx(scores.mean())
    assert a["iqm_ci95_low"] < a["iqm"] < a["iqm_ci95_high"]
    single = aggregate_runs(scores[:1], 500, seed=3)  # one seed still gets an episode-level interval
    assert single["iqm_ci95_low"] < single["iqm_ci95_high"]


@pytest.mark.parametrize("env_id,episodes,n_envs,seed", [("Hopper-v5", 5, 2, 11), ("Pendulum-v1", 3, 2, 5)])
def test_scripted_policy_gets_the_environments_own_returns(env_id, episodes, n_envs, seed):
    """Vectorised, reassigned episodes == a plain loop with reset(seed=seed + k); Pendulum's actions
    live in [-2, 2] and its episodes always end by truncation, Hopper's by termination."""
    env = gym.make(env_id)
    policy = ScriptedPolicy(env.action_space.shape[0])
    env.close()
    expected, lengths = single_env_returns(policy, env_id, episodes, seed)
    result = evaluate_policy(policy, env_id, episodes, seed, n_envs=n_envs)
    np.testing.assert_allclose(result["episode_returns"], expected, rtol=1e-12, atol=1e-9)
    assert result["episode_lengths"] == lengths
    assert result["episodes"] == episodes == len(result["episode_returns"])
    assert result["return_mean"] == pytest.approx(np.mean(expected))
    if env_id == "Hopper-v5":
        assert len(set(lengths)) > 1, "episodes of different lengths exercise the per-env resets"


def test_evaluate_rejects_a_policy_for_another_env():
    with pytest.raises(ArtefactError, match="observations of size 5"):
        evaluate_policy(TanhGaussianMLP(5, 1, hidden=(8,)), "Pendulum-v1", 1, 0)


def test_score_row_and_summary_keys():
    ref = Reference(0.0, 200.0, "test")
    rows = {name: score_row({"return_mean": float(np.mean(r)), "return_std": float(np.std(r)), "episodes": 2,
                             "episode_returns": r, "episode_lengths": [10, 10], "episode_seeds": [0, 1]}, ref)
            for name, r in {"bc": [50.0, 150.0], "awr-0": [100.0, 100.0], "awr-1": [180.0, 200.0]}.items()}
    assert rows["bc"]["normalized_mean"] == pytest.approx(50.0)
    assert rows["bc"]["normalized_std"] == pytest.approx(25.0)
    summary = summarize(rows, {"bc": ["bc"], "awr": ["awr-0", "awr-1"]}, ref, expert_return=190.0, n_bootstrap=50)
    assert set(summary["policies"]["awr-1"]) == {"return_mean", "return_std", "normalized_mean", "normalized_std",
                                                 "episodes"}
    assert summary["aggregates"]["awr"]["normalized_mean"] == pytest.approx(72.5)
    assert summary["aggregates"]["awr"]["policies"] == ["awr-0", "awr-1"]
    assert summary["expert_data"] == {"return_mean": 190.0, "normalized": pytest.approx(95.0)}


def test_evaluate_stage_writes_contract_files(tmp_path):
    """The stage script in a scratch directory: listed policies only, contract keys, clear missing-file error."""
    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "params.yaml").write_text("env:\n  id: Hopper-v5\nimprove:\n  algos: [awr]\n  seeds: [3]\nevaluate:\n  episodes: 3\n"
                                          "  n_envs: 2\n  bootstrap: 50\n")
    (tmp_path / "data" / "ingested").mkdir(parents=True)
    (tmp_path / "data" / "ingested" / "summary.json").write_text(json.dumps({"expert": {"return_mean": 3000.0}}))
    env = {**os.environ, "PYTHONPATH": str(repo)}
    run = lambda: subprocess.run([sys.executable, str(repo / "stages" / "evaluate.py")], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=300)
    failed = run()
    assert failed.returncode == 1 and "data/improve/awr-3/policy.pt" in failed.stderr
    assert "Traceback" not in failed.stderr

    torch.manual_seed(0)
    for path in ["data/bc/baseline.pt", "data/bc/policy.pt", "data/improve/awr-3/policy.pt",
                 "data/improve/awr-9/policy.pt"]:
        save_policy(TanhGaussianMLP(11, 3, hidden=(16,)), tmp_path / path)
    (tmp_path / "data" / "evaluate" / "rambo-0").mkdir(parents=True)   # stale run from older params
    done = run()
    assert done.returncode == 0, done.stderr
    out = tmp_path / "data" / "evaluate"
    assert sorted(p.name for p in out.iterdir()) == ["awr-3", "bc", "csil_bc", "summary.json"]
    row = json.loads((out / "awr-3" / "metrics.json").read_text())
    assert {"return_mean", "return_std", "normalized_mean", "normalized_std", "episodes"} <= set(row)
    assert row["episodes"] == 3 == len(row["episode_returns"])
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["policies"]) == ["bc", "csil_bc", "awr-3"]
    assert summary["aggregates"]["awr"]["policies"] == ["awr-3"]
    assert summary["expert_data"]["normalized"] == pytest.approx(100 * (3000 + 20.272305) / (3234.3 + 20.272305))
