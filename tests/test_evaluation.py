"""Normalised scores, reference lookup, aggregates and roll-outs against a plain single-env loop."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from pipeline.config import MAX_EVAL_EPISODES, RANGES, load_params
from pipeline.envs import D4RL_REF_SCORES, env_family, to_env_action, to_unit_action
from pipeline.errors import ArtefactError, DatasetError, ParamsError
from pipeline.evaluation import (REPORT_SEED_BASE, TUNING_SEED_BASE, Reference, aggregate_runs, compared_scores,
                                 dataset_reference, evaluate_policy, gap_closed, interquartile_mean, normalized_score,
                                 reference_scores, report_seed, score_row, summarize, tuning_seed)
from pipeline.policies import TanhGaussianMLP, save_policy

REPO = Path(__file__).resolve().parents[1]


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
    assert env_family("hopper-medium-v2") == "hopper" == env_family("mujoco/Hopper-v5")
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
    with pytest.raises(DatasetError, match="dataset metadata.*min < max.*env.ref_scores"):
        reference_scores("Pendulum-v1", "auto", dataset_ref=(5.0, 5.0))


def test_action_scaling_round_trip():
    low, high = np.array([-2.0, 0.0]), np.array([2.0, 1.0])
    np.testing.assert_allclose(to_env_action(np.array([-1.0, 1.0]), low, high), [-2.0, 1.0])
    np.testing.assert_allclose(to_env_action(np.array([0.0, 0.0]), low, high), [0.0, 0.5])
    a = np.array([0.3, -0.7])
    np.testing.assert_allclose(to_unit_action(to_env_action(a, low, high), low, high), a)


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
    assert aggregate_runs(scores.mean(axis=1), 500, seed=3) == a          # per-run means give the same aggregate


def test_interval_is_over_runs_not_episodes():
    """Runs with identical means but noisy episodes: no seed-to-seed spread, so a zero-width interval."""
    noisy = np.array([[0.0, 100.0], [100.0, 0.0], [50.0, 50.0]])
    agg = aggregate_runs(noisy, 500, seed=0)
    assert agg["iqm_ci95_low"] == agg["iqm_ci95_high"] == agg["iqm"] == 50.0
    runs = np.array([10.0, 20.0, 90.0])
    agg = aggregate_runs(runs, 2000, seed=0)                            # resamples of the three run means
    assert 10.0 <= agg["iqm_ci95_low"] < agg["iqm"] < agg["iqm_ci95_high"] <= 90.0


def test_one_run_group_has_no_interval():
    single = aggregate_runs(np.array([[10.0, 90.0, 30.0]]), 500, seed=3)   # episodes vary: still one run
    assert single == {"runs": 1, "mean": pytest.approx(130 / 3), "iqm": pytest.approx(130 / 3),
                      "iqm_ci95_low": None, "iqm_ci95_high": None}
    ref = Reference(0.0, 100.0, "test")
    rows = {"csil_bc": _row([10.0, 90.0, 30.0], ref)}
    agg = summarize(rows, {"csil_bc": ["csil_bc"]}, ref, 80.0, n_bootstrap=50)["aggregates"]["csil_bc"]
    assert agg["normalized_iqm_ci95_low"] is None and agg["normalized_iqm_ci95_high"] is None
    assert agg["interval"] == "one run: no interval"
    assert json.loads(json.dumps(agg))["normalized_iqm_ci95_low"] is None      # null in summary.json


def _row(returns: list[float], ref: Reference) -> dict:
    return score_row({"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
                      "episodes": len(returns), "episode_returns": returns, "episode_lengths": [10] * len(returns),
                      "episode_seeds": [REPORT_SEED_BASE, REPORT_SEED_BASE + len(returns) - 1]}, ref)


def test_gap_closed_arithmetic():
    assert gap_closed(60.0, 20.0, 80.0) == pytest.approx(2 / 3)
    assert gap_closed(20.0, 20.0, 80.0) == 0.0
    assert gap_closed(10.0, 20.0, 80.0) == pytest.approx(-1 / 6)                  # worse than BC: negative
    assert gap_closed(100.0, 20.0, 80.0) == pytest.approx(4 / 3)                  # beyond the demos: > 1
    assert gap_closed(50.0, 90.0, 80.0) is None and gap_closed(50.0, 80.0, 80.0) is None   # no gap to close


def test_summary_gap_closed_ablations_and_per_run_scores():
    """Ref (0, 100): normalised = return. IQM of 3 runs = their mean (int(0.75) = 0 trimmed each side)."""
    ref = Reference(0.0, 100.0, "test")
    means = {"bc": 10.0, "bc-1": 20.0, "bc-2": 30.0, "csil_bc": 25.0, "awr-0": 50.0, "awr-1": 60.0, "awr-2": 70.0,
             "awr_uniform-0": 30.0, "awr_uniform-1": 40.0, "awr_uniform-2": 50.0}
    rows = {n: _row([m - 5.0, m + 5.0], ref) for n, m in means.items()}
    groups = {"bc": ["bc", "bc-1", "bc-2"], "csil_bc": ["csil_bc"], "awr": ["awr-0", "awr-1", "awr-2"],
              "awr_uniform": ["awr_uniform-0", "awr_uniform-1", "awr_uniform-2"]}
    summary = summarize(rows, groups, ref, expert_return=80.0, n_bootstrap=200,
                        protocol={"report_seeds": [REPORT_SEED_BASE, REPORT_SEED_BASE + 1]})
    agg = summary["aggregates"]
    assert agg["bc"]["normalized_iqm"] == pytest.approx(20.0) and agg["awr"]["normalized_iqm"] == pytest.approx(60.0)
    assert agg["awr"]["per_run"] == {"awr-0": 50.0, "awr-1": 60.0, "awr-2": 70.0}
    assert agg["bc"]["per_run"] == {"bc": 10.0, "bc-1": 20.0, "bc-2": 30.0}
    assert 10.0 <= agg["bc"]["normalized_iqm_ci95_low"] <= 20.0 <= agg["bc"]["normalized_iqm_ci95_high"] <= 30.0
    assert agg["awr"]["interval"] == "95 % bootstrap over runs"
    assert summary["expert_data"]["normalized"] == summary["protocol"]["demo_score"] == pytest.approx(80.0)
    assert summary["gap_closed"] == {"awr": pytest.approx(40 / 60), "awr_uniform": pytest.approx(20 / 60)}
    ab = summary["ablations"]
    assert ab["critic"]["with"] == "awr" and ab["critic"]["without"] == "awr_uniform"
    assert ab["critic"]["iqm_difference"] == pytest.approx(20.0)                  # 60 - 40: what the critic adds
    assert ab["hetstat_policy"]["with"] == "csil_bc" and ab["hetstat_policy"]["without"] == "bc"
    assert ab["hetstat_policy"]["iqm_difference"] == pytest.approx(5.0)           # 25 - 20
    assert summary["protocol"]["below_min_runs"] == ["csil_bc"]
    assert summary["protocol"]["report_seeds"] == [REPORT_SEED_BASE, REPORT_SEED_BASE + 1]
    scores = compared_scores(summary)
    assert scores["iqm"] == {g: a["normalized_iqm"] for g, a in agg.items()}
    assert scores["gap_closed"] == summary["gap_closed"]
    assert scores["normalized"] == pytest.approx(means)

    # BC already at the demonstrations' score: no gap to close, null in summary.json, left out of the metrics
    no_gap = summarize(rows, groups, ref, expert_return=15.0, n_bootstrap=50)
    assert no_gap["gap_closed"] == {"awr": None, "awr_uniform": None}
    assert compared_scores(no_gap)["gap_closed"] == {}
    # without the groups an ablation needs, it is left out
    assert summarize(rows, {"awr": groups["awr"]}, ref, 80.0, n_bootstrap=50)["ablations"] == {}


def test_reported_and_tuning_seeds_never_overlap():
    """Reported episodes (stage evaluate) and tuning / monitoring roll-outs (stage improve) use disjoint reset
    seeds for every episode count and params.seed the params checks allow."""
    max_report, max_tuning = RANGES["evaluate.episodes"].high, RANGES["improve.eval_episodes"].high
    assert max_report is not None and max_tuning is not None, "episode counts need an upper bound"
    assert max_report <= MAX_EVAL_EPISODES and max_tuning <= MAX_EVAL_EPISODES
    assert tuning_seed() == TUNING_SEED_BASE
    tuning = (tuning_seed(), tuning_seed() + max_tuning - 1)
    lowest_seed, highest_seed = RANGES["seed"].low, RANGES["seed"].high
    assert report_seed(lowest_seed) > tuning[1]                       # report seeds only grow with params.seed
    for run_seed in (lowest_seed, 1, 7, highest_seed):
        start = report_seed(run_seed)
        assert start + max_report - 1 < report_seed(run_seed + 1)     # and one params.seed's never reach the next's
        assert not set(range(start, start + 5)) & set(range(tuning[0], tuning[0] + 5))
    assert report_seed(highest_seed) + max_report - 1 < 2 ** 63       # a valid gymnasium / numpy reset seed
    for key, big in (("evaluate", "episodes"), ("improve", "eval_episodes")):  # the params checks enforce the bound
        assert MAX_EVAL_EPISODES + 1 not in RANGES[f"{key}.{big}"] and MAX_EVAL_EPISODES in RANGES[f"{key}.{big}"]
    improve = (REPO / "stages" / "improve.py").read_text()
    assert "seed=tuning_seed()" in improve and "12345" not in improve


def test_params_reject_episode_counts_beyond_the_seed_ranges(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(f"evaluate:\n  episodes: {MAX_EVAL_EPISODES + 1}\n")
    with pytest.raises(ParamsError, match="evaluate.episodes"):
        load_params(path)
    path.write_text(f"improve:\n  eval_episodes: {MAX_EVAL_EPISODES + 1}\n")
    with pytest.raises(ParamsError, match="improve.eval_episodes"):
        load_params(path)


def test_default_run_metrics_stay_few():
    """scores.json of the default params (IQMs, gap closed, per-run means) leaves room for the other stages'
    dozen metrics under the 40 columns tests/test_pipeline.py allows."""
    spec = importlib.util.spec_from_file_location("evaluate_stage", REPO / "stages" / "evaluate.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    params = load_params(REPO / "params.yaml")
    groups = stage.policy_groups(params)
    ref = Reference(0.0, 100.0, "test")
    rows = {n: _row([float(i), float(i) + 1.0], ref) for i, n in enumerate(n for g in groups.values() for n in g)}
    scores = compared_scores(summarize(rows, groups, ref, 1000.0, n_bootstrap=20))
    assert set(scores["gap_closed"]) == set(params.improve.algos)
    leaves = sum(len(v) for v in scores.values())
    assert leaves <= 28, scores


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


def test_a_score_does_not_depend_on_the_processs_torch_threads():
    """The same policy and reset seeds give the same returns with torch set to 1 or 2 threads: the policy
    runs on one thread inside evaluate_policy (a 256-wide MLP's last-bit rounding differs between thread
    counts, and a HalfCheetah episode amplifies it), and the caller's setting is restored."""
    torch.manual_seed(0)
    policy = TanhGaussianMLP(17, 6, hidden=(256, 256)).eval()
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            results.append(evaluate_policy(policy, "HalfCheetah-v5", 5, seed=7, n_envs=5)["episode_returns"])
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert results[0] == results[1]


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
    assert summary["aggregates"]["awr"]["per_run"] == {"awr-0": 50.0, "awr-1": 95.0}
    assert summary["aggregates"]["bc"]["normalized_iqm_ci95_low"] is None          # one run: no interval
    assert {"gap_closed", "ablations", "protocol"} <= set(summary)
    assert summary["expert_data"] == {"return_mean": 190.0, "normalized": pytest.approx(95.0)}


