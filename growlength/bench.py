"""The arena: GrowLength against fixed-length training and the peers' recipes (recipes.py), each tuned,
at the same budget, best against best.

Phases, each interleaved (every recipe once, then the next setting or seed) so a slow spell of a
shared machine hits every recipe, not one:

    sweep          each recipe at every point of the grid (`--sweep 'lr=1e-3,2e-3 tokens_per_step=2048,8192'`),
                   one seed; a recipe's best point is the one with the lowest final val loss
    seeds          each recipe's best point again with `repeats` fresh seeds (no selection bias); the
                   report compares these, seed k of a recipe against seed k of the baseline
    equal-tokens   optional: each best point again for the baseline's tokens (a token budget), so every
                   recipe's final loss is also known at equal tokens

Views of the seeds phase: time to the baseline's final val loss (equal time: the speedup) and tokens
to it (equal tokens), each with the evaluations that bracket it. A bench folder resumes: finished runs
are kept, a cut run resumes from its checkpoint.
"""

import dataclasses
import datetime
import itertools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

from growlength.config import BenchConfig, TrainConfig, load_config, parse_sweep, point_label, recipe_values
from growlength.errors import GrowLengthError
from growlength.recipes import BASELINE, ComposerCrash
from growlength.trackers import read_metrics


def run_config(base: TrainConfig, name: str, point: dict, seed: int, bench: BenchConfig, **budget) -> TrainConfig:
    """The base config, then the recipe, then the sweep point (so a sweep can tune a peer's own knobs)."""
    values = base.to_dict()
    values.update(
        recipe_values(name, short_len=bench.short_len, start_len=base.start_len, target_len=base.target_len)
    )
    values.update(point, seed=seed, eval_seen_lengths=False, keep_checkpoints=1, **budget)
    return TrainConfig(**values)


def sweep_dir(out: Path, name: str, point: dict) -> Path:
    label = "_".join(f"{k}-{v}" for k, v in point.items()) or "config"
    return out / "sweep" / name / label


def seed_dir(out: Path, name: str, seed: int, phase: str = "") -> Path:
    return out / phase / name / f"seed{seed}" if phase else out / name / f"seed{seed}"


