"""Dataset sources -> the canonical `EpisodeDataset`, and the ingest step built on them.

Source strings (params.yaml `data.expert.source`, `data.suboptimal.sources`):
  d4rl:<path.hdf5>       a D4RL-layout hdf5 file (v2 with `timeouts`, or v0 without)
  minari:<dataset-id>    a local Minari dataset (MINARI_DATASETS_PATH or ~/.minari/datasets)
  embedded:<name>        a default dataset built by `pipeline.embedded`, read as Minari

Episode boundaries and flags
  * A transition is *terminal* when the episode ended by termination, *timeout* when it
    ended by truncation (time limit, or the recording stopped). A timeout is never a
    terminal; a D4RL row flagged as both is a terminal (the env did terminate).
  * Minari stores T+1 observations for T actions: next_obs[t] = obs[t + 1] of the same episode.
  * D4RL stores one row per transition. With `next_observations` in the file every row is
    kept. Without it, next_obs[t] = obs[t + 1], which is wrong at an episode's end:
      - the last row of a timed-out (or unfinished) episode is DROPPED, since its successor
        is unknown, and the row before it becomes the episode's timeout (a D4RL
        `qlearning_dataset` convention); a 1-row timed-out episode disappears;
      - a terminal row is kept (it carries the termination) with next_obs = obs, since the
        successor is unknown and no value target reads it. `meta["next_observations"]`
        says "derived" in that case.
  * D4RL v0 files have no `timeouts`: episodes are split after every `max_episode_steps`
    rows that did not terminate.
  * The final episode of a recording that ends with neither flag counts as truncated.

Actions are checked against `gym.make(env.id).action_space` and rescaled to [-1, 1] when
the bounds differ; `meta["action_low"/"action_high"]` record the bounds (datasets.py).
`content_hash` is the sha256 of the source file(s).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import gymnasium as gym
import h5py
import numpy as np

from pipeline.config import DataConfig, ParamsError
from pipeline.datasets import DatasetError, EpisodeDataset
from pipeline.utils import atomic_json

log = logging.getLogger(__name__)

SCHEMES = ("d4rl", "minari", "embedded")
D4RL_REQUIRED = ("observations", "actions", "rewards", "terminals")
SOURCE_FORMS = "d4rl:<path.hdf5>, minari:<dataset-id> or embedded:<name>"


# -- hashing ------------------------------------------------------------------------------
def content_hash(paths: list[Path], root: Path | None = None) -> str:
    """sha256 over the files' bytes (and their paths relative to ``root``, when several)."""
    h = hashlib.sha256()
    for path in paths:
        if root is not None:
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


# -- shared building ----------------------------------------------------------------------
def _check_finite(arrays: dict[str, np.ndarray], where: str) -> None:
    for key, value in arrays.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            bad = np.argwhere(~np.isfinite(value))[0]
            raise DatasetError(f"{where}: '{key}' contains NaN or Inf (first at index {tuple(int(i) for i in bad)}); "
                               f"expected finite values everywhere")


def _flags(value: np.ndarray, key: str, where: str) -> np.ndarray:
    if value.dtype != bool and not np.all((value == 0) | (value == 1)):
        raise DatasetError(f"{where}: '{key}' must hold 0/1 (or boolean) flags")
    return value.astype(bool)


def _episode_dataset(obs: np.ndarray, act: np.ndarray, rew: np.ndarray, next_obs: np.ndarray,
                     terminal: np.ndarray, timeout: np.ndarray, meta: dict) -> EpisodeDataset:
    """Episodes end at each terminal or timeout; the caller guarantees the last row is one."""
    ends = np.flatnonzero(terminal | timeout)
    starts = np.concatenate([[0], ends + 1]).astype(np.int64)
    return EpisodeDataset(obs, act, rew, next_obs, terminal, timeout, episode_starts=starts, meta=meta)


# -- D4RL ---------------------------------------------------------------------------------
def read_d4rl(path: str | Path, max_episode_steps: int = 1000) -> EpisodeDataset:
    """Read a D4RL-layout hdf5 file (see the module docstring for episode ends)."""
    path = Path(path).expanduser()
    where = str(path)
    if not path.is_file():
        raise DatasetError(f"{where}: file not found (expected a D4RL-layout .hdf5 file)")
    if not h5py.is_hdf5(path):
        raise DatasetError(f"{where}: not an HDF5 file (expected a D4RL-layout .hdf5 file with "
                           f"{', '.join(D4RL_REQUIRED)} and timeouts)")
    try:
        with h5py.File(path, "r") as f:
            raw = _read_d4rl_arrays(f, where)
            source_meta = _d4rl_metadata(f)
    except (OSError, RuntimeError, KeyError) as exc:  # not ValueError: DatasetError is one
        raise DatasetError(f"{where}: truncated or corrupt HDF5 file, cannot read it ({exc})") from None
    ds = _d4rl_episodes(raw, max_episode_steps, where)
    ds.meta.update(source=f"d4rl:{path}", content_hash=content_hash([path]), format="d4rl", **source_meta)
    return ds


