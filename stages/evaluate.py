"""Stage evaluate: roll out every policy in the real environment and score it.

Policies: `bc` (data/bc/baseline.pt, plain BC), `bc-<seed>` (data/bc/baselines/, the extra plain BC
seeds when `bc.baseline_seeds` > 1; the `bc` aggregate covers them all), `csil_bc` (data/bc/policy.pt,
CSIL's HetStat BC) and `<algo>-<seed>` for each algo x seed in params (data/improve/<algo>-<seed>/policy.pt).
Writes data/evaluate/<name>/metrics.json and data/evaluate/summary.json.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import h5py

from pipeline.bc import baseline_seeds
from pipeline.config import Params, load_params
from pipeline.evaluation import dataset_reference, evaluate_policy, reference_scores, score_row, summarize
from pipeline.policies import load_policy
from pipeline.stage import ArtefactError, run_stage
from pipeline.utils import atomic_json, resolve_device

OUT = Path("data/evaluate")
INGESTED = Path("data/ingested")
# Evaluation start states are disjoint from the seeds the embedded datasets were collected with.
EVAL_SEED_BASE = 1_000_000
log = logging.getLogger("evaluate")


def extra_baseline_seeds(params: Params) -> list[int]:
    """Seeds of the plain BC baselines beyond the first (`bc.baseline_seeds` > 1): rows `bc-<seed>`."""
    return baseline_seeds(params.seed, params.bc.baseline_seeds)[1:]


def policy_paths(params: Params) -> dict[str, Path]:
    """Name -> checkpoint for every policy the current params ask for (stale run dirs are ignored)."""
    paths = {"bc": Path("data/bc/baseline.pt")}
    for seed in extra_baseline_seeds(params):
        paths[f"bc-{seed}"] = Path(f"data/bc/baselines/baseline-{seed}.pt")
    paths["csil_bc"] = Path("data/bc/policy.pt")
    for algo in params.improve.algos:
        for seed in params.improve.seeds:
            paths[f"{algo}-{seed}"] = Path(f"data/improve/{algo}-{seed}/policy.pt")
    return paths


def policy_groups(params: Params) -> dict[str, list[str]]:
    groups = {"bc": ["bc"] + [f"bc-{seed}" for seed in extra_baseline_seeds(params)], "csil_bc": ["csil_bc"]}
    for algo in params.improve.algos:
        groups[algo] = [f"{algo}-{seed}" for seed in params.improve.seeds]
    return groups


def read_ingested() -> tuple[dict, dict]:
    """data/ingested/summary.json and the expert dataset's metadata (for reference scores)."""
    path = INGESTED / "summary.json"
    if not path.exists():
        raise ArtefactError(f"{path}: ingest summary not found; run `dvc repro ingest`")
    summary = json.loads(path.read_text())
    if not isinstance(summary.get("expert"), dict) or "return_mean" not in summary["expert"]:
        raise ArtefactError(f"{path}: no expert.return_mean; re-run `dvc repro ingest`")
    meta = {}
    expert_h5 = INGESTED / "expert.h5"
    if expert_h5.exists():
        with h5py.File(expert_h5, "r") as f:
            meta = json.loads(f.attrs.get("meta", "{}"))
    return summary, meta


def main() -> None:
    params = load_params()
    cfg = params.evaluate
    device = resolve_device(params.device)
    paths = policy_paths(params)
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise ArtefactError(f"policy checkpoints not found: {', '.join(missing)}; run `dvc repro` "
                            f"(or `dvc repro bc` / `dvc repro improve`) first")
    ingested, expert_meta = read_ingested()
    ref = reference_scores(params.env.id, params.env.ref_scores, dataset_reference(ingested, expert_meta))
    log.info("normalising with %s: random %.3f, expert %.3f", ref.source, ref.low, ref.high)

    seed = EVAL_SEED_BASE * (params.seed + 1)
    rows: dict[str, dict] = {}
    for name, path in paths.items():
        start = time.time()
        result = evaluate_policy(load_policy(path, device), params.env.id, cfg.episodes, seed, cfg.n_envs, device)
        rows[name] = score_row(result, ref)
        log.info("%-12s return %8.1f +- %6.1f  normalised %6.1f  (%.0fs)", name, rows[name]["return_mean"],
                 rows[name]["return_std"], rows[name]["normalized_mean"], time.time() - start)

    summary = {"env_id": params.env.id, **summarize(rows, policy_groups(params), ref,
                                                     float(ingested["expert"]["return_mean"]), cfg.bootstrap,
                                                     params.seed)}

    OUT.mkdir(parents=True, exist_ok=True)
    for stale in OUT.iterdir():
        if stale.is_dir() and stale.name not in rows:
            shutil.rmtree(stale)
    for name, row in rows.items():
        atomic_json(row, OUT / name / "metrics.json")
    atomic_json(summary, OUT / "summary.json")
    for group, agg in summary["aggregates"].items():
        log.info("%-8s IQM %.1f [%.1f, %.1f] over %d run(s)", group, agg["normalized_iqm"],
                 agg["normalized_iqm_ci95_low"], agg["normalized_iqm_ci95_high"], agg["runs"])


if __name__ == "__main__":
    run_stage(main)
