"""Minari datasets (``minari:<dataset-id>``) -> `EpisodeDataset`.

Minari stores T+1 observations for T actions: next_obs[t] = obs[t + 1] of the same episode.
A dataset is read from MINARI_DATASETS_PATH (or ~/.minari/datasets). One that is not there
is downloaded only with params.yaml ``data.allow_download: true``; without it the error says
whether the Minari remote has the id (a short, offline-safe lookup: no network means "could
not check", never a hang). The final episode flagged neither terminated nor truncated counts
as truncated. `meta["content_hash"]` is the sha256 of the dataset's files.
"""
from __future__ import annotations

import contextlib
import os
import socket
import threading
import warnings
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import gymnasium as gym
import numpy as np

from pipeline.datasets import EpisodeDataset, check_finite
from pipeline.errors import DatasetError
from pipeline.utils import content_hash

REMOTE_LOOKUP_TIMEOUT_S = 10.0


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


def remote_lookup(dataset_id: str, timeout: float = REMOTE_LOOKUP_TIMEOUT_S) -> tuple[bool | None, str]:
    """Does the Minari remote (MINARI_REMOTE, default Farama's) know ``dataset_id``?

    Returns (True, "") / (False, "") when the remote answered, (None, reason) when it could not
    be asked (no network, no `huggingface_hub`, a timeout). Never raises, never waits longer than
    ``timeout``: huggingface_hub retries an unreachable host for ~25 s, so the lookup runs in a
    daemon thread that is abandoned on timeout.
    """
    remote = os.environ.get("MINARI_REMOTE", "hf://farama-minari")
    if remote.startswith("hf://"):
        try:
            from huggingface_hub import constants
        except ImportError:
            return None, "huggingface_hub is not installed (pip install 'minari[hf]')"
        host = urlparse(constants.ENDPOINT).hostname
        try:
            socket.getaddrinfo(host, 443)
        except OSError as exc:
            return None, f"cannot reach {host}: {exc}"
    answer: list[tuple[bool | None, str]] = []

    def ask() -> None:
        try:
            from minari.storage.remotes import get_cloud_storage
            get_cloud_storage().get_dataset_metadata(dataset_id)
            answer.append((True, ""))
        except Exception as exc:  # noqa: BLE001  (each remote backend raises its own types)
            name = type(exc).__name__
            if name in ("RemoteEntryNotFoundError", "RepositoryNotFoundError", "RevisionNotFoundError", "NotFound"):
                answer.append((False, ""))
            else:
                answer.append((None, f"{name}: {str(exc).splitlines()[0] if str(exc) else ''}"))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        thread.join(timeout)
    return answer[0] if answer else (None, f"no answer from {remote} within {timeout:.0f} s")


def _not_local(dataset_id: str, where: str) -> DatasetError:
    import minari
    from minari.storage.datasets_root_dir import get_dataset_path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = sorted(minari.list_local_datasets())
    here = (f"not found under {get_dataset_path()} (MINARI_DATASETS_PATH or ~/.minari/datasets); "
            f"local datasets: {', '.join(local) or 'none'}")
    known, reason = remote_lookup(dataset_id)
    if known:
        return DatasetError(f"{where}: a remote Minari dataset that is not local ({here}); "
                            f"set data.allow_download: true to download it")
    if known is False:
        return DatasetError(f"{where}: unknown Minari dataset id, neither local ({here}) nor on the Minari remote")
    return DatasetError(f"{where}: not a local Minari dataset ({here}); could not check the Minari remote "
                        f"({reason}); if it is a remote dataset, set data.allow_download: true to download it")


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
            raise _not_local(dataset_id, where)
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
    check_finite({"observations": obs, "next_observations (last observation of an episode)": next_obs,
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
    return EpisodeDataset.from_flags(obs, act, rew, next_obs, terminal, timeout, meta)