def _read_d4rl_arrays(f: h5py.File, where: str) -> dict[str, np.ndarray]:
    missing = [k for k in D4RL_REQUIRED if not isinstance(f.get(k), h5py.Dataset)]
    if missing:
        found = sorted(f.keys())
        raise DatasetError(f"{where}: missing required key(s) {', '.join(missing)}; a D4RL file has "
                           f"{', '.join(D4RL_REQUIRED)} (+ timeouts, next_observations); found: "
                           f"{', '.join(found[:12]) + (' ...' if len(found) > 12 else '') or 'nothing'}")
    keys = [*D4RL_REQUIRED] + [k for k in ("timeouts", "next_observations") if isinstance(f.get(k), h5py.Dataset)]
    lengths = {k: (f[k].shape[0] if f[k].ndim else 0) for k in keys}
    if len(set(lengths.values())) > 1:
        raise DatasetError(f"{where}: arrays have different lengths ("
                           + ", ".join(f"{k} {n}" for k, n in lengths.items())
                           + "); expected one row per transition in every array")
    raw = {k: f[k][()] for k in keys}
    for key, value in raw.items():
        if value.dtype.kind not in "biuf":
            raise DatasetError(f"{where}: '{key}' has dtype {value.dtype}, expected numbers")
    for key in ("observations", "actions", "next_observations"):
        if key in raw and (raw[key].ndim != 2 or raw[key].shape[1] < 1):
            raise DatasetError(f"{where}: '{key}' has shape {raw[key].shape}, expected (transitions, dim)")
    for key in ("rewards", "terminals", "timeouts"):
        if key in raw:
            if raw[key].ndim == 2 and raw[key].shape[1] == 1:
                raw[key] = raw[key][:, 0]
            if raw[key].ndim != 1:
                raise DatasetError(f"{where}: '{key}' has shape {raw[key].shape}, expected (transitions,)")
    if "next_observations" in raw and raw["next_observations"].shape != raw["observations"].shape:
        raise DatasetError(f"{where}: 'next_observations' has shape {raw['next_observations'].shape} but "
                           f"'observations' has {raw['observations'].shape}; expected the same")
    return raw


def _d4rl_metadata(f: h5py.File) -> dict:
    """Scalar entries of the optional `metadata` group (e.g. algorithm, ref scores)."""
    group = f.get("metadata")
    if not isinstance(group, h5py.Group):
        return {}
    found: dict = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and obj.shape == ():
            value = obj[()]
            value = value.decode(errors="replace") if isinstance(value, bytes) else value
            found[name] = value.item() if isinstance(value, np.generic) else value
    group.visititems(visit)
    return {"source_metadata": found} if found else {}


def _d4rl_episodes(raw: dict[str, np.ndarray], max_episode_steps: int, where: str) -> EpisodeDataset:
    n = raw["rewards"].shape[0]
    if n == 0:
        raise DatasetError(f"{where}: the dataset is empty (0 transitions)")
    obs = np.asarray(raw["observations"], np.float32)
    act = np.asarray(raw["actions"], np.float32)
    rew = np.asarray(raw["rewards"], np.float32)
    next_obs = np.asarray(raw["next_observations"], np.float32) if "next_observations" in raw else None
    _check_finite({"observations": obs, "actions": act, "rewards": rew,
                   **({"next_observations": next_obs} if next_obs is not None else {})}, where)
    terminal = _flags(raw["terminals"], "terminals", where)

    if "timeouts" in raw:
        timeout = _flags(raw["timeouts"], "timeouts", where) & ~terminal
    else:
        # v0: split every max_episode_steps rows counted from the last terminal (or split).
        if max_episode_steps < 1:
            raise ParamsError(f"params.yaml: 'data.max_episode_steps' must be >= 1, got {max_episode_steps}")
        seg_start = np.zeros(n, np.int64)
        after_terminal = np.flatnonzero(terminal[:-1]) + 1
        seg_start[after_terminal] = after_terminal
        seg_start = np.maximum.accumulate(seg_start)
        step_in_segment = np.arange(n) - seg_start
        timeout = ((step_in_segment + 1) % max_episode_steps == 0) & ~terminal
    unfinished = not (terminal[-1] or timeout[-1])
    timeout[-1] |= unfinished

    dropped = 0
    if next_obs is None:
        next_obs = np.empty_like(obs)
        next_obs[:-1] = obs[1:]
        next_obs[terminal] = obs[terminal]
        ends = terminal | timeout
        first = np.concatenate([[True], ends[:-1]])
        drop = np.flatnonzero(timeout)
        has_prev = drop[~first[drop]]
        timeout[has_prev - 1] = True
        keep = np.ones(n, bool)
        keep[drop] = False
        dropped = int(drop.size)
        obs, act, rew, next_obs = obs[keep], act[keep], rew[keep], next_obs[keep]
        terminal, timeout = terminal[keep], timeout[keep]
        if obs.shape[0] == 0:
            raise DatasetError(f"{where}: the dataset is empty after dropping the last transition of each timed-out "
                               f"episode (no next_observations in the file)")

    meta = {"has_timeouts": "timeouts" in raw, "next_observations": "file" if "next_observations" in raw else "derived",
            "dropped_transitions": dropped, "unfinished_last_episode": bool(unfinished)}
    if "timeouts" not in raw:
        meta["max_episode_steps"] = int(max_episode_steps)
    return _episode_dataset(obs, act, rew, next_obs, terminal, timeout, meta)


