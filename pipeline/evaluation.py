"""Evaluation: deterministic roll-outs in gymnasium vector envs, normalised scores, aggregates.

Episode k of an evaluation is always reset with seed ``seed + k``, whichever sub-environment
runs it, so a policy's returns equal those of a plain single-env loop with the same seeds
and every policy is scored on the same start states.

Normalised score = 100 * (R - R_random) / (R_expert - R_random) (D4RL convention).
Aggregates over runs (seeds) follow rliable: the inter-quartile mean (IQM) of per-run mean
scores, with a bootstrap 95 % interval.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch

from pipeline.config import ParamsError
from pipeline.stage import ArtefactError

# D4RL reference returns (random, expert); identical for the v0 and v2 datasets.
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}


class Actor(Protocol):
    def act(self, obs: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Reference:
    """Returns that map to normalised scores 0 (``low``) and 100 (``high``)."""
    low: float
    high: float
    source: str

    def as_dict(self) -> dict:
        return {"random": self.low, "expert": self.high, "source": self.source}


def env_family(env_id: str) -> str:
    """'Hopper-v5' -> 'hopper', 'ns/HalfCheetah-v4' -> 'halfcheetah'."""
    name = env_id.split("/")[-1]
    return re.sub(r"-v\d+$", "", name).lower()


def dataset_reference(*metadata: Any) -> tuple[float, float] | None:
    """First (ref_min_score, ref_max_score) pair found anywhere in nested dataset metadata."""
    for meta in metadata:
        if isinstance(meta, dict):
            for lo_key, hi_key in (("ref_min_score", "ref_max_score"), ("ref_min", "ref_max")):
                lo, hi = meta.get(lo_key), meta.get(hi_key)
                if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
                    return float(lo), float(hi)
            found = dataset_reference(*meta.values())
        elif isinstance(meta, (list, tuple)):
            found = dataset_reference(*meta)
        else:
            found = None
        if found is not None:
            return found
    return None


def reference_scores(env_id: str, ref_scores: str | list = "auto",
                     dataset_ref: tuple[float, float] | None = None) -> Reference:
    """The normalisation reference.

    An explicit ``env.ref_scores: [min, max]`` always wins (it is how a user overrides);
    ``auto`` uses the D4RL table for hopper / halfcheetah / walker2d / ant, then the
    dataset's ref_min_score / ref_max_score, and otherwise fails naming the fix.
    """
    if isinstance(ref_scores, (list, tuple)):
        if len(ref_scores) != 2:
            raise ParamsError(f"params.yaml: 'env.ref_scores' must be [min, max], got {ref_scores!r}")
        ref = Reference(float(ref_scores[0]), float(ref_scores[1]), "params.yaml env.ref_scores")
    elif ref_scores != "auto":
        raise ParamsError(f"params.yaml: 'env.ref_scores' must be 'auto' or [min, max], got {ref_scores!r}")
    elif env_family(env_id) in D4RL_REF_SCORES:
        ref = Reference(*D4RL_REF_SCORES[env_family(env_id)], f"D4RL reference returns ({env_family(env_id)})")
    elif dataset_ref is not None:
        ref = Reference(dataset_ref[0], dataset_ref[1], "dataset metadata (ref_min_score / ref_max_score)")
    else:
        raise ParamsError(
            f"params.yaml: no reference returns for env.id {env_id!r}: it is not in the D4RL table "
            f"({', '.join(sorted(D4RL_REF_SCORES))}) and the dataset metadata has no ref_min_score / ref_max_score; "
            f"set 'env.ref_scores: [random_return, expert_return]'")
    if not ref.high > ref.low:
        raise ParamsError(f"params.yaml: reference returns must satisfy min < max, got [{ref.low}, {ref.high}] "
                          f"from {ref.source}")
    return ref


def normalized_score(returns: np.ndarray | float, ref: Reference) -> np.ndarray:
    """100 * (R - R_random) / (R_expert - R_random), elementwise (a 0-d array for a scalar)."""
    return 100.0 * (np.asarray(returns, dtype=np.float64) - ref.low) / (ref.high - ref.low)


def evaluate_policy(policy: Actor, env_id: str, episodes: int, seed: int, n_envs: int = 5,
                    device: torch.device | str = "cpu") -> dict:
    """Roll ``policy.act`` (actions in [-1, 1]) out for exactly ``episodes`` episodes.

    Returns ``return_mean``, ``return_std``, ``episodes``, ``episode_returns``,
    ``episode_lengths`` and ``episode_seeds`` (episode k used seed ``seed + k``).
    """
    if episodes < 1 or n_envs < 1:
        raise ValueError(f"episodes and n_envs must be >= 1, got {episodes}, {n_envs}")
    n = min(n_envs, episodes)
    # Autoreset disabled: we reset finished sub-envs ourselves so that each new episode gets
    # its own seed, and no reward of an autoreset step can leak into a return.
    envs = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.DISABLED})
    try:
        obs_dim = getattr(policy, "obs_dim", None)
        if obs_dim is not None and (obs_dim,) != envs.single_observation_space.shape:
            raise ArtefactError(f"policy expects observations of size {obs_dim} but {env_id} gives "
                                f"{envs.single_observation_space.shape}; env.id must match the training data")
        low = envs.single_action_space.low.astype(np.float64)
        high = envs.single_action_space.high.astype(np.float64)
        returns = np.zeros(episodes)
        lengths = np.zeros(episodes, dtype=np.int64)
        running = np.arange(n)                # episode index each sub-env runs; -1 = idle
        next_episode = n
        ep_return, ep_length = np.zeros(n), np.zeros(n, dtype=np.int64)
        obs, _ = envs.reset(seed=[seed + k for k in range(n)])
        while (running >= 0).any():
            with torch.no_grad():
                a = policy.act(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
            a = np.clip(a.astype(np.float64), -1.0, 1.0)
            obs, reward, terminated, truncated, _ = envs.step(low + (a + 1.0) * 0.5 * (high - low))
            active = running >= 0
            ep_return[active] += reward[active]
            ep_length[active] += 1
            done = terminated | truncated
            if not done.any():
                continue
            reset_seeds: list[int | None] = [None] * n
            for i in np.flatnonzero(done):
                if running[i] >= 0:
                    returns[running[i]], lengths[running[i]] = ep_return[i], ep_length[i]
                if next_episode < episodes:
                    running[i], reset_seeds[i] = next_episode, seed + next_episode
                    next_episode += 1
                else:
                    running[i] = -1           # idle: keeps stepping with the others, ignored
                ep_return[i], ep_length[i] = 0.0, 0
            obs, _ = envs.reset(seed=reset_seeds, options={"reset_mask": done})
    finally:
        envs.close()
    return {"return_mean": float(returns.mean()), "return_std": float(returns.std()), "episodes": episodes,
            "episode_returns": returns.tolist(), "episode_lengths": lengths.tolist(),
            "episode_seeds": [seed, seed + episodes - 1]}


def score_row(result: dict, ref: Reference) -> dict:
    """The contract's per-policy metrics (plus per-episode lists, which `dvc metrics` ignores)."""
    norm = normalized_score(np.asarray(result["episode_returns"]), ref)
    return {"return_mean": result["return_mean"], "return_std": result["return_std"],
            "normalized_mean": float(norm.mean()), "normalized_std": float(norm.std()),
            "episodes": result["episodes"], "length_mean": float(np.mean(result["episode_lengths"])),
            "episode_returns": result["episode_returns"], "episode_lengths": result["episode_lengths"],
            "episode_seeds": result["episode_seeds"]}


