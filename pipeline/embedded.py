"""Embedded datasets `embedded:<env>/expert`, `embedded:<env>/mixed` and
`embedded:<env>/deterministic-expert`, for every <env> in `EMBEDDED_ENVS` (halfcheetah is the default).

Built offline, deterministically, from the two SAC actors committed in
pipeline/assets/<env>/ (see the card there), and written as real Minari datasets with
`minari.create_dataset_from_buffers`, so they are read back through the same `minari:`
code path as any other Minari dataset. Built the first time ingest needs them and cached
under ``$CSIL_EMBEDDED_CACHE`` (default ``data/embedded``), keyed by the actors' hash and
the recipe version (per environment); a changed actor or recipe rebuilds.

Recipes (D4RL-style):
  expert                25 episodes of the expert actor, actions = mean + N(0, 0.05^2), clipped.
                        The noise shows BC how to recover from small errors (DART-style): on
                        hopper one demo is enough for plain BC; on halfcheetah it is not.
  deterministic-expert  the same start states, actions = the actor's mean, as a deployed expert
                        demonstrates: one demo covers a thinner tube of states, BC falls short.
  mixed                 ~100k transitions, mostly low and medium quality (medium-replay spirit):
                        uniformly random episodes, the medium actor with and without noise, the
                        expert with heavy noise.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from pipeline.envs import D4RL_REF_SCORES, to_env_action
from pipeline.errors import DatasetError
from pipeline.minari_source import minari_datasets_path
from pipeline.utils import progress, remove_stale_staging, replace_dir, staging_dir

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
RECIPE_VERSION = 2
# Environments with committed actors (pipeline/assets/<name>/expert_actor.pt, medium_actor.pt).
EMBEDDED_ENVS: dict[str, str] = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5"}


@dataclass(frozen=True)
class Segment:
    """``count`` whole episodes (unit "episodes") or at least ``count`` steps of whole episodes, the last
    one may overrun (unit "transitions"), of one behaviour."""
    actor: str | None          # "expert" | "medium" | None (uniform random actions)
    noise: float               # std of Gaussian noise added to the actor's mean action
    count: int
    unit: str = "transitions"  # "episodes" | "transitions"


def _recipes(env: str) -> dict[str, list[Segment]]:
    return {
        f"{env}/expert": [Segment("expert", 0.05, 25, "episodes")],
        f"{env}/deterministic-expert": [Segment("expert", 0.0, 25, "episodes")],
        f"{env}/mixed": [Segment(None, 0.0, 10_000), Segment("medium", 0.0, 25_000),
                         Segment("medium", 0.3, 35_000), Segment("expert", 1.0, 30_000)],
    }


RECIPES: dict[str, list[Segment]] = {name: segs for env in EMBEDDED_ENVS for name, segs in _recipes(env).items()}


def _env_of(name: str) -> str:
    return name.split("/", 1)[0]


def cache_root() -> Path:
    return Path(os.environ.get("CSIL_EMBEDDED_CACHE", "data/embedded")).resolve()


def dataset_id(name: str) -> str:
    return f"embedded/{name}-v0"


def _actor_path(env: str, kind: str) -> Path:
    return ASSETS / env / f"{kind}_actor.pt"


def _fingerprint(env: str) -> str:
    """Hash of one environment's recipes and actors (another environment's new actor rebuilds nothing here)."""
    h = hashlib.sha256(f"recipe-v{RECIPE_VERSION}".encode())
    h.update(json.dumps({k: [s.__dict__ for s in v] for k, v in RECIPES.items() if _env_of(k) == env},
                        sort_keys=True).encode())
    for kind in ("expert", "medium"):
        h.update(_actor_path(env, kind).read_bytes())
    return h.hexdigest()[:16]


def _load_actor(env: str, kind: str) -> Callable[[np.ndarray], np.ndarray]:
    """The committed actor's deterministic action as a float64 numpy function.

    Per-step torch calls cost ~1 ms on a busy CPU, more than the MuJoCo step itself;
    the same MLP in numpy is ~20x cheaper and makes the build take seconds, not minutes.
    """
    from pipeline.policies import TanhGaussianMLP, load_policy
    path = _actor_path(env, kind)
    if not path.exists():
        raise DatasetError(f"{path}: committed {kind} actor is missing; the embedded datasets cannot be built")
    policy = load_policy(path)
    assert isinstance(policy, TanhGaussianMLP)
    mean, std = (policy.normalizer.mean.double().numpy(), policy.normalizer.std.double().numpy())
    layers = [(m.weight.detach().double().numpy().T, m.bias.detach().double().numpy())
              for m in policy.net if isinstance(m, torch.nn.Linear)]

    def act(obs: np.ndarray) -> np.ndarray:
        h = (obs - mean) / std
        for i, (w, b) in enumerate(layers):
            h = h @ w + b
            if i < len(layers) - 1:
                h = np.maximum(h, 0.0)
        return np.tanh(h[: policy.act_dim])

    return act


def rollout_episodes(env: gym.Env, actor: Callable[[np.ndarray], np.ndarray] | None, noise: float, rng: np.random.Generator, *, episodes: int | None = None,
                     transitions: int | None = None, seed: int = 0, bar: tqdm | None = None) -> list[dict]:
    """Whole episodes of ``actor`` (None = uniform random), until the episode or transition count is met."""
    low, high = env.action_space.low, env.action_space.high
    out, total, ep = [], 0, 0
    while (episodes is not None and ep < episodes) or (transitions is not None and total < transitions):
        obs, _ = env.reset(seed=seed + ep)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        done = False
        while not done:
            if actor is None:
                a = rng.uniform(-1.0, 1.0, size=low.shape)
            else:
                a = np.clip(actor(obs) + noise * rng.standard_normal(low.shape), -1.0, 1.0)
            a = a.astype(np.float32)
            obs, r, term, trunc, _ = env.step(to_env_action(a, low, high))
            observations.append(obs)
            actions.append(a)
            rewards.append(float(r))
            terms.append(bool(term))
            truncs.append(bool(trunc))
            done = term or trunc
        out.append({"observations": np.asarray(observations, np.float64), "actions": np.asarray(actions),
                    "rewards": np.asarray(rewards), "terminations": np.asarray(terms),
                    "truncations": np.asarray(truncs)})
        total += len(actions)
        ep += 1
        if bar is not None:
            bar.update(len(actions))
    return out


def build_buffers(name: str) -> list[dict]:
    with threadpool_limits(1):  # multi-threaded BLAS on a 256-vector is 10x slower than one thread
        return _build_buffers(name)


def _build_buffers(name: str) -> list[dict]:
    env = gym.make(EMBEDDED_ENVS[_env_of(name)])
    actors = {kind: _load_actor(_env_of(name), kind) for kind in ("expert", "medium")}
    episodes: list[dict] = []
    # an episode segment's length is only known once run: its time limit bounds the bar's total
    total = sum(seg.count * (env.spec.max_episode_steps if seg.unit == "episodes" else 1) for seg in RECIPES[name])
    bar = progress(None, desc=f"build embedded:{name}", total=total, unit="step")
    for i, seg in enumerate(RECIPES[name]):
        # Seed offsets as in recipe v2 (episode recipes 0, transition recipes 7): the data stay byte-identical.
        rng = np.random.default_rng(1000 * (i + 1) + (0 if seg.unit == "episodes" else 7))
        actor = actors[seg.actor] if seg.actor else None
        count = {seg.unit: seg.count}
        episodes += rollout_episodes(env, actor, seg.noise, rng, seed=100_000 * (i + 1), bar=bar, **count)
    bar.total = bar.n
    bar.close()
    env.close()
    return episodes


def _write_minari(name: str, episodes: list[dict], root: Path) -> None:
    import minari
    from minari.data_collector import EpisodeBuffer

    ref_min, ref_max = D4RL_REF_SCORES[_env_of(name)]

    buffers = [EpisodeBuffer(id=i, observations=e["observations"], actions=e["actions"], rewards=e["rewards"],
                             terminations=e["terminations"], truncations=e["truncations"])
               for i, e in enumerate(episodes)]
    with minari_datasets_path(root), warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="minari.utils")  # nags about author, permalink, eval_env
        minari.create_dataset_from_buffers(
            dataset_id(name), buffers, env=EMBEDDED_ENVS[_env_of(name)],
            algorithm_name=f"csil-pipeline embedded recipe v{RECIPE_VERSION}",
            ref_min_score=ref_min, ref_max_score=ref_max,
            # The description is hashed into the ingested files' content_hash: its format stays as in v2.
            description=f"Embedded default dataset {name}: " + ", ".join(
                f"{s.actor or 'random'} (noise {s.noise}) x {s.count}" for s in RECIPES[name]))


def ensure_embedded(name: str) -> tuple[str, Path]:
    """Build (once, cached) the embedded dataset ``name``; return (minari dataset id, datasets root)."""
    if name not in RECIPES:
        raise DatasetError(f"embedded:{name}: unknown embedded dataset; available: "
                           + ", ".join(f"embedded:{n}" for n in RECIPES))
    root = cache_root() / _fingerprint(_env_of(name))
    marker = root / f".{name.replace('/', '_')}.done"
    remove_stale_staging(root.parent)               # a build killed mid-write, even when nothing is rebuilt now
    if not marker.exists():
        start = time.time()
        episodes = build_buffers(name)
        with staging_dir(root.parent) as staging:
            _write_minari(name, episodes, staging)
            replace_dir(staging / Path(*dataset_id(name).split("/")), root / Path(*dataset_id(name).split("/")))
        marker.write_text(json.dumps({"episodes": len(episodes), "seconds": round(time.time() - start, 1)}))
        log.info("built embedded:%s (%d episodes, %d transitions) in %.1fs", name, len(episodes),
                 sum(len(e["actions"]) for e in episodes), time.time() - start)
    return dataset_id(name), root
