"""The report renders offline from synthetic artefacts: every image present, no http(s) reference."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.datasets import EpisodeDataset
from pipeline.evaluation import Reference, score_row, summarize
from pipeline.report import build_report
from pipeline.stage import ArtefactError

PARAMS = "seed: 0\nenv:\n  id: Hopper-v5\nimprove:\n  algos: [awr, rambo]\n  seeds: [0, 1]\n"
RUNS = ["awr-0", "awr-1", "rambo-0", "rambo-1"]
EXPECTED_IMAGES = {"scores.png", "data_returns.png", "bc_curve.png", "reward_hist.png", "dynamics.png",
                   *(f"improve_{r}.png" for r in RUNS)}


def _dataset(rng: np.random.Generator, episodes: int, scale: float) -> EpisodeDataset:
    lengths = rng.integers(5, 20, size=episodes)
    n = int(lengths.sum())
    ends = np.cumsum(lengths) - 1
    timeouts = np.zeros(n, bool)
    timeouts[ends] = True
    return EpisodeDataset(rng.normal(size=(n, 11)).astype(np.float32),
                          rng.uniform(-1, 1, size=(n, 3)).astype(np.float32),
                          (scale * rng.uniform(0.5, 1.5, size=n)).astype(np.float32),
                          rng.normal(size=(n, 11)).astype(np.float32), np.zeros(n, bool), timeouts,
                          np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), meta={"env_id": "Hopper-v5"})


def write_artefacts(root: Path, with_optional: bool = True) -> Path:
    """A data/ tree in the formats the stages write; returns the data dir."""
    data = root / "data"
    rng = np.random.default_rng(0)
    ref = Reference(-20.272305, 3234.3, "D4RL reference returns (hopper)")
    rows = {}
    for i, name in enumerate(["bc", "csil_bc", *RUNS]):
        returns = list(rng.normal(1000 + 300 * i, 100, size=4))
        rows[name] = score_row({"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
                                "episodes": 4, "episode_returns": returns, "episode_lengths": [1000] * 4,
                                "episode_seeds": [1_000_000, 1_000_003]}, ref)
    groups = {"bc": ["bc"], "csil_bc": ["csil_bc"], "awr": ["awr-0", "awr-1"], "rambo": ["rambo-0", "rambo-1"]}
    summary = {"env_id": "Hopper-v5", **summarize(rows, groups, ref, 3100.0, n_bootstrap=100)}
    (data / "evaluate").mkdir(parents=True)
    (data / "evaluate" / "summary.json").write_text(json.dumps(summary))
    (root / "params.yaml").write_text(PARAMS)
    if not with_optional:
        return data

    expert, suboptimal = _dataset(rng, 5, 3.0), _dataset(rng, 40, 1.0)
    expert.save(data / "ingested" / "expert.h5")
    suboptimal.save(data / "ingested" / "suboptimal.h5")
    (data / "ingested" / "summary.json").write_text(json.dumps(
        {"expert": {**expert.summary(), "source": "embedded:hopper/expert"},
         "suboptimal": {**suboptimal.summary(), "source": "embedded:hopper/mixed"}}))
    (data / "bc").mkdir()
    (data / "bc" / "metrics.json").write_text(json.dumps(
        {"val_mse": 0.05, "val_nll": -1.2, "steps": 300, "stage1": {"val_mse": 0.08, "val_nll": -0.9}}))
    steps = np.arange(0, 300, 50)
    pd.DataFrame({"step": steps, "val_mse": 1 / (1 + steps), "val_nll": -np.log1p(steps),
                  "phase": ["stage1"] * 3 + ["stage2"] * 3}).to_csv(data / "bc" / "curve.tsv", sep="\t", index=False)
    pd.DataFrame({"step": steps, "val_mse": 2 / (1 + steps), "val_nll": -0.5 * np.log1p(steps)}).to_csv(
        data / "bc" / "baseline_curve.tsv", sep="\t", index=False)
    (data / "reward").mkdir()
    (data / "reward" / "metrics.json").write_text(json.dumps({"expert_mean": 1.5, "suboptimal_mean": -2.0,
                                                              "auc": 0.93}))
    centers = np.linspace(-5, 3, 30)
    pd.DataFrame({"reward": centers, "expert": np.exp(-(centers - 1.5) ** 2),
                  "suboptimal": np.exp(-(centers + 2) ** 2 / 2)}).to_csv(data / "reward" / "histogram.csv", index=False)
    (data / "dynamics").mkdir()
    (data / "dynamics" / "metrics.json").write_text(json.dumps(
        {"holdout_mse": 0.01, "holdout_mse_members": [0.01, 0.012, 0.009, 0.02, 0.011], "elites": [0, 2, 4],
         "multistep": {"horizon": 5, "mse": 0.15, "baseline_mse": 1.2, "mse_per_step": [0.01, 0.03, 0.06, 0.1, 0.15],
                       "baseline_mse_per_step": [0.1, 0.3, 0.6, 0.9, 1.2]}}))
    for run in RUNS:
        (data / "improve" / run).mkdir(parents=True)
        pd.DataFrame({"step": np.arange(0, 5000, 1000), "critic_loss": rng.uniform(size=5),
                      "actor_loss": rng.uniform(size=5), "reward_mean": rng.uniform(size=5)}).to_csv(
            data / "improve" / run / "curve.tsv", sep="\t", index=False)
    return data


def render(tmp_path: Path, data: Path) -> tuple[Path, str]:
    out = data / "report"
    index = build_report(data, out, tmp_path / "params.yaml", tmp_path)
    return out, index.read_text()


def assert_offline(out: Path, html: str) -> None:
    assert "<script" not in html.lower()
    for path in out.iterdir():
        assert not re.search(rb"https?://", path.read_bytes(), re.IGNORECASE), f"{path.name} has an http(s) reference"
    for src in re.findall(r'src="([^"]+)"', html):
        assert (out / src).is_file(), f"image {src} referenced but not written"


def test_report_renders_every_plot_offline(tmp_path):
    out, html = render(tmp_path, write_artefacts(tmp_path))
    assert_offline(out, html)
    assert set(re.findall(r'src="([^"]+)"', html)) == EXPECTED_IMAGES
    assert 'class="missing"' not in html, re.findall(r'<p class="missing">(.*?)</p>', html)
    assert "embedded:hopper/mixed" in html and "0.93" in html            # data sources, reward AUC
    assert "awr-1" in html and "expert data" in html and "IQM" in html    # scores table and aggregates
    assert "improve:\n  algos: [awr, rambo]" in html                     # params.yaml verbatim
    assert "not a git checkout" in html and "no dvc.lock yet" in html    # provenance degrades clearly
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores["name"]) == ["bc", "csil_bc", *RUNS, "expert_data"]


def test_report_notes_missing_optional_artefacts(tmp_path):
    out, html = render(tmp_path, write_artefacts(tmp_path, with_optional=False))
    assert_offline(out, html)
    assert "scores.png" in html
    for missing in ["ingested/expert.h5", "bc/metrics.json", "reward/metrics.json", "dynamics/metrics.json",
                    "improve/awr-0/curve.tsv"]:
        assert missing in html


def test_report_tolerates_partial_and_odd_formats(tmp_path):
    data = write_artefacts(tmp_path)
    (data / "dynamics" / "metrics.json").write_text(json.dumps({"holdout_mse": 0.02, "elites": 5}))
    (data / "bc" / "curve.tsv").write_text("step\tloss\n0\t1.0\n")
    (data / "improve" / "awr-1" / "curve.tsv").write_text("nothing useful\n")
    out, html = render(tmp_path, data)
    assert_offline(out, html)
    assert "multistep.mse" in html and "not available" in html
    assert "could not render this section" in html            # bc curve without val_* columns
    assert "could not plot" in html and "improve_awr-0.png" in html


def test_report_requires_the_evaluation_summary(tmp_path):
    with pytest.raises(ArtefactError, match="evaluate/summary.json"):
        build_report(tmp_path / "data", tmp_path / "data" / "report", tmp_path / "params.yaml", tmp_path)