def interquartile_mean(x: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Mean of the middle 50 %: drop floor(n/4) values at each end (scipy.stats.trim_mean(x, 0.25))."""
    x = np.sort(np.asarray(x, dtype=np.float64), axis=axis)
    n = x.shape[axis]
    cut = int(0.25 * n)
    return np.take(x, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def aggregate_runs(scores: np.ndarray, n_bootstrap: int = 2000, seed: int = 0) -> dict:
    """Aggregate per-episode scores of several runs, shape (runs, episodes).

    ``mean`` / ``iqm`` are over the runs' mean scores. The 95 % interval of the IQM is a
    hierarchical bootstrap (resample runs, then episodes within each run), so a single
    run still gets an interval that reflects its episode-to-episode spread.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    n_runs, n_eps = scores.shape
    run_means = scores.mean(axis=1)
    rng = np.random.default_rng(seed)
    runs = rng.integers(0, n_runs, size=(n_bootstrap, n_runs))
    eps = rng.integers(0, n_eps, size=(n_bootstrap, n_runs, n_eps))
    boot = interquartile_mean(scores[runs[..., None], eps].mean(axis=-1), axis=-1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"runs": n_runs, "mean": float(run_means.mean()), "iqm": float(interquartile_mean(run_means)),
            "iqm_ci95_low": float(lo), "iqm_ci95_high": float(hi)}


def summarize(rows: dict[str, dict], groups: dict[str, list[str]], ref: Reference, expert_return: float,
              n_bootstrap: int = 2000, seed: int = 0) -> dict:
    """data/evaluate/summary.json from per-policy `score_row`s and group name -> policy names."""
    aggregates = {}
    for group, names in groups.items():
        returns = np.array([rows[n]["episode_returns"] for n in names])
        agg = aggregate_runs(normalized_score(returns, ref), n_bootstrap, seed)
        aggregates[group] = {"policies": names, "runs": agg["runs"], "return_mean": float(returns.mean()),
                             "normalized_mean": agg["mean"], "normalized_iqm": agg["iqm"],
                             "normalized_iqm_ci95_low": agg["iqm_ci95_low"],
                             "normalized_iqm_ci95_high": agg["iqm_ci95_high"]}
    keys = ("return_mean", "return_std", "normalized_mean", "normalized_std", "episodes")
    first = next(iter(rows.values()))
    return {"policies": {n: {k: r[k] for k in keys} for n, r in rows.items()},
            "aggregates": aggregates,
            "expert_data": {"return_mean": float(expert_return),
                            "normalized": float(normalized_score(expert_return, ref))},
            "reference": ref.as_dict(),
            "episode_seeds": first["episode_seeds"]}
