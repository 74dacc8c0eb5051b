"""Shared helpers: byte-identical checkpoints, staging folders that never outlive a killed writer, quiet bars."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.datasets import EpisodeDataset
from pipeline.utils import atomic_torch_save, progress, replace_dir, staging_dir


def test_atomic_torch_save_gives_the_same_bytes_wherever_it_writes(tmp_path: Path) -> None:
    obj = {"w": torch.arange(6.0).reshape(2, 3), "config": {"hidden": [8]}}
    atomic_torch_save(obj, tmp_path / "a.pt")
    atomic_torch_save(obj, tmp_path / "sub" / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "sub" / "b.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["w"], obj["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "sub"]          # no temporary file left


def test_canonical_dataset_file_has_no_timestamps(tmp_path: Path) -> None:
    ds = EpisodeDataset(np.zeros((3, 2), np.float32), np.zeros((3, 1), np.float32), np.zeros(3, np.float32),
                        np.zeros((3, 2), np.float32), np.array([False, False, True]), np.zeros(3, bool),
                        episode_starts=np.array([0, 3]), meta={"source": "test"})
    ds.save(tmp_path / "a.h5")
    time.sleep(1.1)                                   # hdf5 object timestamps have one-second resolution
    ds.save(tmp_path / "b.h5")
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


def test_staging_dir_is_removed_and_clears_dead_writers(tmp_path: Path) -> None:
    dead = tmp_path / ".staging-999999999-x"             # no such process: a killed writer's leftovers
    (dead / "part").mkdir(parents=True)
    (dead / ".expert.h5.1.tmp").write_bytes(b"partial")
    alive = tmp_path / f".staging-{os.getppid()}-y"     # a running process's staging is not touched
    alive.mkdir()
    with pytest.raises(RuntimeError):
        with staging_dir(tmp_path) as staging:
            assert staging.name.startswith(f".staging-{os.getpid()}-")
            (staging / "file").write_text("x")
            raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name]


def test_replace_dir_swaps_a_finished_folder_in_and_leaves_nothing_aside(tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "a").write_text("new")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old-only").write_text("old")
    replace_dir(tmp_path / "new", tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a"] and (tmp_path / "out" / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]                  # no source, no renamed-aside copy
    (tmp_path / "again").mkdir()
    replace_dir(tmp_path / "again", tmp_path / "fresh" / "out")                   # no previous folder, no parent yet
    assert (tmp_path / "fresh" / "out").is_dir() and not (tmp_path / "again").exists()


def test_progress_updates_at_most_once_a_minute_off_a_terminal(capsys: pytest.CaptureFixture) -> None:
    bar = progress(range(500), desc="x", mininterval=1.0)
    assert bar.mininterval >= 60.0                       # pytest's captured stderr is not a terminal
    for i in bar:
        bar.set_postfix(loss=i)                          # would force a refresh each time on a terminal
    assert capsys.readouterr().err.count("\r") <= 2       # the first and the last state only
