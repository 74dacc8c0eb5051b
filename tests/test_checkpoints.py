"""Loading upstream checkpoints: a missing, empty, truncated or foreign file is an ArtefactError that
names the file and what was expected, never a bare torch / pickle traceback."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from pipeline.dynamics import EnsembleDynamics, load_dynamics, save_dynamics
from pipeline.errors import ArtefactError
from pipeline.policies import TanhGaussianMLP, load_policy, save_policy

SMALL_DYNAMICS = dict(n_members=3, n_elites=2, hidden=16, n_layers=2, weight_decay=(1e-5, 1e-5, 1e-5))


def bad_checkpoints(tmp_path: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    files = {"empty": b"", "truncated": data[: len(data) // 2], "text": b"not a checkpoint at all\n"}
    out = {name: tmp_path / f"{name}.pt" for name in files}
    for name, content in files.items():
        out[name].write_bytes(content)
    torch.save([1, 2, 3], out.setdefault("a_list", tmp_path / "a_list.pt"))
    torch.save({"weights": torch.zeros(3)}, out.setdefault("other_dict", tmp_path / "other_dict.pt"))
    return out


@pytest.mark.parametrize("case,message", [
    ("empty", "empty file"),
    ("truncated", "truncated or not a torch checkpoint"),
    ("text", "truncated or not a torch checkpoint"),
    ("a_list", r"not a policy checkpoint \(found list\)"),
    ("other_dict", r"not a policy checkpoint \(found \['weights'\]\)"),
    ("dynamics", r"not a policy checkpoint"),
    ("mismatch", "checkpoint does not match its policy config"),
])
def test_load_policy_refuses_bad_checkpoints(tmp_path, case, message):
    good = tmp_path / "policy.pt"
    save_policy(TanhGaussianMLP(4, 2, (8, 8)), good)
    files = bad_checkpoints(tmp_path, good)
    files["dynamics"] = tmp_path / "model.pt"
    save_dynamics(EnsembleDynamics(4, 2, **SMALL_DYNAMICS), files["dynamics"])
    ckpt = torch.load(good, weights_only=True)
    ckpt["config"]["hidden"] = [16, 16]
    torch.save(ckpt, files.setdefault("mismatch", tmp_path / "mismatch.pt"))

    with pytest.raises(ArtefactError) as info:
        load_policy(files[case])
    text = str(info.value)
    assert text.startswith(f"{files[case]}: ") and "\n" not in text
    assert re.search(message, text), text
    assert "expected a policy checkpoint written by save_policy" in text and "dvc repro" in text
    assert isinstance(load_policy(good), TanhGaussianMLP)


def test_load_policy_missing_file(tmp_path):
    with pytest.raises(ArtefactError, match=r"nothing\.pt: policy checkpoint not found; run the stage"):
        load_policy(tmp_path / "nothing.pt")


@pytest.mark.parametrize("case", ["empty", "truncated", "text", "a_list", "other_dict"])
def test_load_dynamics_refuses_bad_checkpoints(tmp_path, case):
    good = tmp_path / "model.pt"
    save_dynamics(EnsembleDynamics(4, 2, **SMALL_DYNAMICS), good)
    path = bad_checkpoints(tmp_path, good)[case]
    with pytest.raises(ArtefactError) as info:
        load_dynamics(path)
    text = str(info.value)
    assert re.match(rf"{re.escape(str(path))}: (cannot load the|not a) dynamics checkpoint", text), text
    assert "dvc repro dynamics" in text and "\n" not in text
