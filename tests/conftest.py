"""Shared test data: real env rollouts written as D4RL-layout hdf5 files and Minari datasets.

Plain helpers (importable as ``from conftest import ...``):
  rollout_episodes(env_id, n_episodes, seed, max_episode_steps)  uniform-random roll-outs
  cut_episode(episode, steps)      the first ``steps`` steps, neither terminated nor truncated
  write_d4rl(path, episodes, ...)  D4RL layout (v2 by default; ``timeouts=False`` for v0)
  write_minari(dataset_id, episodes, root, env_id)  `minari.create_dataset_from_buffers`

Fixtures:
  hopper_episodes   12 Hopper-v5 episodes (obs 11, act 3), max 40 steps: most terminate,
                    some are truncated by the time limit. A fresh copy per test.
  d4rl_file         those episodes as a D4RL v2 file (timeouts, next_observations, infos, metadata)
  minari_root       a temporary MINARI_DATASETS_PATH (set for the test)
  minari_dataset    the same episodes as the Minari dataset "test/hopper/random-v0" in minari_root
  make_d4rl         factory: make_d4rl(episodes, name="x.hdf5", **write_d4rl options) -> Path
  make_minari       factory: make_minari(episodes, dataset_id, env_id="Hopper-v5") -> dataset id

An episode is a dict like Minari's buffers: observations (T+1, obs_dim) float64, actions
(T, act_dim) float32, rewards (T,) float64, terminations (T,) bool, truncations (T,) bool.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

# Test models are tiny: a second intra-op thread only adds synchronisation, which costs seconds
# per test when other jobs keep the cores busy. Subprocess stages (dvc repro) set their own.
torch.set_num_threads(1)

HOPPER_MAX_STEPS = 40
MINARI_ID = "test/hopper/random-v0"


def rollout_episodes(env_id: str = "Hopper-v5", n_episodes: int = 12, seed: int = 0,
                     max_episode_steps: int = HOPPER_MAX_STEPS) -> list[dict]:
    """Uniform-random actions within the env's bounds; episodes end by termination or the time limit."""
    env = gym.make(env_id, max_episode_steps=max_episode_steps)
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    episodes = []
    for k in range(n_episodes):
        obs, _ = env.reset(seed=seed * 10_000 + k)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        done = False
        while not done:
            action = rng.uniform(low, high).astype(np.float32)
            obs, reward, term, trunc, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(float(reward))
            terms.append(bool(term))
            truncs.append(bool(trunc) and not term)
            done = term or trunc
        episodes.append({"observations": np.asarray(observations, np.float64),
                         "actions": np.asarray(actions, np.float32), "rewards": np.asarray(rewards),
                         "terminations": np.asarray(terms), "truncations": np.asarray(truncs)})
    env.close()
    return episodes


def cut_episode(episode: dict, steps: int) -> dict:
    """The first ``steps`` transitions of ``episode``, as if the recording stopped there."""
    return {"observations": episode["observations"][: steps + 1].copy(),
            "actions": episode["actions"][:steps].copy(), "rewards": episode["rewards"][:steps].copy(),
            "terminations": np.zeros(steps, bool), "truncations": np.zeros(steps, bool)}


def write_d4rl(path: str | Path, episodes: list[dict], *, timeouts: bool = True, next_observations: bool = True,
               extras: bool = True) -> Path:
    """The episodes as one D4RL-layout hdf5 file (one row per transition, float32 like D4RL)."""
    cat = lambda key, sl=slice(None): np.concatenate([e[key][sl] for e in episodes])
    path = Path(path)
    with h5py.File(path, "w") as f:
        f.create_dataset("observations", data=cat("observations", slice(None, -1)).astype(np.float32))
        f.create_dataset("actions", data=cat("actions").astype(np.float32))
        f.create_dataset("rewards", data=cat("rewards").astype(np.float32))
        f.create_dataset("terminals", data=cat("terminations").astype(bool))
        if timeouts:
            f.create_dataset("timeouts", data=cat("truncations").astype(bool))
        if next_observations:
            f.create_dataset("next_observations", data=cat("observations", slice(1, None)).astype(np.float32))
        if extras:
            n = sum(len(e["actions"]) for e in episodes)
            f.create_dataset("infos/action_log_probs", data=np.zeros(n, np.float32))
            f.create_dataset("metadata/algorithm", data="uniform random")
            f.create_dataset("metadata/policy/seed", data=0)
    return path


def write_minari(dataset_id: str, episodes: list[dict], root: str | Path, env_id: str = "Hopper-v5") -> str:
    """The episodes as a real Minari dataset under ``root`` (used as MINARI_DATASETS_PATH)."""
    import minari
    from minari.data_collector import EpisodeBuffer

    buffers = [EpisodeBuffer(id=i, observations=e["observations"], actions=e["actions"], rewards=e["rewards"],
                             terminations=e["terminations"], truncations=e["truncations"])
               for i, e in enumerate(episodes)]
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # minari nags about missing author / permalink / description
            minari.create_dataset_from_buffers(dataset_id, buffers, env=env_id, algorithm_name="uniform random",
                                               ref_min_score=0.0, ref_max_score=100.0)
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
    return dataset_id


def copy_episodes(episodes: list[dict]) -> list[dict]:
    return [{k: v.copy() for k, v in e.items()} for e in episodes]


@pytest.fixture(scope="session")
def _hopper_rollouts() -> list[dict]:
    episodes = rollout_episodes("Hopper-v5", 12, seed=0, max_episode_steps=HOPPER_MAX_STEPS)
    ends = [bool(e["terminations"][-1]) for e in episodes]
    assert any(ends) and not all(ends), "want both terminated and truncated episodes"
    return episodes


@pytest.fixture
def hopper_episodes(_hopper_rollouts: list[dict]) -> list[dict]:
    return copy_episodes(_hopper_rollouts)


@pytest.fixture
def make_d4rl(tmp_path: Path) -> Callable[..., Path]:
    def make(episodes: list[dict], name: str = "dataset.hdf5", **options: bool) -> Path:
        return write_d4rl(tmp_path / name, episodes, **options)
    return make


@pytest.fixture
def d4rl_file(make_d4rl: Callable[..., Path], hopper_episodes: list[dict]) -> Path:
    return make_d4rl(hopper_episodes, "hopper-random-v2.hdf5")


@pytest.fixture
def minari_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "minari"
    root.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture
def make_minari(minari_root: Path) -> Callable[..., str]:
    def make(episodes: list[dict], dataset_id: str = MINARI_ID, env_id: str = "Hopper-v5") -> str:
        return write_minari(dataset_id, episodes, minari_root, env_id)
    return make


@pytest.fixture
def minari_dataset(make_minari: Callable[..., str], hopper_episodes: list[dict]) -> str:
    return make_minari(hopper_episodes, MINARI_ID)