def test_evaluate_stage_writes_contract_files(tmp_path):
    """The stage script in a scratch directory: listed policies only, contract keys, clear missing-file error."""
    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "params.yaml").write_text("env:\n  id: Hopper-v5\nbc:\n  baseline_seeds: 1\nimprove:\n  algos: [awr]\n"
                                          "  seeds: [3]\nevaluate:\n  episodes: 3\n  n_envs: 2\n  bootstrap: 50\n")
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
    assert sorted(p.name for p in out.iterdir()) == ["awr-3", "bc", "csil_bc", "scores.json", "summary.json"]
    row = json.loads((out / "awr-3" / "metrics.json").read_text())
    assert {"return_mean", "return_std", "normalized_mean", "normalized_std", "episodes"} <= set(row)
    assert row["episodes"] == 3 == len(row["episode_returns"])
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["policies"]) == ["bc", "csil_bc", "awr-3"]
    assert summary["aggregates"]["awr"]["policies"] == ["awr-3"]
    assert summary["expert_data"]["normalized"] == pytest.approx(100 * (3000 + 20.272305) / (3234.3 + 20.272305))
    assert all(a["normalized_iqm_ci95_low"] is None and a["interval"] == "one run: no interval"
               for a in summary["aggregates"].values())                   # every group here has one run
    assert summary["protocol"]["report_seeds"] == summary["episode_seeds"] == [REPORT_SEED_BASE, REPORT_SEED_BASE + 2]
    assert summary["protocol"]["tuning_seeds"] == [TUNING_SEED_BASE, TUNING_SEED_BASE + MAX_EVAL_EPISODES - 1]
    assert set(summary["gap_closed"]) == {"awr"} and "hetstat_policy" in summary["ablations"]
    scores = json.loads((out / "scores.json").read_text())
    assert scores["normalized"] == {n: p["normalized_mean"] for n, p in summary["policies"].items()}
    assert set(scores) == {"iqm", "gap_closed", "normalized"} and set(scores["iqm"]) == {"bc", "csil_bc", "awr"}
    assert set(scores["gap_closed"]) <= {"awr"}
