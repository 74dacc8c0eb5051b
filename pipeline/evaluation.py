"""Evaluation: deterministic roll-outs in gymnasium vector envs, normalised scores, aggregates.

Episode k of an evaluation is always reset with seed ``seed + k``, whichever sub-environment
runs it, so a policy's returns equal those of a plain single-env loop with the same seeds
and every policy is scored on the same start states.

Normalised score = 100 * (R - R_random) / (R_expert - R_random) (D4RL convention).
Aggregates over runs (seeds) follow rliable: the inter-quartile mean (IQM) of per-run mean
scores, with a 95 % bootstrap interval over runs (never over one run's episodes: a group with
one run has no interval).

The fair protocol (docs/method.md section 6) is enforced here:
- reported scores (stage evaluate) and tuning / monitoring roll-outs (stage improve, curve.tsv
  eval_return) reset their episodes from two disjoint seed ranges, `REPORT_SEED_BASE` and
  `TUNING_SEED_BASE` (disjoint for every episode count `pipeline.config` allows);
- intervals are over runs, and `summarize` names groups with fewer than `MIN_QUOTED_RUNS` runs;
- `summarize` reports the gap each improvement algorithm closes between plain BC and the
  demonstrations' own score, and the ablations (what the critic adds, what the HetStat policy adds).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import gymnasium as gym
import numpy as np
import torch

from pipeline.config import MAX_EVAL_EPISODES
from pipeline.envs import D4RL_REF_SCORES, env_family, to_env_action
from pipeline.errors import ArtefactError, DatasetError, ParamsError

# Episode reset seeds. Episode k of an evaluation is reset with seed ``start + k``, k < episodes <= MAX_EVAL_EPISODES.
# Tuning: improve's monitoring roll-outs (curve.tsv eval_return; what anyone tuning params looks at), start
# TUNING_SEED_BASE whatever params.seed is. Reported: the evaluate stage's roll-outs, start
# REPORT_SEED_BASE * (params.seed + 1) (also disjoint from the seeds the embedded datasets were collected with).
# The two ranges never overlap: TUNING_SEED_BASE + MAX_EVAL_EPISODES <= REPORT_SEED_BASE (checked below).
TUNING_SEED_BASE = 12_345
REPORT_SEED_BASE = 1_000_000
if TUNING_SEED_BASE + MAX_EVAL_EPISODES > REPORT_SEED_BASE:
    raise RuntimeError("pipeline/evaluation.py: tuning and reported evaluation seeds would overlap")

BASELINE_GROUP = "bc"          # plain BC over its fits: what improvement is measured against
CLONED_GROUP = "csil_bc"       # CSIL's HetStat BC: the reward's source, not an improvement algorithm
MIN_QUOTED_RUNS = 3            # docs/method.md section 6: quote a method's score only over >= 3 seeds
# name -> (group with the component, group without it, what the difference of their IQMs measures)
ABLATIONS = {"critic": ("awr", "awr_uniform", "what the critic adds: AWR vs AWR with uniform weights (beta 0)"),
             "hetstat_policy": ("csil_bc", "bc", "what the HetStat policy adds: CSIL BC vs plain BC")}


def report_seed(run_seed: int) -> int:
    """First episode reset seed of the reported evaluation (stage evaluate) for ``params.seed``."""
    return REPORT_SEED_BASE * (int(run_seed) + 1)


def tuning_seed() -> int:
    """First episode reset seed of the tuning / monitoring roll-outs (stage improve)."""
    return TUNING_SEED_BASE


def seed_span(start: int, episodes: int) -> list[int]:
    """[first, last] reset seed of ``episodes`` episodes starting at ``start``."""
    return [int(start), int(start) + int(episodes) - 1]


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

    An explicit ``env.ref_scores: [min, max]`` (checked by `pipeline.config`: min < max) always
    wins (it is how a user overrides); ``auto`` uses the D4RL table for hopper / halfcheetah /
    walker2d / ant, then the dataset's ref_min_score / ref_max_score, and otherwise fails naming the fix.
    """
    if isinstance(ref_scores, (list, tuple)):
        ref = Reference(float(ref_scores[0]), float(ref_scores[1]), "params.yaml env.ref_scores")
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
        raise DatasetError(f"{ref.source}: reference returns must satisfy min < max, got [{ref.low}, {ref.high}]; "
                           f"set 'env.ref_scores: [random_return, expert_return]' in params.yaml")
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
    with one_thread():
        return _evaluate(policy, env_id, episodes, seed, n_envs, device)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside, then restore the setting. A policy's forward pass on a few
    observations rounds differently with 1 and 2 threads, and a locomotion episode amplifies that
    last-bit difference: the same policy file and reset seeds scored 38.4 on one thread and 39.0 on
    two (halfcheetah, 10 episodes; two episodes' returns 384 vs 4,715 and 5,629 vs 2,071). On one
    thread a score does not depend on the process's thread setting (a stage script, `dvc repro`, a
    test); it still may differ across CPU models."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _evaluate(policy: Actor, env_id: str, episodes: int, seed: int, n_envs: int,
              device: torch.device | str) -> dict:
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
            obs, reward, terminated, truncated, _ = envs.step(to_env_action(a, low, high))
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
    """Aggregate several runs: per-episode scores, shape (runs, episodes), or per-run scores, shape (runs,).

    ``mean`` / ``iqm`` are over the runs' mean scores. The 95 % interval of the IQM is a
    percentile bootstrap over runs (resample the runs' means with replacement): it measures
    seed-to-seed variation, not one run's episode-to-episode spread, so one run has no
    interval (``iqm_ci95_low`` / ``iqm_ci95_high`` are None).
    """
    scores = np.asarray(scores, dtype=np.float64)
    run_means = scores.mean(axis=1) if scores.ndim == 2 else np.atleast_1d(scores)
    n_runs = len(run_means)
    lo = hi = None
    if n_runs >= 2:
        runs = np.random.default_rng(seed).integers(0, n_runs, size=(n_bootstrap, n_runs))
        lo, hi = (float(v) for v in np.percentile(interquartile_mean(run_means[runs], axis=-1), [2.5, 97.5]))
    return {"runs": n_runs, "mean": float(run_means.mean()), "iqm": float(interquartile_mean(run_means)),
            "iqm_ci95_low": lo, "iqm_ci95_high": hi}


