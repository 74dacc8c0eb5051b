"""The report renders offline from synthetic artefacts: every image present, no http(s) reference."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.datasets import EpisodeDataset
from pipeline.errors import ArtefactError
from pipeline.evaluation import Reference, score_row, summarize
from pipeline.report import build_report

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
    (data / "bc" / "details.json").write_text(json.dumps(
        {"val_mse": 0.05, "val_nll": -1.2, "steps": 300, "stage1": {"val_mse": 0.08, "val_nll": -0.9}}))
    steps = np.arange(0, 300, 50)
    pd.DataFrame({"step": steps, "val_mse": 1 / (1 + steps), "val_nll": -np.log1p(steps),
                  "phase": ["stage1"] * 3 + ["stage2"] * 3}).to_csv(data / "bc" / "curve.tsv", sep="\t", index=False)
    pd.DataFrame({"step": steps, "val_mse": 2 / (1 + steps), "val_nll": -0.5 * np.log1p(steps)}).to_csv(
        data / "bc" / "baseline_curve.tsv", sep="\t", index=False)
    (data / "reward").mkdir()
    (data / "reward" / "details.json").write_text(json.dumps({"expert_mean": 1.5, "suboptimal_mean": -2.0,
                                                              "auc": 0.93}))
    centers = np.linspace(-5, 3, 30)
    pd.DataFrame({"reward": centers, "expert": np.exp(-(centers - 1.5) ** 2),
                  "suboptimal": np.exp(-(centers + 2) ** 2 / 2)}).to_csv(data / "reward" / "histogram.csv", index=False)
    (data / "dynamics").mkdir()
    (data / "dynamics" / "details.json").write_text(json.dumps(
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
    assert "one run: no interval" in html                                 # bc and csil_bc have one run each here
    assert "improve:\n  algos: [awr, rambo]" in html                     # params.yaml verbatim
    assert "not a git checkout" in html and "no dvc.lock yet" in html    # provenance degrades clearly
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores["name"]) == ["bc", "csil_bc", *RUNS, "expert_data"]
    curves = pd.read_csv(out / "learning_curves.csv")                   # dvc plots: one line per run
    assert list(curves.columns) == ["run", "step", "eval_return", "demo_mse"] and set(curves["run"]) == set(RUNS)


def _protocol_summary(root: Path, bc_means: list[float]) -> Path:
    """A data/evaluate/summary.json with known per-run scores (reference 0..100: normalised = return)."""
    ref = Reference(0.0, 100.0, "test")
    means = {**{("bc" if i == 0 else f"bc-{i}"): m for i, m in enumerate(bc_means)}, "csil_bc": 25.0,
             "awr-0": 50.0, "awr-1": 60.0, "awr-2": 70.0, "awr_uniform-0": 30.0, "awr_uniform-1": 40.0,
             "awr_uniform-2": 50.0}
    rows = {n: score_row({"return_mean": m, "return_std": 0.0, "episodes": 2, "episode_returns": [m, m],
                          "episode_lengths": [10, 10], "episode_seeds": [1_000_000, 1_000_001]}, ref)
            for n, m in means.items()}
    groups = {"bc": [n for n in means if n.startswith("bc")], "csil_bc": ["csil_bc"],
              "awr": ["awr-0", "awr-1", "awr-2"], "awr_uniform": ["awr_uniform-0", "awr_uniform-1", "awr_uniform-2"]}
    summary = {"env_id": "Hopper-v5", **summarize(rows, groups, ref, 80.0, n_bootstrap=100,
                                                  protocol={"report_seeds": [1_000_000, 1_000_001],
                                                            "tuning_seeds": [12_345, 112_344]})}
    data = root / "data"
    (data / "evaluate").mkdir(parents=True)
    (data / "evaluate" / "summary.json").write_text(json.dumps(summary))
    (root / "params.yaml").write_text(PARAMS)
    return data


def _group_row(html: str, group: str) -> str:
    """The cells after the group's name in the aggregates table (the one headed 'IQM [95 % CI over runs]')."""
    table = next(t for t in re.findall(r"<table>.*?</table>", html) if "IQM [95 % CI over runs]" in t)
    return dict(re.findall(r"<tr><td>([^<]*)</td>(.*?)</tr>", table))[group]


def test_report_shows_intervals_over_runs_and_one_run_groups_without_one(tmp_path):
    out, html = render(tmp_path, _protocol_summary(tmp_path, [10.0, 20.0, 30.0]))
    assert_offline(out, html)
    assert "IQM [95 % CI over runs]" in html and "per-run normalised means" in html
    csil = _group_row(html, "csil_bc")
    assert "one run: no interval" in csil and "csil_bc 25" in csil          # one run: the note, not an interval
    awr = _group_row(html, "awr")
    assert re.search(r"<td>60 \[[0-9.]+, [0-9.]+\]</td>", awr), awr         # IQM [low, high]
    assert "awr-0 50, awr-1 60, awr-2 70" in awr                          # each run's score
    assert "one run: no interval" not in awr and "one run: no interval" not in _group_row(html, "bc")
    summary = json.loads((tmp_path / "data" / "evaluate" / "summary.json").read_text())
    assert summary["aggregates"]["csil_bc"]["normalized_iqm_ci95_low"] is None
    scores = pd.read_csv(out / "scores.csv")
    assert {"group", "group_iqm", "group_ci95_low", "group_ci95_high"} <= set(scores.columns)
    row = scores.set_index("name").loc["csil_bc"]
    assert row["group"] == "csil_bc" and row["group_iqm"] == 25.0 and pd.isna(row["group_ci95_low"])
    assert scores.set_index("name").loc["awr-1", "group_iqm"] == 60.0


def test_report_shows_gap_closed_and_ablations(tmp_path):
    """IQM bc 20, awr 60, awr_uniform 40, csil_bc 25, demos 80: gaps 40/60 and 20/60; ablations +20 and +5."""
    _, html = render(tmp_path, _protocol_summary(tmp_path, [10.0, 20.0, 30.0]))
    assert "demonstrations' own normalised score 80" in html
    assert "awr 67 %; awr_uniform 33 %" in html
    assert "<td>67 %</td>" in _group_row(html, "awr") and "<td>33 %</td>" in _group_row(html, "awr_uniform")
    assert "awr - awr_uniform = +20.0 (what the critic adds" in html
    assert "csil_bc - bc = +5.0 (what the HetStat policy adds" in html
    assert "Fewer than 3 runs" in html and "csil_bc" in html
    assert "[1000000, 1000001]" in html and "[12345, 112344]" in html      # the two seed ranges, disjoint

    shutil.rmtree(tmp_path / "data")
    _, html = render(tmp_path, _protocol_summary(tmp_path, [85.0, 90.0, 95.0]))   # BC above the demos
    assert "no gap: BC at or above the demos" in html


def test_report_notes_missing_optional_artefacts(tmp_path):
    out, html = render(tmp_path, write_artefacts(tmp_path, with_optional=False))
    assert_offline(out, html)
    assert "scores.png" in html
    for missing in ["ingested/expert.h5", "bc/details.json", "reward/details.json", "dynamics/details.json",
                    "improve/awr-0/curve.tsv"]:
        assert missing in html


def test_report_tolerates_partial_and_odd_formats(tmp_path):
    data = write_artefacts(tmp_path)
    (data / "dynamics" / "details.json").write_text(json.dumps({"holdout_mse": 0.02, "elites": 5}))
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