# -- Minari -------------------------------------------------------------------------------
def read_minari(dataset_id: str, allow_download: bool = False) -> EpisodeDataset:
    """Read a Minari dataset found under MINARI_DATASETS_PATH (or ~/.minari/datasets)."""
    import minari
    from minari.storage.datasets_root_dir import get_dataset_path

    where = f"minari:{dataset_id}"
    if not dataset_id:
        raise DatasetError(f"{where}: empty Minari dataset id (expected e.g. minari:mujoco/hopper/expert-v0)")
    dataset_dir = get_dataset_path(dataset_id)
    if not (dataset_dir / "data").is_dir():
        if not allow_download:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                local = sorted(minari.list_local_datasets())
            raise DatasetError(
                f"{where}: unknown Minari dataset id, not found under {get_dataset_path()} "
                f"(MINARI_DATASETS_PATH or ~/.minari/datasets); local datasets: {', '.join(local) or 'none'}; "
                f"set data.allow_download: true to download a remote one")
        try:
            minari.download_dataset(dataset_id)
        except Exception as exc:  # minari/network errors vary; report them as one line
            raise DatasetError(f"{where}: could not download the Minari dataset ({type(exc).__name__}: {exc})") \
                from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = minari.load_dataset(dataset_id)
            obs_space, act_space = dataset.observation_space, dataset.action_space
            metadata = dict(dataset.storage.metadata)
            episodes = list(dataset.iterate_episodes())
    except Exception as exc:  # corrupt files surface as OSError, KeyError, ValueError, json errors ...
        raise DatasetError(f"{where}: cannot read the Minari dataset at {dataset_dir} "
                           f"({type(exc).__name__}: {exc})") from None
    for name, space in (("observation", obs_space), ("action", act_space)):
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise DatasetError(f"{where}: {name} space is {space}; expected a flat Box (vector {name}s)")
    if not episodes:
        raise DatasetError(f"{where}: the dataset is empty (0 episodes)")

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "next_obs", "act", "rew", "term", "trunc")}
    for k, ep in enumerate(episodes):
        o, a = np.asarray(ep.observations), np.asarray(ep.actions)
        r, te, tr = np.asarray(ep.rewards), np.asarray(ep.terminations), np.asarray(ep.truncations)
        t = a.shape[0]
        if t == 0 or o.shape[0] != t + 1 or r.shape[0] != t or te.shape[0] != t or tr.shape[0] != t:
            raise DatasetError(f"{where}: episode {k} has {o.shape[0]} observations, {t} actions, {r.shape[0]} "
                               f"rewards, {te.shape[0]} terminations, {tr.shape[0]} truncations; expected T+1 "
                               f"observations for T >= 1 actions, rewards and flags")
        if te[:-1].any() or tr[:-1].any():
            raise DatasetError(f"{where}: episode {k} is flagged terminated/truncated before its last step")
        parts["obs"].append(o[:-1])
        parts["next_obs"].append(o[1:])
        parts["act"].append(a)
        parts["rew"].append(r)
        parts["term"].append(te)
        parts["trunc"].append(tr)
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    obs, next_obs = cat["obs"].astype(np.float32), cat["next_obs"].astype(np.float32)
    act, rew = cat["act"].astype(np.float32), cat["rew"].astype(np.float32)
    _check_finite({"observations": obs, "next_observations (last observation of an episode)": next_obs,
                   "actions": act, "rewards": rew}, where)
    terminal = cat["term"].astype(bool)
    timeout = cat["trunc"].astype(bool) & ~terminal
    lengths = np.array([e.actions.shape[0] for e in episodes])
    last = np.cumsum(lengths) - 1
    unfinished = ~(terminal[last] | timeout[last])
    timeout[last[unfinished]] = True

    meta = {"source": where, "content_hash": content_hash(sorted(p for p in dataset_dir.rglob("*") if p.is_file()),
                                                          root=dataset_dir),
            "format": "minari", "minari_id": dataset_id, "unfinished_episodes": int(unfinished.sum())}
    for key in ("ref_min_score", "ref_max_score"):
        if isinstance(metadata.get(key), (int, float)):
            meta[key] = float(metadata[key])
    return _episode_dataset(obs, act, rew, next_obs, terminal, timeout, meta)