def gap_closed(iqm: float, iqm_bc: float, demo_score: float) -> float | None:
    """Fraction of the gap between plain BC and the demonstrations closed: (IQM - IQM_bc) / (demo - IQM_bc).

    None when there is no gap (BC's IQM at or above the demonstrations' score).
    """
    room = float(demo_score) - float(iqm_bc)
    return (float(iqm) - float(iqm_bc)) / room if room > 0 else None


def summarize(rows: dict[str, dict], groups: dict[str, list[str]], ref: Reference, expert_return: float,
              n_bootstrap: int = 2000, seed: int = 0, protocol: dict | None = None) -> dict:
    """data/evaluate/summary.json from per-policy `score_row`s and group name -> policy names.

    Per group: the runs' normalised means (``per_run``), their IQM and its 95 % bootstrap interval
    over runs (None for a one-run group). ``gap_closed``: per improvement algorithm (every group but
    `BASELINE_GROUP` and `CLONED_GROUP`), the fraction of the gap between plain BC's IQM and the
    demonstrations' own normalised score (``expert_return`` normalised with ``ref``) it closes.
    ``ablations``: the `ABLATIONS` whose two groups are both present, as differences of IQMs.
    ``protocol`` (e.g. the seed ranges) is merged into the summary's ``protocol`` record.
    """
    aggregates = {}
    for group, names in groups.items():
        per_run = {n: float(rows[n]["normalized_mean"]) for n in names}
        agg = aggregate_runs(np.array(list(per_run.values())), n_bootstrap, seed)
        aggregates[group] = {"policies": names, "runs": agg["runs"], "per_run": per_run,
                             "return_mean": float(np.mean([rows[n]["return_mean"] for n in names])),
                             "normalized_mean": agg["mean"], "normalized_iqm": agg["iqm"],
                             "normalized_iqm_ci95_low": agg["iqm_ci95_low"],
                             "normalized_iqm_ci95_high": agg["iqm_ci95_high"],
                             "interval": "95 % bootstrap over runs" if agg["runs"] > 1 else "one run: no interval"}
    demo_score = float(normalized_score(expert_return, ref))
    gaps = {}
    if BASELINE_GROUP in aggregates:
        bc_iqm = aggregates[BASELINE_GROUP]["normalized_iqm"]
        gaps = {g: gap_closed(a["normalized_iqm"], bc_iqm, demo_score) for g, a in aggregates.items()
                if g not in (BASELINE_GROUP, CLONED_GROUP)}
    ablations = {name: {"with": on, "without": off, "what": what,
                        "iqm_difference": aggregates[on]["normalized_iqm"] - aggregates[off]["normalized_iqm"]}
                 for name, (on, off, what) in ABLATIONS.items() if on in aggregates and off in aggregates}
    keys = ("return_mean", "return_std", "normalized_mean", "normalized_std", "episodes")
    first = next(iter(rows.values()))
    return {"policies": {n: {k: r[k] for k in keys} for n, r in rows.items()},
            "aggregates": aggregates,
            "gap_closed": gaps,
            "ablations": ablations,
            "expert_data": {"return_mean": float(expert_return), "normalized": demo_score},
            "reference": ref.as_dict(),
            "episode_seeds": first["episode_seeds"],
            "protocol": {"aggregate": "IQM of the runs' normalised means",
                         "interval": "95 % percentile bootstrap of the IQM over runs (seeds); one run: no interval",
                         "bootstrap": int(n_bootstrap),
                         "baseline": BASELINE_GROUP,
                         "demo_score": demo_score,
                         "gap_closed": f"(IQM - IQM_{BASELINE_GROUP}) / (demo_score - IQM_{BASELINE_GROUP}); "
                                       f"null when IQM_{BASELINE_GROUP} >= demo_score",
                         "min_quoted_runs": MIN_QUOTED_RUNS,
                         "below_min_runs": [g for g, a in aggregates.items() if a["runs"] < MIN_QUOTED_RUNS],
                         **(protocol or {})}}


def compared_scores(summary: dict) -> dict:
    """What runs are compared on (data/evaluate/scores.json, the `dvc metrics` of evaluation): each
    group's normalised IQM, each improvement algorithm's gap closed (when defined) and each policy's
    normalised mean (intervals, ablations and the protocol stay in summary.json)."""
    return {"iqm": {g: a["normalized_iqm"] for g, a in summary["aggregates"].items()},
            "gap_closed": {g: v for g, v in summary.get("gap_closed", {}).items() if v is not None},
            "normalized": {n: p["normalized_mean"] for n, p in summary["policies"].items()}}
