"""Stage evaluate: roll out every policy in the real environment and score it.

Policies: `bc` (data/bc/baseline.pt, plain BC), `bc-<seed>` (data/bc/baselines/, the extra plain BC
seeds when `bc.baseline_seeds` > 1; the `bc` aggregate covers them all), `csil_bc` (data/bc/policy.pt,
CSIL's HetStat BC) and `<algo>-<seed>` for each algo x seed in params (data/improve/<algo>-<seed>/policy.pt).
Writes data/evaluate/<name>/metrics.json (per-episode returns), data/evaluate/summary.json (rows,
aggregates, gap closed, ablations, protocol) and data/evaluate/scores.json (IQMs, gap closed and
normalised means: what runs compare). Episodes are reset from the reported seed range, disjoint from
the tuning seeds improve's monitoring roll-outs use (pipeline/evaluation.py REPORT_SEED_BASE, TUNING_SEED_BASE).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import h5py

from pipeline.bc import baseline_seeds
from pipeline.config import MAX_EVAL_EPISODES, Params, load_params
from pipeline.evaluation import (compared_scores, dataset_reference, evaluate_policy, reference_scores, report_seed,
                                 score_row, seed_span, summarize, tuning_seed)
from pipeline.errors import ArtefactError
from pipeline.policies import load_policy
from pipeline.stage import run_stage
from pipeline.utils import atomic_json, progress, resolve_device

OUT = Path("data/evaluate")
INGESTED = Path("data/ingested")
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

    seed = report_seed(params.seed)
    rows: dict[str, dict] = {}
    for name, path in progress(paths.items(), desc="evaluate", total=len(paths), unit="policy"):
        start = time.time()
        result = evaluate_policy(load_policy(path, device), params.env.id, cfg.episodes, seed, cfg.n_envs, device)
        rows[name] = score_row(result, ref)
        log.info("%-12s return %8.1f +- %6.1f  normalised %6.1f  (%.0fs)", name, rows[name]["return_mean"],
                 rows[name]["return_std"], rows[name]["normalized_mean"], time.time() - start)

    protocol = {"report_seeds": seed_span(seed, cfg.episodes),
                "tuning_seeds": seed_span(tuning_seed(), MAX_EVAL_EPISODES),   # improve.eval_episodes of them
                "tuning_seeds_used_by": "stage improve's monitoring roll-outs (curve.tsv eval_return)"}
    summary = {"env_id": params.env.id, **summarize(rows, policy_groups(params), ref,
                                                     float(ingested["expert"]["return_mean"]), cfg.bootstrap,
                                                     params.seed, protocol)}

    OUT.mkdir(parents=True, exist_ok=True)
    for stale in OUT.iterdir():
        if stale.is_dir() and stale.name not in rows:
            shutil.rmtree(stale)
    for name, row in rows.items():
        atomic_json(row, OUT / name / "metrics.json")
    atomic_json(summary, OUT / "summary.json")
    atomic_json(compared_scores(summary), OUT / "scores.json")
    for group, agg in summary["aggregates"].items():
        interval = ("one run: no interval" if agg["normalized_iqm_ci95_low"] is None else
                    f"[{agg['normalized_iqm_ci95_low']:.1f}, {agg['normalized_iqm_ci95_high']:.1f}]")
        gap = summary["gap_closed"].get(group)
        log.info("%-12s IQM %6.1f %s over %d run(s)%s", group, agg["normalized_iqm"], interval, agg["runs"],
                 f", gap closed {100 * gap:.0f} %" if gap is not None else "")
    for name, ab in summary["ablations"].items():
        log.info("ablation %s: %s - %s = %+.1f", name, ab["with"], ab["without"], ab["iqm_difference"])


if __name__ == "__main__":
    run_stage(main, __doc__)