@contextlib.contextmanager
def minari_datasets_path(root: Path) -> Iterator[None]:
    """Point MINARI_DATASETS_PATH at ``root`` for the duration of the block."""
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


# -- dispatch -----------------------------------------------------------------------------
def read_source(source: str, *, max_episode_steps: int = 1000, allow_download: bool = False) -> EpisodeDataset:
    """Read ``d4rl:<path>``, ``minari:<id>`` or ``embedded:<name>``; meta["source"] is ``source``."""
    scheme, sep, rest = source.partition(":")
    if not sep or scheme not in SCHEMES:
        raise ParamsError(f"unknown source {source!r}; expected {SOURCE_FORMS}")
    if not rest:
        raise ParamsError(f"source {source!r} names no file or dataset; expected {SOURCE_FORMS}")
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
@dataclass(frozen=True)
class EnvSpaces:
    env_id: str
    obs_dim: int
    action_low: np.ndarray
    action_high: np.ndarray

    @property
    def act_dim(self) -> int:
        return int(self.action_low.shape[0])


def env_spaces(env_id: str) -> EnvSpaces:
    """Observation size and action bounds of ``gym.make(env_id)``."""
    try:
        env = gym.make(env_id)
    except gym.error.Error as exc:
        raise ParamsError(f"params.yaml: 'env.id' {env_id!r} is not a usable gymnasium environment ({exc})") from None
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    if not (isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1
            and isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1):
        raise ParamsError(f"params.yaml: 'env.id' {env_id!r} must have flat Box observation and action spaces, "
                          f"got {obs_space} and {act_space}")
    low, high = act_space.low.astype(np.float64), act_space.high.astype(np.float64)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ParamsError(f"params.yaml: 'env.id' {env_id!r} has unbounded actions {act_space}; "
                          f"cannot rescale them to [-1, 1]")
    return EnvSpaces(env_id, int(obs_space.shape[0]), low, high)


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
    actions = 2.0 * (ds.actions - low) / (high - low) - 1.0 if rescaled else ds.actions
    actions = np.clip(actions, -1.0, 1.0).astype(np.float32)
    meta = {**ds.meta, "env_id": spaces.env_id, "action_low": low.tolist(), "action_high": high.tolist(),
            "actions_rescaled": bool(rescaled)}
    return dataclasses.replace(ds, actions=actions, meta=meta)


# -- expert selection ---------------------------------------------------------------------
def select_expert(ds: EpisodeDataset, n_trajectories: int, selection: str, seed: int,
                  skip_terminated: bool = False) -> tuple[EpisodeDataset, np.ndarray]:
    """Pick ``n_trajectories`` episodes; returns them and their (sorted) indices in ``ds``.

    Depends only on the episode order, terminal flags (and returns for ``best``), so the
    same data in D4RL or Minari form gives the same choice for the same seed.
    """
    candidates = np.arange(ds.n_episodes)
    skipped = 0
    if skip_terminated:
        candidates = candidates[~ds.episode_terminated()]
        skipped = ds.n_episodes - candidates.size
        if candidates.size == 0:
            raise DatasetError(f"{ds.meta.get('source', 'expert data')}: no expert episodes left: all "
                               f"{ds.n_episodes} ended by termination and data.expert.skip_terminated is true")
    if n_trajectories > candidates.size:
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
        raise ParamsError(f"params.yaml: 'data.expert.selection' must be random, first or best, got {selection!r}")
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
                 "skip_terminated": cfg.skip_terminated, "add_to_suboptimal": cfg.add_to_suboptimal}
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
                "action_high": spaces.action_high.tolist(), "expert_episodes_added": 0,
                "parts": [p.meta for p in parts]}
    if cfg.add_to_suboptimal:
        parts.append(expert)
        sub_meta["expert_episodes_added"] = expert.n_episodes
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
                "sources": s["sources"], "content_hashes": s["content_hashes"],
                "expert_episodes_added": s["expert_episodes_added"]}
    return {"expert": expert_part, "suboptimal": sub_part}


def write_ingested(result: Ingested, out_dir: str | Path) -> None:
    """Write expert.h5, suboptimal.h5, summary.json: all staged first, then renamed into place."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".staging-"))
    try:
        result.expert.save(staging / "expert.h5")
        result.suboptimal.save(staging / "suboptimal.h5")
        atomic_json(result.summary, staging / "summary.json")
        for name in ("expert.h5", "suboptimal.h5", "summary.json"):
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
