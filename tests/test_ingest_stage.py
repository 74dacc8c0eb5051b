"""The ingest stage: in-process failures leave nothing behind, and one real `dvc repro ingest`."""
from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from pipeline.d4rl import read_d4rl
from pipeline.datasets import EpisodeDataset
from pipeline.errors import DatasetError, ParamsError

REPO = Path(__file__).resolve().parents[1]
STAGE = REPO / "stages" / "ingest.py"


def set_params(root: Path, expert: str, suboptimal: list[str], **expert_options) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["env"]["id"] = "Hopper-v5"                     # the test files are Hopper-v5 data
    raw["data"]["expert"].update(source=expert, **expert_options)
    raw["data"]["suboptimal"]["sources"] = suboptimal
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def leftovers(root: Path) -> list[str]:
    out = root / "data" / "ingested"
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def test_stage_writes_outputs(tmp_path, monkeypatch, d4rl_file, minari_dataset):
    set_params(tmp_path, f"d4rl:{d4rl_file}", [f"minari:{minari_dataset}"], n_trajectories=4)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(STAGE), run_name="ingest")["main"]()
    assert leftovers(tmp_path) == ["expert.h5", "suboptimal.h5", "summary.json"]
    summary = json.loads((tmp_path / "data/ingested/summary.json").read_text())
    assert summary["expert"]["episodes"] == 4 and summary["suboptimal"]["episodes"] == 12   # demos kept apart


def corrupt_nan(path: Path) -> None:
    with h5py.File(path, "a") as f:
        rewards = f["rewards"][()]
        rewards[3] = np.nan
        f["rewards"][...] = rewards


@pytest.mark.parametrize("case,error,message", [
    ("too_many", ParamsError, r"'data.expert.n_trajectories' is 99 but .* only 12 usable episodes"),
    ("nan_in_suboptimal", DatasetError, r"data.suboptimal.sources\[0\]: .*'rewards' contains NaN or Inf"),
    ("unknown_minari", DatasetError, r"data.suboptimal.sources\[1\]: minari:nope/nothing-v0: not a local Minari "
                                     r"dataset .*data.allow_download"),
    ("bad_scheme", ParamsError, r"'data.expert.source': unknown source 'http://x.hdf5'"),
])
def test_bad_input_leaves_no_outputs(tmp_path, monkeypatch, d4rl_file, make_d4rl, hopper_episodes, minari_dataset,
                                     case, error, message):
    other = make_d4rl(hopper_episodes, "other.hdf5")
    expert, subs, options = f"d4rl:{d4rl_file}", [f"d4rl:{other}"], {}
    if case == "too_many":
        options["n_trajectories"] = 99
    elif case == "nan_in_suboptimal":
        corrupt_nan(other)
    elif case == "unknown_minari":
        subs = [f"minari:{minari_dataset}", "minari:nope/nothing-v0"]
    else:
        expert = "http://x.hdf5"
    set_params(tmp_path, expert, subs, **options)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=message):
        runpy.run_path(str(STAGE), run_name="ingest")["main"]()
    assert leftovers(tmp_path) == []


def copy_repo(dest: Path) -> None:
    """The repo's tracked and not-ignored files (what a fresh clone plus this work tree would have)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if name.startswith((".dvc/", "data/")) or not src.is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / name)


def test_dvc_repro_ingest_end_to_end(tmp_path, d4rl_file, minari_dataset, minari_root):
    repo = tmp_path / "repo"
    copy_repo(repo)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(repo), "MINARI_DATASETS_PATH": str(minari_root),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    run = lambda *cmd: subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    dvc = [sys.executable, "-m", "dvc"]
    assert run("git", "init", "-q").returncode == 0
    assert run(*dvc, "init", "-q").returncode == 0

    set_params(repo, f"d4rl:{d4rl_file}", [f"minari:{minari_dataset}", f"d4rl:{d4rl_file}"], n_trajectories=3,
               selection="random")
    done = run(*dvc, "repro", "ingest")
    assert done.returncode == 0, done.stdout + done.stderr
    assert leftovers(repo) == ["expert.h5", "suboptimal.h5", "summary.json"]
    summary = json.loads((repo / "data/ingested/summary.json").read_text())
    full = read_d4rl(d4rl_file)
    assert summary["expert"]["episodes"] == 3 and summary["suboptimal"]["episodes"] == 2 * full.n_episodes
    assert summary["expert"]["source"] == f"d4rl:{d4rl_file}" and len(summary["expert"]["content_hash"]) == 64
    expert = EpisodeDataset.load(repo / "data/ingested/expert.h5")
    assert expert.meta["selected_episodes"] == summary["expert"]["selected_episodes"]
    assert "ingest" in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    status = run(*dvc, "status", "ingest")
    assert status.returncode == 0 and "changed" not in status.stdout, status.stdout

    set_params(repo, f"d4rl:{d4rl_file}", [f"minari:{minari_dataset}"], n_trajectories=99)
    failed = run(*dvc, "repro", "ingest")
    assert failed.returncode != 0
    assert "error: params.yaml: 'data.expert.n_trajectories' is 99 but" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert leftovers(repo) == []
