"""The offline HTML report: one page, PNG plots beside it, no network needed to view it.

`build_report` reads the stages' artefacts under ``data_dir`` and writes ``out_dir``/index.html,
the PNGs it links, scores.csv and learning_curves.csv (for `dvc plots show`). Only data/evaluate/summary.json is
required; any other missing or unreadable artefact becomes a visible note in its section.
"""
from __future__ import annotations

import hashlib
import html
import json
import logging
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from pipeline.datasets import EpisodeDataset
from pipeline.errors import ArtefactError
from pipeline.utils import replace_dir, staging_dir

log = logging.getLogger("report")

FIXED_GROUPS = {"bc": "BC baseline (plain MLP)", "csil_bc": "CSIL BC (HetStat)"}
COLORS = {"expert": "tab:orange", "suboptimal": "tab:blue"}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.missing { color: #a33; background: #fff3f3; border-left: 4px solid #d66; padding: 0.4em 0.8em; }
.meta { color: #555; font-size: 0.92em; } nav a { margin-right: 1em; }
"""


class Missing(Exception):
    """An optional artefact is absent; its section shows a note instead of failing."""


# -- small helpers ---------------------------------------------------------------------------
def _need(path: Path) -> Path:
    if not path.exists():
        raise Missing(f"missing: {path} (run `dvc repro` to produce it)")
    return path


def _json(path: Path) -> dict:
    return json.loads(_need(path).read_text())


def _tsv(path: Path, sep: str = "\t") -> pd.DataFrame:
    return pd.read_csv(_need(path), sep=sep)


def _e(x: object) -> str:
    return html.escape(str(x))


def _fmt(x: object, digits: int = 4) -> str:
    if isinstance(x, bool) or x is None:
        return _e(x)
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "nan" if not np.isfinite(x) else f"{x:.{digits}g}"
    if isinstance(x, (list, tuple)) and all(isinstance(v, (int, float)) for v in x):
        return "[" + ", ".join(_fmt(v, digits) for v in x) + "]"
    return _e(x)


def _note(text: str) -> str:
    return f'<p class="missing">{_e(text)}</p>'


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _kv_table(d: dict, keys: list[str] | None = None) -> str:
    flat = _flatten(d)
    keys = keys if keys is not None else [k for k, v in flat.items() if not isinstance(v, (list, dict))
                                          or len(v) <= 12]
    return _table(["metric", "value"], [[k, flat[k] if k in flat else "not available"] for k in keys])


class _Figures:
    """Writes PNGs into the report directory and returns their <img> tags."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def save(self, fig: Figure, name: str, alt: str) -> str:
        # metadata Software=None: matplotlib otherwise stamps its https URL into every PNG.
        fig.savefig(self.out_dir / name, dpi=110, bbox_inches="tight", metadata={"Software": None})
        return f'<img src="{_e(name)}" alt="{_e(alt)}">'


def _section(anchor: str, title: str, render: Callable[[], str]) -> str:
    try:
        body = render()
    except Missing as exc:
        body = _note(str(exc))
    except Exception as exc:  # an optional artefact in an unexpected format must not sink the report
        log.warning("report section %r could not be rendered", title, exc_info=True)
        body = _note(f"could not render this section: {type(exc).__name__}: {exc}")
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>\n{body}\n</section>'


# -- provenance ------------------------------------------------------------------------------
def _git_revision(repo_dir: Path) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_dir,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "not available (not a git checkout)"
    return commit + (" (with uncommitted changes)" if dirty else "")


def _dvc_revision(repo_dir: Path) -> tuple[str, str]:
    """(sha256 of the upstream stages' dvc.lock entries, md5 DVC recorded for data/evaluate).

    The report's own entry is left out: it is this page's hash, so hashing it would make every
    run's page (and so dvc.lock) differ from the last.
    """
    lock = repo_dir / "dvc.lock"
    if not lock.exists():
        return "not available (no dvc.lock yet)", "not available"
    text = lock.read_bytes()
    evaluate_md5 = "not available"
    try:
        stages = dict((yaml.safe_load(text) or {}).get("stages", {}))
        stages.pop("report", None)
        for out in stages.get("evaluate", {}).get("outs", []):
            if out.get("path") == "data/evaluate":
                evaluate_md5 = str(out.get("md5", "not available"))
    except (yaml.YAMLError, AttributeError, TypeError, ValueError):
        return "not available (unreadable dvc.lock)", evaluate_md5
    upstream = json.dumps(stages, sort_keys=True, default=str).encode()
    return hashlib.sha256(upstream).hexdigest()[:16], evaluate_md5


# -- sections --------------------------------------------------------------------------------
def _ordered_groups(summary: dict) -> list[str]:
    aggregates = summary.get("aggregates", {})
    return [g for g in FIXED_GROUPS if g in aggregates] + [g for g in aggregates if g not in FIXED_GROUPS]


NO_INTERVAL = "one run: no interval"


def _interval(a: dict) -> str:
    """'[low, high]' of a group's 95 % interval over runs, or the one-run note (no interval over episodes)."""
    lo, hi = a.get("normalized_iqm_ci95_low"), a.get("normalized_iqm_ci95_high")
    if a.get("runs", 0) < 2 or lo is None or hi is None:
        return NO_INTERVAL
    return f"[{_fmt(lo, 3)}, {_fmt(hi, 3)}]"


def _per_run(a: dict, policies: dict) -> dict:
    per_run = a.get("per_run")
    if isinstance(per_run, dict):
        return per_run
    return {p: policies[p]["normalized_mean"] for p in a.get("policies", []) if p in policies}


def _percent(x: object) -> str:
    return f"{100 * x:.0f} %" if isinstance(x, (int, float)) and np.isfinite(x) else "n/a"


def protocol_lines(summary: dict) -> list[str]:
    """The fair-protocol lines under the aggregates: demonstrations' score, gap closed, ablations, seeds."""
    aggregates, expert = summary.get("aggregates", {}), summary.get("expert_data", {})
    protocol = summary.get("protocol", {}) if isinstance(summary.get("protocol"), dict) else {}
    baseline = protocol.get("baseline", "bc")
    demo = protocol.get("demo_score", expert.get("normalized"))
    lines = []
    gaps = summary.get("gap_closed")
    if isinstance(gaps, dict) and gaps:
        bc_iqm = aggregates.get(baseline, {}).get("normalized_iqm")
        lines.append(f"<p><b>Gap closed</b> = (IQM<sub>algo</sub> - IQM<sub>{_e(baseline)}</sub>) / (demo score - "
                     f"IQM<sub>{_e(baseline)}</sub>), with the demonstrations' own normalised score {_fmt(demo, 3)} "
                     f"(mean normalised return of the selected expert episodes) and IQM<sub>{_e(baseline)}</sub> = "
                     f"{_fmt(bc_iqm, 3)}: "
                     + "; ".join(f"{_e(g)} {_percent(v) if v is not None else 'n/a (no gap: BC at or above the demos)'}"
                                 for g, v in gaps.items()) + ".</p>")
    ablations = summary.get("ablations")
    if isinstance(ablations, dict) and ablations:
        lines.append("<p><b>Ablations</b> (differences of IQMs): "
                     + "; ".join(f"{_e(a.get('with'))} - {_e(a.get('without'))} = {a.get('iqm_difference', 0):+.1f} "
                                 f"({_e(a.get('what', name))})" for name, a in ablations.items()) + ".</p>")
    few = protocol.get("below_min_runs")
    if few:
        lines.append(f'<p class="meta">Fewer than {_e(protocol.get("min_quoted_runs", 3))} runs (not a quotable score '
                     f'by the protocol): {_e(", ".join(few))}.</p>')
    seed_notes = (("report_seeds", "reported scores: episode reset seeds"),
                  ("tuning_seeds", "tuning / monitoring roll-outs (improve curve.tsv): within"))
    seeds = [f"{what} {_fmt(protocol[key])}" for key, what in seed_notes if key in protocol]
    if seeds:
        lines.append('<p class="meta">Evaluation seeds, disjoint by construction: ' + "; ".join(seeds) + ".</p>")
    return lines


def scores_section(summary: dict, figs: _Figures, out_dir: Path) -> str:
    policies, aggregates = summary["policies"], summary.get("aggregates", {})
    expert = summary.get("expert_data", {})
    ref = summary.get("reference", {})
    group_of = {p: g for g, a in aggregates.items() for p in a.get("policies", [])}
    what = {name: FIXED_GROUPS.get(name) or (f"{FIXED_GROUPS.get(group_of[name], group_of[name])}, seed "
                                             f"{name.removeprefix(group_of[name] + '-')}" if name in group_of else name)
            for name in policies}
    rows = [[name, what[name], r.get("return_mean"), r.get("return_std"),
             r.get("normalized_mean"), r.get("normalized_std"), r.get("episodes")] for name, r in policies.items()]
    if expert:
        rows.append(["expert data", "mean return of the expert demonstrations", expert.get("return_mean"), "",
                     expert.get("normalized"), "", ""])
    parts = [
        f'<p class="meta">Environment {_e(summary.get("env_id", "?"))}; normalised score = 100 (R - R<sub>random</sub>)'
        f' / (R<sub>expert</sub> - R<sub>random</sub>) with R<sub>random</sub> = {_fmt(ref.get("random"))}, '
        f'R<sub>expert</sub> = {_fmt(ref.get("expert"))} ({_e(ref.get("source", "reference not recorded"))}). '
        f'Deterministic actions; episode seeds {_fmt(summary.get("episode_seeds", "?"))} for every policy.</p>',
        _table(["policy", "what", "return mean", "return std", "normalised mean", "normalised std", "episodes"], rows)]
    groups = _ordered_groups(summary)
    gaps = summary.get("gap_closed") if isinstance(summary.get("gap_closed"), dict) else {}
    if groups:
        parts.append("<p>Per group: inter-quartile mean (IQM) of the runs' mean normalised scores, its 95 % interval "
                     "by a bootstrap over runs (seeds, not one run's episodes; a group with one run has none), "
                     "and each run's score.</p>")
        parts.append(_table(["group", "runs", "IQM [95 % CI over runs]", "per-run normalised means", "gap closed"],
                            [[g, aggregates[g].get("runs", len(aggregates[g].get("policies", []))),
                              f"{_fmt(aggregates[g].get('normalized_iqm'), 3)} {_interval(aggregates[g])}",
                              ", ".join(f"{n} {_fmt(v, 3)}" for n, v in _per_run(aggregates[g], policies).items()),
                              _percent(gaps[g]) if gaps.get(g) is not None else ("n/a" if g in gaps else "")]
                             for g in groups]))
        parts.extend(protocol_lines(summary))
    parts.append(figs.save(_scores_figure(summary), "scores.png", "normalised scores"))
    member_of = {p: (g, a) for g, a in aggregates.items() for p in a.get("policies", [])}

    def group_columns(name: str) -> dict:
        if name not in member_of:
            return {"group": name, "group_iqm": None, "group_ci95_low": None, "group_ci95_high": None}
        g, a = member_of[name]
        return {"group": g, "group_iqm": a.get("normalized_iqm"), "group_ci95_low": a.get("normalized_iqm_ci95_low"),
                "group_ci95_high": a.get("normalized_iqm_ci95_high")}

    table = pd.DataFrame([{"name": n, **{k: r.get(k) for k in ("normalized_mean", "normalized_std", "return_mean")},
                           **group_columns(n)} for n, r in policies.items()]
                         + ([{"name": "expert_data", "normalized_mean": expert.get("normalized"),
                              "normalized_std": 0.0, "return_mean": expert.get("return_mean"),
                              "group": "expert_data", "group_iqm": expert.get("normalized")}] if expert else []))
    table.to_csv(out_dir / "scores.csv", index=False)
    return "\n".join(parts)


def _scores_figure(summary: dict) -> Figure:
    """Bars: each group's IQM with its 95 % interval over runs (none for a one-run group), dots: individual
    runs; plus the expert data."""
    policies, aggregates = summary["policies"], summary.get("aggregates", {})
    labels, heights, lows, highs, dots, single = [], [], [], [], [], []
    for g in _ordered_groups(summary):
        a = aggregates[g]
        labels.append(g)
        heights.append(a["normalized_iqm"])
        has_ci = _interval(a) != NO_INTERVAL
        lows.append(a["normalized_iqm"] - a["normalized_iqm_ci95_low"] if has_ci else 0.0)
        highs.append(a["normalized_iqm_ci95_high"] - a["normalized_iqm"] if has_ci else 0.0)
        single.append(not has_ci)
        dots.append(list(_per_run(a, policies).values()))
    if not labels:  # no aggregates recorded: one bar per policy, no interval
        for name, r in policies.items():
            labels.append(name)
            heights.append(r["normalized_mean"])
            lows.append(0.0)
            highs.append(0.0)
            dots.append([])
            single.append(True)
    expert = summary.get("expert_data", {})
    fig = Figure(figsize=(max(5.0, 1.1 * (len(labels) + 1)), 3.8))
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    ax.bar(x, heights, yerr=[lows, highs], capsize=4, color="tab:blue", alpha=0.8, label="IQM, 95 % CI over runs")
    for i, d in enumerate(dots):
        ax.scatter(np.full(len(d), x[i]), d, color="k", s=14, zorder=3, label="runs (seeds)" if i == 0 else None)
        if single[i]:
            ax.annotate(NO_INTERVAL, (x[i], heights[i]), textcoords="offset points", xytext=(0, 4), ha="center",
                        fontsize=6, rotation=90, va="bottom")
    if "normalized" in expert:
        ax.bar([len(labels)], [expert["normalized"]], color=COLORS["expert"], alpha=0.8, label="expert data")
        labels.append("expert data")
    ax.axhline(100.0, color="grey", ls="--", lw=1)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=20)
    ax.set_ylabel("normalised score")
    ax.legend(fontsize=8)
    return fig


def data_section(data_dir: Path, figs: _Figures) -> str:
    parts = []
    summary_path = data_dir / "ingested" / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        keys = ["episodes", "transitions", "return_mean", "return_min", "return_max", "obs_dim", "act_dim"]
        parts.append(_table(["dataset"] + keys, [[name] + [s.get(k, "not available") for k in keys]
                                                  for name, s in summary.items() if isinstance(s, dict)]))
        sources = {name: s.get("source") for name, s in summary.items() if isinstance(s, dict) and s.get("source")}
        if sources:
            parts.append("<p class=\"meta\">Sources: " + "; ".join(f"{_e(n)}: {_e(s)}" for n, s in sources.items())
                         + "</p>")
    else:
        parts.append(_note(f"missing: {summary_path}"))
    returns = {kind: EpisodeDataset.load(_need(data_dir / "ingested" / f"{kind}.h5")).episode_returns()
               for kind in ("expert", "suboptimal")}
    fig = Figure(figsize=(7, 3.4))
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(np.concatenate(list(returns.values())), bins=40)
    for kind, r in returns.items():
        ax.hist(r, bins=bins, alpha=0.6, color=COLORS[kind], label=f"{kind} ({len(r)} episodes)")
    ax.set_xlabel("episode return")
    ax.set_ylabel("episodes")
    ax.set_title("Episode returns of the datasets")
    ax.legend()
    parts.append(figs.save(fig, "data_returns.png", "expert vs suboptimal episode returns"))
    return "\n".join(parts)


def bc_section(data_dir: Path, figs: _Figures) -> str:
    parts = [_kv_table(_json(data_dir / "bc" / "details.json"))]
    curve = _tsv(data_dir / "bc" / "curve.tsv")
    baseline_path = data_dir / "bc" / "baseline_curve.tsv"
    baseline = pd.read_csv(baseline_path, sep="\t") if baseline_path.exists() else None
    columns = [c for c in ("val_mse", "val_nll") if c in curve.columns]
    if not columns:
        raise ValueError(f"{data_dir / 'bc' / 'curve.tsv'} has no val_mse / val_nll columns ({list(curve.columns)})")
    fig = Figure(figsize=(4.2 * len(columns), 3.3))
    for i, col in enumerate(columns):
        ax = fig.add_subplot(1, len(columns), i + 1)
        if "phase" in curve.columns:
            for phase, part in curve.groupby("phase", sort=False):
                ax.plot(part["step"], part[col], marker=".", label=f"CSIL BC {phase}")
        else:
            ax.plot(curve["step"], curve[col], marker=".", label="CSIL BC")
        if baseline is not None and col in baseline.columns:
            ax.plot(baseline["step"], baseline[col], marker=".", color="grey", label="BC baseline")
        if col == "val_mse" and (curve[col] > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("gradient step")
        ax.set_title(f"held-out {col.removeprefix('val_')}")
        ax.legend(fontsize=8)
    parts.append(figs.save(fig, "bc_curve.png", "behaviour cloning learning curves"))
    if baseline is None:
        parts.append(_note(f"missing: {baseline_path} (baseline curve not shown)"))
    return "\n".join(parts)


def reward_section(data_dir: Path, figs: _Figures) -> str:
    metrics = _json(data_dir / "reward" / "details.json")
    parts = [_kv_table(metrics, ["expert_mean", "suboptimal_mean", "auc"]
                       + [k for k in _flatten(metrics) if k not in ("expert_mean", "suboptimal_mean", "auc")])]
    hist = _tsv(data_dir / "reward" / "histogram.csv", sep=",")
    fig = Figure(figsize=(7, 3.4))
    ax = fig.add_subplot()
    for kind in ("expert", "suboptimal"):
        ax.fill_between(hist["reward"], hist[kind], step="mid", alpha=0.45, color=COLORS[kind], label=kind)
    auc = metrics.get("auc")
    ax.set_title("Coherent reward of expert vs suboptimal transitions"
                 + (f" (AUC {auc:.3f})" if isinstance(auc, (int, float)) else ""))
    ax.set_xlabel("reward")
    ax.legend()
    parts.append(figs.save(fig, "reward_hist.png", "coherent reward histograms"))
    return "\n".join(parts)


def dynamics_section(data_dir: Path, figs: _Figures) -> str:
    metrics = _json(data_dir / "dynamics" / "details.json")
    keys = ["holdout_mse", "elites", "multistep.mse", "multistep.baseline_mse"]
    flat = _flatten(metrics)
    parts = [_kv_table(metrics, keys + [k for k in flat if k not in keys and not isinstance(flat[k], (list, dict))])]
    # the names the dynamics stage writes (pipeline/dynamics.py, stages/dynamics.py)
    multi = metrics.get("multistep") if isinstance(metrics.get("multistep"), dict) else {}
    per_member, multistep = metrics.get("holdout_mse_members"), multi.get("mse_per_step")
    baseline = multi.get("baseline_mse_per_step")
    plots = [p for p in (isinstance(per_member, list), isinstance(multistep, list)) if p]
    if not plots:
        parts.append(_note("per-member holdout errors and per-step multistep errors: not available"))
        return "\n".join(parts)
    fig = Figure(figsize=(4.5 * len(plots), 3.3))
    i = 1
    if isinstance(per_member, list):
        ax = fig.add_subplot(1, len(plots), i)
        elites = set(metrics["elites"]) if isinstance(metrics.get("elites"), list) else set()
        ax.bar(range(len(per_member)), per_member,
               color=["tab:green" if m in elites else "tab:grey" for m in range(len(per_member))])
        ax.set_xlabel("ensemble member (green: elite)")
        ax.set_ylabel("holdout MSE")
        ax.set_title("one-step holdout error")
        i += 1
    if isinstance(multistep, list):
        ax = fig.add_subplot(1, len(plots), i)
        steps = np.arange(1, len(multistep) + 1)
        ax.plot(steps, multistep, marker="o", label="ensemble")
        if isinstance(baseline, list):
            ax.plot(steps[: len(baseline)], baseline, marker="o", color="grey", label="baseline")
        ax.set_xlabel("rollout step")
        ax.set_ylabel("MSE")
        ax.set_title("multi-step open-loop error")
        ax.legend(fontsize=8)
    parts.append(figs.save(fig, "dynamics.png", "dynamics errors"))
    return "\n".join(parts)


# learning_curves.csv: every improve run's curve in one long table, for `dvc plots show` (one line per run)
LEARNING_CURVE_COLUMNS = ["run", "step", "eval_return", "demo_mse"]


def improve_section(data_dir: Path, run_names: list[str], figs: _Figures) -> str:
    if not run_names:
        return _note("no improve runs in data/evaluate/summary.json")
    parts, long = [], []
    for name in run_names:
        curve_path = data_dir / "improve" / name / "curve.tsv"     # <algo>-<seed>
        if not curve_path.exists():
            parts.append(f"<h3>{_e(name)}</h3>" + _note(f"missing: {curve_path}"))
            continue
        try:
            curve = pd.read_csv(curve_path, sep="\t")
            columns = [c for c in curve.columns if c != "step" and pd.api.types.is_numeric_dtype(curve[c])]
            if "step" not in curve.columns or not columns:
                raise ValueError(f"{curve_path}: needs a step column and numeric columns, has {list(curve.columns)}")
            long.append(curve.assign(run=name).reindex(columns=LEARNING_CURVE_COLUMNS))
            cols = min(4, len(columns))
            rows = -(-len(columns) // cols)
            fig = Figure(figsize=(3.4 * cols, 2.6 * rows))
            for i, col in enumerate(columns):
                ax = fig.add_subplot(rows, cols, i + 1)
                ax.plot(curve["step"], curve[col], marker=".", ms=3)
                ax.set_title(col, fontsize=9)
                ax.tick_params(labelsize=7)
            fig.suptitle(f"{name}: learning curves")
            parts.append(f"<h3>{_e(name)}</h3>" + figs.save(fig, f"improve_{name}.png", f"{name} learning curves"))
        except Exception as exc:
            log.warning("improve curve %s could not be plotted", curve_path, exc_info=True)
            parts.append(f"<h3>{_e(name)}</h3>" + _note(f"could not plot {curve_path}: {type(exc).__name__}: {exc}"))
    table = pd.concat(long) if long else pd.DataFrame(columns=LEARNING_CURVE_COLUMNS)
    table.to_csv(figs.out_dir / "learning_curves.csv", index=False)
    return "\n".join(parts)


# -- the page --------------------------------------------------------------------------------
def build_report(data_dir: Path = Path("data"), out_dir: Path = Path("data/report"),
                 params_path: Path = Path("params.yaml"), repo_dir: Path = Path(".")) -> Path:
    """Write ``out_dir``/index.html (+ PNGs, scores.csv); returns the index path.

    Raises ArtefactError when data/evaluate/summary.json is missing. The page is built in a
    staging directory and swapped in, so a failure never leaves a half-written report.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    summary_path = data_dir / "evaluate" / "summary.json"
    if not summary_path.exists():
        raise ArtefactError(f"{summary_path}: evaluation summary not found; run `dvc repro evaluate` first")
    summary = json.loads(summary_path.read_text())
    if not isinstance(summary.get("policies"), dict) or not summary["policies"]:
        raise ArtefactError(f"{summary_path}: no 'policies'; re-run `dvc repro evaluate`")

    with staging_dir(out_dir.parent) as staging_root:
        staging = staging_root / out_dir.name
        staging.mkdir()
        figs = _Figures(staging)
        group_of = {n: g for g, a in summary.get("aggregates", {}).items() for n in a.get("policies", [])}
        run_names = [n for n in summary["policies"] if group_of.get(n, n) not in FIXED_GROUPS]
        params_text = Path(params_path).read_text() if Path(params_path).exists() else None
        lock_hash, evaluate_md5 = _dvc_revision(Path(repo_dir))
        sections = [
            _section("scores", "Normalised scores", lambda: scores_section(summary, figs, staging)),
            _section("data", "Data: expert vs suboptimal episodes", lambda: data_section(data_dir, figs)),
            _section("bc", "Behaviour cloning fit", lambda: bc_section(data_dir, figs)),
            _section("reward", "Coherent reward", lambda: reward_section(data_dir, figs)),
            _section("dynamics", "Dynamics ensemble", lambda: dynamics_section(data_dir, figs)),
            _section("improve", "Policy improvement learning curves",
                     lambda: improve_section(data_dir, run_names, figs)),
            '<section id="params"><h2>Parameters (params.yaml)</h2>'
            + (f"<pre>{_e(params_text)}</pre>" if params_text is not None else _note(f"missing: {params_path}"))
            + "</section>",
        ]
        nav = " ".join(f'<a href="#{a}">{t}</a>' for a, t in (
            ("scores", "scores"), ("data", "data"), ("bc", "BC"), ("reward", "reward"), ("dynamics", "dynamics"),
            ("improve", "improvement"), ("params", "params")))
        page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Offline imitation report: {_e(summary.get("env_id", ""))}</title>
<style>{CSS}</style></head>
<body>
<h1>Offline imitation learning report</h1>
<p class="meta">Environment {_e(summary.get("env_id", "?"))} &middot; git commit {_e(_git_revision(Path(repo_dir)))}
&middot; dvc.lock sha256 (upstream stages) {_e(lock_hash)} &middot; data/evaluate md5 (dvc.lock) {_e(evaluate_md5)}</p>
<nav>{nav}</nav>
{chr(10).join(sections)}
</body></html>
"""
        (staging / "index.html").write_text(page)
        replace_dir(staging, out_dir)
    return out_dir / "index.html"