def bench(base: TrainConfig, bench_cfg: BenchConfig, out: str | Path, *, show_progress: bool = True) -> dict:
    """Run the phases, then write bench.json, the plots and runs.tar.gz (every run's records)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise GrowLengthError(
            "growlength bench runs its recipes one after another in one process: start it without torchrun "
            "(CUDA_VISIBLE_DEVICES=0 growlength bench ...); to use more GPUs, start one bench per GPU, each "
            "with its own --out and --runs or --seed"
        )
    out, names, points = Path(out), bench_cfg.run_names(), parse_sweep(bench_cfg.sweep)
    crashes = _check_all(base, bench_cfg, names, points, out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "provenance.json").is_file():  # the code that ran the first run, kept when a bench resumes
        (out / "provenance.json").write_text(json.dumps(provenance(), indent=2) + "\n")
    lengths = bench_cfg.final_lengths(base.target_len)
    runnable = [n for n in names if n not in crashes or len(crashes[n]) < len(points)]
    best = {n: {} for n in runnable}
    if bench_cfg.sweep:
        jobs = [(n, p) for p in points for n in runnable if point_label(p) not in crashes.get(n, {})]
        cfgs = [(run_config(base, n, p, base.seed, bench_cfg), sweep_dir(out, n, p)) for n, p in jobs]
        _run_all(cfgs, lengths, "sweep", show_progress)
        best = {n: _best_point(out, n, points, crashes.get(n, {})) for n in runnable}
    seeds = bench_cfg.seeds(base.seed)
    cfgs = [(run_config(base, n, best[n], s, bench_cfg), seed_dir(out, n, s)) for s in seeds for n in runnable]
    _run_all(cfgs, lengths, "seeds", show_progress)
    if bench_cfg.equal_tokens:
        tokens = round(_mean([read_run(seed_dir(out, BASELINE, s))["tokens"][-1] for s in seeds]))
        budget = dict(budget_tokens=tokens, budget_seconds=None, budget_steps=None)
        cfgs = [
            (run_config(base, n, best[n], s, bench_cfg, **budget), seed_dir(out, n, s, "equal-tokens"))
            for s in seeds
            for n in runnable
        ]
        _run_all(cfgs, lengths, "equal-tokens", show_progress)
    report = summarize(out, base, bench_cfg, names, points, best, crashes)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    from growlength.plots import plot_bench

    dirs = [seed_dir(out, n, s) for s in seeds for n in runnable]
    plot_bench(out, report, dirs, [d.parent.name for d in dirs])
    archive_runs(out)
    return report


def _run_all(cfgs: list[tuple[TrainConfig, Path]], lengths: list[int], phase: str, show_progress: bool) -> None:
    from growlength.evaluate import evaluate_checkpoint
    from growlength.train import train

    for i, (cfg, folder) in enumerate(cfgs, 1):
        print(f"[{phase} {i}/{len(cfgs)}] seed {cfg.seed} -> {folder}", flush=True)
        if (folder / "final-eval.json").is_file():
            continue
        train(cfg, folder, resume=(folder / "config.yaml").is_file(), show_progress=show_progress)
        report = evaluate_checkpoint(folder, lengths, eval_tokens=_eval_tokens(cfg, lengths))
        (folder / "final-eval.json").write_text(json.dumps(report, indent=2) + "\n")


def _check_all(base, bench_cfg: BenchConfig, names: list[str], points: list[dict], out: Path) -> dict:
    """Every run's config is valid before the first one starts (setup's checks, without training).
    Returns the runs Composer itself cannot do: {recipe: {point label: reason}}; any other bad config
    fails the bench here."""
    from growlength.plan import preflight
    from growlength.prepare import resolve_data

    crashes: dict[str, dict[str, str]] = {}
    for name, point in itertools.product(names, points):
        cfg = run_config(base, name, point, base.seed, bench_cfg)
        try:
            preflight(cfg, resolve_data(cfg.data, cfg.vocab_size))
        except ComposerCrash as e:
            crashes.setdefault(name, {})[point_label(point)] = str(e)
        except GrowLengthError as e:
            where = f" at {point_label(point)}" if point else ""
            raise GrowLengthError(f"bench run {name}{where}: {e}") from None
        folder = sweep_dir(out, name, point) if bench_cfg.sweep else seed_dir(out, name, base.seed)
        saved = folder / "config.yaml"
        if saved.is_file() and load_config(saved) != cfg:
            raise GrowLengthError(f"{out} holds a bench with another config ({name}): use a new --out")
    if BASELINE in crashes and len(crashes[BASELINE]) == len(points):
        raise GrowLengthError(f"the baseline cannot run: {next(iter(crashes[BASELINE].values()))}")
    return crashes


def _best_point(out: Path, name: str, points: list[dict], crashed: dict) -> dict:
    ran = [p for p in points if point_label(p) not in crashed]
    return min(ran, key=lambda p: read_run(sweep_dir(out, name, p))["val_loss"][-1])


def _eval_tokens(cfg: TrainConfig, lengths: list[int]) -> int:
    """The run's eval tokens, rounded up to a whole number of the longest window."""
    longest = max(lengths)
    return -(-cfg.eval_tokens // longest) * longest


def crossing(xs: list[float], losses: list[float], level: float) -> dict | None:
    """Where the loss curve first reaches `level`: `at`, interpolated linearly between the two
    evaluations that bracket it (`after` the last one above, `before` the first one at or below);
    None if it never does.

    >>> crossing([0, 10, 20], [5.0, 4.0, 3.0], 3.5)
    {'at': 15.0, 'after': 10, 'before': 20}
    """
    for i, loss in enumerate(losses):
        if loss <= level:
            if i == 0:
                return {"at": xs[0], "after": xs[0], "before": xs[0]}
            x0, x1, y0, y1 = xs[i - 1], xs[i], losses[i - 1], loss
            return {"at": x0 + (x1 - x0) * (y0 - level) / (y0 - y1), "after": x0, "before": x1}
    return None


def time_to_reach(xs: list[float], losses: list[float], level: float) -> float | None:
    """The first x at which the loss curve reaches `level` (linear between points), or None."""
    hit = crossing(xs, losses, level)
    return None if hit is None else hit["at"]


def read_run(folder: Path) -> dict:
    steps, evals = read_metrics(folder)
    final = json.loads((folder / "final-eval.json").read_text())
    by_len: dict[int, list[float]] = {}
    for r in steps:
        by_len.setdefault(r["seq_len"], []).append(r["tokens_per_s"])
    return {
        "wall_s": [e["wall_s"] for e in evals],
        "tokens": [e["tokens"] for e in evals],
        "val_loss": [e["val_loss"] for e in evals],
        "data_tokens": evals[-1].get("data_tokens", evals[-1]["tokens"]),
        "steps": steps[-1]["step"],
        "longest_step_s": max(r["tokens"] / max(r["tokens_per_s"], 1e-9) for r in _step_tokens(steps)),
        "tokens_per_s_by_len": by_len,
        "compile_s": sum(r.get("compile_s", 0.0) for r in steps),  # inside wall_s: --compile's cost
        "compiles": steps[-1].get("compiles", 0),
        "final_by_len": {r["seq_len"]: r["loss"] for r in final["results"]},
    }


def _step_tokens(steps: list[dict]) -> list[dict]:
    """Each step record with the tokens of that step (records hold the running total)."""
    previous = [0] + [r["tokens"] for r in steps[:-1]]
    return [{**r, "tokens": r["tokens"] - before} for r, before in zip(steps, previous, strict=True)]


def summarize(out: Path, base: TrainConfig, bench_cfg, names, points, best, crashes) -> dict:
    """bench.json: provenance, the sweep, and per recipe its best point's runs against the baseline's."""
    seeds = bench_cfg.seeds(base.seed)
    baseline = [read_run(seed_dir(out, BASELINE, s)) for s in seeds]
    results = {}
    for name in names:
        if name not in best:
            results[name] = {"crash": next(iter(crashes[name].values()))}
            continue
        reps = [read_run(seed_dir(out, name, s)) for s in seeds]
        results[name] = {"setting": best[name], **_versus(baseline, reps)}
        if bench_cfg.equal_tokens:
            finals = [read_run(seed_dir(out, name, s, "equal-tokens")) for s in seeds]
            results[name]["equal_tokens"] = {
                "tokens_each": [f["tokens"][-1] for f in finals],
                "final_val_loss": _mean([f["val_loss"][-1] for f in finals]),
                "final_val_loss_each": [f["val_loss"][-1] for f in finals],
            }
    report = {
        "provenance": json.loads((out / "provenance.json").read_text()),
        "config": base.to_dict(),
        "bench": dataclasses.asdict(bench_cfg),
        "target_len": base.target_len,
        "model": base.model,
        "budget": {"seconds": base.budget_seconds, "tokens": base.budget_tokens, "steps": base.budget_steps},
        "tokens_per_step": base.tokens_per_step,
        "seeds": seeds,
        "baseline": BASELINE,
        "sweep": _sweep_table(out, names, points, crashes) if bench_cfg.sweep else None,
        "runs": results,
    }
    report["headline"] = headline(report)
    return report


def _versus(baseline: list[dict], reps: list[dict]) -> dict:
    """A recipe's seeds against the baseline's, seed by seed: final loss, and when (in seconds and in
    tokens) it reaches the baseline's final val loss, with the evaluations bracketing that moment."""
    reach_s = [
        crossing(r["wall_s"], r["val_loss"], b["val_loss"][-1]) for b, r in zip(baseline, reps, strict=True)
    ]
    reach_t = [
        crossing(r["tokens"], r["val_loss"], b["val_loss"][-1]) for b, r in zip(baseline, reps, strict=True)
    ]
    speedups = [_ratio(b["wall_s"][-1], hit) for b, hit in zip(baseline, reach_s, strict=True)]
    token_gains = [_ratio(b["tokens"][-1], hit) for b, hit in zip(baseline, reach_t, strict=True)]
    finals = [r["val_loss"][-1] for r in reps]
    return {
        "final_val_loss": _mean(finals),
        "final_val_loss_each": finals,
        "tokens": _mean([r["tokens"][-1] for r in reps]),
        "data_tokens": _mean([r["data_tokens"] for r in reps]),
        "train_s_each": [r["wall_s"][-1] for r in reps],
        "longest_step_s": max(r["longest_step_s"] for r in reps),
        "steps": _mean([r["steps"] for r in reps]),
        "compile_s": _mean([r["compile_s"] for r in reps]),
        "compiles": _mean([r["compiles"] for r in reps]),
        "reach_baseline_s": reach_s,
        "reach_baseline_tokens": reach_t,
        "speedup_each": speedups,
        "speedup": _mean([s["at"] for s in speedups]) if None not in speedups else None,
        "token_gain_each": token_gains,
        "token_gain": _mean([g["at"] for g in token_gains]) if None not in token_gains else None,
        "tokens_per_s_by_len": _median_by_len(reps),
        "val_loss_by_len": _mean_by_len(reps),
    }


def _ratio(baseline_end: float, hit: dict | None) -> dict | None:
    """baseline_end / the crossing, with the range its bracketing evaluations allow (no upper bound,
    None, when the crossing comes before the first evaluation after the start)."""
    if hit is None:
        return None
    return {
        "at": baseline_end / max(hit["at"], 1e-9),
        "low": baseline_end / max(hit["before"], 1e-9),
        "high": baseline_end / hit["after"] if hit["after"] > 0 else None,
    }


def _sweep_table(out: Path, names: list[str], points: list[dict], crashes: dict) -> dict:
    table = {}
    for name in names:
        rows = []
        for point in points:
            label = point_label(point)
            if label in crashes.get(name, {}):
                rows.append({"setting": point, "crash": crashes[name][label]})
            else:
                rows.append(
                    {"setting": point, "final_val_loss": read_run(sweep_dir(out, name, point))["val_loss"][-1]}
                )
        table[name] = rows
    return table


def headline(report: dict) -> str:
    """One sentence: GrowLength's best against the baseline's best."""
    runs, base = report["runs"], report["runs"][BASELINE]
    mine = runs.get("growlength")
    if not mine or "crash" in mine:
        return "no growlength run in this bench"
    speed = mine["speedup"]
    reach = f"{speed:.2f}x (seeds {_spread(mine['speedup_each'])})" if speed else "never (within the budget)"
    return (
        f"growlength reaches the tuned fixed-length baseline's final val loss {reach} sooner; final val loss "
        f"{mine['final_val_loss']:.4f} vs {base['final_val_loss']:.4f} "
        f"(seeds {_spread(mine['final_val_loss_each'], '.4f')} vs {_spread(base['final_val_loss_each'], '.4f')})"
    )


def _spread(values: list, fmt: str = ".2f") -> str:
    values = [v["at"] if isinstance(v, dict) else v for v in values if v is not None]
    return ", ".join(f"{v:{fmt}}" for v in values) if values else "—"


def provenance() -> dict:
    """What a reader needs to trust and rerun the numbers: code, versions, machine, command."""
    from importlib.metadata import version

    import numpy
    import torch
    import transformers

    repo = Path(__file__).resolve().parent.parent
    return {
        "git_commit": _git(repo, "rev-parse", "HEAD"),
        "git_dirty": bool(_git(repo, "status", "--porcelain", "--untracked-files=no")),
        "versions": {
            "growlength": version("growlength"),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": numpy.__version__,
            "python": platform.python_version(),
        },
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "command": shlex.join(["growlength", *sys.argv[1:]]) if Path(sys.argv[0]).name == "growlength" else None,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def archive_runs(out: Path) -> Path:
    """runs.tar.gz: every run's metrics.jsonl, config.yaml and final-eval.json (no checkpoints), so each
    figure of the report can be recomputed from the records."""
    path = out / "runs.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name in ("metrics.jsonl", "config.yaml", "final-eval.json"):
            for file in sorted(out.rglob(name)):
                tar.add(file, arcname=str(file.relative_to(out)))
    return path


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def _median_by_len(reps: list[dict]) -> dict[str, float]:
    merged: dict[int, list[float]] = {}
    for rep in reps:
        for seq_len, speeds in rep["tokens_per_s_by_len"].items():
            merged.setdefault(seq_len, []).extend(speeds)
    return {str(k): statistics.median(v) for k, v in sorted(merged.items())}


def _mean_by_len(reps: list[dict]) -> dict[str, float]:
    lengths = sorted(reps[0]["final_by_len"])
    return {str(n): _mean([rep["final_by_len"][n] for rep in reps]) for n in lengths}


def format_table(report: dict) -> str:
    """A Markdown table of the report, one row per recipe (its best setting, mean over seeds)."""
    target = report["target_len"]
    base = report["runs"][report["baseline"]]["final_val_loss"]
    equal_tokens = any("equal_tokens" in r for r in report["runs"].values())
    compiled = any(r.get("compiles") for r in report["runs"].values())
    head = f"| run | setting | val loss @{target} | vs baseline | tokens | speedup (equal time) | token gain |"
    head += " loss at equal tokens |" if equal_tokens else ""
    head += " compiling (graphs) |" if compiled else ""
    columns = 7 + equal_tokens + compiled
    lines = [head, "|---" * columns + "|"]
    for name, r in report["runs"].items():
        if "crash" in r:
            crash = r["crash"].split(":")[0]
            lines.append(f"| {name} | crashes in the peer's own code: {crash} |" + " |" * (columns - 2))
            continue
        row = (
            f"| {name} | {point_label(r['setting'])} | {r['final_val_loss']:.4f} "
            f"| {r['final_val_loss'] - base:+.4f} "
            f"| {r['tokens']:,.0f} | {_ratio_text(r['speedup'], r['speedup_each'])} "
            f"| {_ratio_text(r['token_gain'], r['token_gain_each'])} |"
        )
        if equal_tokens:
            row += f" {r['equal_tokens']['final_val_loss']:.4f} |"
        if compiled:
            row += f" {r['compile_s']:.1f} s ({r['compiles']:g}) |"
        lines.append(row)
    return "\n".join(lines)


def format_sweep(report: dict) -> str:
    """A Markdown table of the sweep: final val loss of every recipe at every point, the best in bold."""
    sweep = report.get("sweep")
    if not sweep:
        return ""
    labels = [point_label(row["setting"]) for row in next(iter(sweep.values()))]
    lines = ["| run | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name, rows in sweep.items():
        losses = [row.get("final_val_loss") for row in rows]
        best = min((x for x in losses if x is not None), default=None)
        cells = ["crash" if x is None else f"**{x:.4f}**" if x == best else f"{x:.4f}" for x in losses]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio_text(mean: float | None, each: list) -> str:
    """'1.52x [1.40-1.61]': the mean and the range its bracketing evaluations allow over the seeds."""
    if mean is None:
        return "not reached"
    low = min(e["low"] for e in each)
    highs = [e["high"] for e in each]
    high = "inf" if None in highs else f"{max(highs):.2f}"
    return f"{mean:.2f}x [{low:.2f}-{high}]"
