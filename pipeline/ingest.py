"""The ingest step: source strings -> checked, selected, combined canonical datasets.

Source strings (params.yaml `data.expert.source`, `data.suboptimal.sources`; their form is
checked by `pipeline.config.parse_source`):
  d4rl:<path.hdf5>       a D4RL-layout hdf5 file (`pipeline.d4rl`)
  minari:<dataset-id>    a Minari dataset (`pipeline.minari_source`)
  embedded:<name>        a default dataset built by `pipeline.embedded`, read as Minari

Actions are checked against `gym.make(env.id).action_space` and rescaled to [-1, 1] when
the bounds differ; `meta["action_low"/"action_high"]` record the bounds (datasets.py).
Expert episodes are then selected (`select_expert`), and `write_ingested` writes
expert.h5, suboptimal.h5 and summary.json, all staged first and renamed into place.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import DataConfig, parse_source
from pipeline.d4rl import read_d4rl
from pipeline.datasets import EpisodeDataset
from pipeline.envs import EnvSpaces, env_spaces, to_unit_action
from pipeline.errors import DatasetError, ParamsError
from pipeline.minari_source import minari_datasets_path, read_minari
from pipeline.utils import atomic_json, staging_dir

log = logging.getLogger(__name__)


# -- reading ------------------------------------------------------------------------------
def read_source(source: str, *, max_episode_steps: int = 1000, allow_download: bool = False) -> EpisodeDataset:
    """Read ``d4rl:<path>``, ``minari:<id>`` or ``embedded:<name>``; meta["source"] is ``source``."""
    scheme, rest = parse_source(source)
    if scheme == "d4rl":
        ds = read_d4rl(rest, max_episode_steps)
    elif scheme == "minari":
        ds = read_minari(rest, allow_download)
    else:
        from pipeline.embedded import ensure_embedded
        minari_id, root = ensure_embedded(rest)
        with minari_datasets_path(root):
            ds = read_minari(minari_id, allow_download=False)
    ds.meta["source"] = source
    return ds


# -- environment conformance --------------------------------------------------------------
def conform_to_env(ds: EpisodeDataset, spaces: EnvSpaces, where: str) -> EpisodeDataset:
    """Check dimensions and action bounds against the env; rescale actions to [-1, 1] if needed."""
    if ds.obs_dim != spaces.obs_dim or ds.act_dim != spaces.act_dim:
        raise DatasetError(f"{where}: observations have {ds.obs_dim} dims and actions {ds.act_dim}, but env.id "
                           f"{spaces.env_id} expects {spaces.obs_dim} and {spaces.act_dim}")
    low, high = spaces.action_low, spaces.action_high
    tol = 1e-6 * (high - low)  # float32 round-off of a recorded bound
    outside = (ds.actions < low - tol) | (ds.actions > high + tol)
    if outside.any():
        row, col = np.argwhere(outside)[0]
        raise DatasetError(f"{where}: {int(outside.sum())} action values lie outside env.id {spaces.env_id}'s "
                           f"action bounds [{low.tolist()}, {high.tolist()}] (first: transition {row}, dim {col}, "
                           f"value {float(ds.actions[row, col]):.6g}); expected actions within the bounds")
    rescaled = not (np.all(low == -1.0) and np.all(high == 1.0))
    actions = to_unit_action(ds.actions, low, high) if rescaled else ds.actions
    actions = np.clip(actions, -1.0, 1.0).astype(np.float32)
    meta = {**ds.meta, "env_id": spaces.env_id, "action_low": low.tolist(), "action_high": high.tolist(),
            "actions_rescaled": bool(rescaled)}
    return dataclasses.replace(ds, actions=actions, meta=meta)


# -- expert selection ---------------------------------------------------------------------
def select_expert(ds: EpisodeDataset, n_trajectories: int, selection: str, seed: int,
                  skip_terminated: bool = False) -> tuple[EpisodeDataset, np.ndarray]:
    """Pick ``n_trajectories`` episodes; returns them and their (sorted) indices in ``ds``.

    Depends only on the episode order, terminal flags (and returns for ``best``), so the
    same data in D4RL or Minari form gives the same choice for the same seed. ``selection``
    is a validated ``data.expert.selection`` (random | first | best).
    """
    candidates = np.arange(ds.n_episodes)
    skipped = 0
    if skip_terminated:
        candidates = candidates[~ds.episode_terminated()]
        skipped = ds.n_episodes - candidates.size
        if candidates.size == 0:
            raise DatasetError(f"{ds.meta.get('source', 'expert data')}: no expert episodes left: all "
                               f"{ds.n_episodes} ended by termination and data.expert.skip_terminated is true")
    if n_trajectories > candidates.size:  # the data decide this one, so it cannot be checked up front
        note = f" ({skipped} terminated episodes skipped)" if skip_terminated else ""
        raise ParamsError(f"params.yaml: 'data.expert.n_trajectories' is {n_trajectories} but "
                          f"{ds.meta.get('source', 'the expert data')} has only {candidates.size} usable "
                          f"episodes{note}")
    if selection == "random":
        chosen = candidates[np.random.default_rng(seed).choice(candidates.size, n_trajectories, replace=False)]
    elif selection == "first":
        chosen = candidates[:n_trajectories]
    elif selection == "best":
        returns = ds.episode_returns()[candidates]
        chosen = candidates[np.argsort(-returns, kind="stable")[:n_trajectories]]
    else:
        raise ValueError(f"selection must be random, first or best, got {selection!r}")
    chosen = np.sort(chosen)
    return ds.select_episodes(chosen), chosen


# -- the ingest step ----------------------------------------------------------------------
@dataclass
class Ingested:
    expert: EpisodeDataset
    suboptimal: EpisodeDataset
    summary: dict


def ingest(data: DataConfig, env_id: str, seed: int) -> Ingested:
    """Read, check, select and combine everything; nothing is written (see `write_ingested`)."""
    spaces = env_spaces(env_id)
    read = dict(max_episode_steps=data.max_episode_steps, allow_download=data.allow_download)

    key = "data.expert.source"
    full = conform_to_env(_read(key, data.expert.source, read), spaces, f"{key} ({data.expert.source})")
    cfg = data.expert
    selection = {"n_trajectories": cfg.n_trajectories, "selection": cfg.selection, "seed": seed,
                 "skip_terminated": cfg.skip_terminated}
    expert, chosen = select_expert(full, cfg.n_trajectories, cfg.selection, seed, cfg.skip_terminated)
    expert.meta.update(selection=selection, selected_episodes=chosen.tolist(), available_episodes=full.n_episodes)
    log.info("expert: selected %d of %d episodes (%s, seed %d): %s", len(chosen), full.n_episodes, cfg.selection,
             seed, chosen.tolist())
    del full

    parts = []
    for i, source in enumerate(data.suboptimal.sources):
        key = f"data.suboptimal.sources[{i}]"
        part = _read(key, source, read)
        if (part.obs_dim, part.act_dim) != (expert.obs_dim, expert.act_dim):
            raise DatasetError(f"{key}: {source} has observation/action dims {part.obs_dim}/{part.act_dim} but the "
                               f"expert data ({data.expert.source}) and env.id {env_id} have "
                               f"{expert.obs_dim}/{expert.act_dim}")
        parts.append(conform_to_env(part, spaces, f"{key} ({source})"))
    sources = [p.meta["source"] for p in parts]
    hashes = [p.meta["content_hash"] for p in parts]
    sub_meta = {"source": " + ".join(sources), "sources": sources, "content_hash": _combined_hash(hashes),
                "content_hashes": hashes, "env_id": env_id, "action_low": spaces.action_low.tolist(),
                "action_high": spaces.action_high.tolist(), "parts": [p.meta for p in parts]}
    # The demonstrations stay in expert.h5 only: a consumer that wants them in its suboptimal pool
    # (data.expert.add_to_suboptimal) concatenates the two itself.
    suboptimal = parts[0] if len(parts) == 1 else EpisodeDataset.concatenate(parts)
    suboptimal = dataclasses.replace(suboptimal, meta=sub_meta)
    return Ingested(expert, suboptimal, ingest_summary(expert, suboptimal))


def _read(key: str, source: str, read: dict) -> EpisodeDataset:
    start = time.time()
    try:
        ds = read_source(source, **read)
    except (DatasetError, ParamsError) as exc:
        raise type(exc)(f"{key}: {exc}") from None
    log.info("%s: %s -> %d episodes, %d transitions (obs %d, act %d) in %.1fs", key, source, ds.n_episodes,
             ds.n_transitions, ds.obs_dim, ds.act_dim, time.time() - start)
    return ds


def _combined_hash(hashes: list[str]) -> str:
    return hashes[0] if len(hashes) == 1 else hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def ingest_summary(expert: EpisodeDataset, suboptimal: EpisodeDataset) -> dict:
    """data/ingested/summary.json: counts, returns, dims, sources and hashes of both datasets."""
    e, s = expert.meta, suboptimal.meta
    expert_part = {**expert.summary(), "source": e["source"], "content_hash": e["content_hash"],
                   "selected_episodes": e["selected_episodes"], "available_episodes": e["available_episodes"],
                   "selection": e["selection"], "actions_rescaled": e["actions_rescaled"]}
    for key in ("ref_min_score", "ref_max_score"):
        if key in e:
            expert_part[key] = e[key]
    sub_part = {**suboptimal.summary(), "source": s["source"], "content_hash": s["content_hash"],
                "sources": s["sources"], "content_hashes": s["content_hashes"]}
    return {"expert": expert_part, "suboptimal": sub_part}


def write_ingested(result: Ingested, out_dir: str | Path) -> None:
    """Write expert.h5, suboptimal.h5, summary.json: all staged first, then renamed into place."""
    out_dir = Path(out_dir)
    with staging_dir(out_dir) as staging:
        result.expert.save(staging / "expert.h5")
        result.suboptimal.save(staging / "suboptimal.h5")
        atomic_json(result.summary, staging / "summary.json")
        for name in ("expert.h5", "suboptimal.h5", "summary.json"):
            os.replace(staging / name, out_dir / name)
