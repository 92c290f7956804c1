"""Equal-budget benchmark: GrowLength against fixed-length training and the peers' recipes.

Every run gets the same data, model, seed, optimizer and budget (seconds of training or tokens) and is
scored on the same held-out tokens. Runs are interleaved (all recipes once, then all again for each
repeat) so a slow spell of a shared machine hits every recipe, not one. The headline is read off the
curves: how long each run takes to reach the fixed-length baseline's final val loss.
"""

import dataclasses
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from growlength.config import TrainConfig, coerce, load_config, read_yaml
from growlength.errors import GrowLengthError
from growlength.recipes import recipe

BASELINE = "fixed-target"


DEFAULT_RUNS = "fixed-target,fixed-short,growlength,composer,deepspeed"


@dataclass(kw_only=True)
class BenchConfig:
    runs: str = DEFAULT_RUNS
    repeats: int = 1
    short_len: int = 128
    extrapolate: str | None = None  # lengths for the final eval; default short_len ... 2 x target

    def run_names(self) -> list[str]:
        names = [n.strip() for n in self.runs.split(",") if n.strip()]
        if BASELINE not in names:
            raise GrowLengthError(f"the bench needs the baseline run {BASELINE!r} among --runs")
        if len(set(names)) != len(names):
            raise GrowLengthError(f"--runs names a run twice: {self.runs}")
        return names

    def final_lengths(self, target_len: int) -> list[int]:
        if self.extrapolate:
            return sorted({int(x) for x in self.extrapolate.split(",")})
        lengths, n = [], self.short_len
        while n < 2 * target_len:
            lengths.append(n)
            n *= 2
        return sorted({*lengths, target_len, 2 * target_len})


BENCH_FIELDS = {f.name for f in dataclasses.fields(BenchConfig)}


def load_bench_config(path: str | Path | None, overrides: dict) -> tuple[TrainConfig, BenchConfig]:
    """A YAML file (and flags on top) holding train keys and bench keys, split and checked."""
    values = {**(read_yaml(path) if path else {}), **overrides}
    bench_values = {k: values.pop(k) for k in list(values) if k in BENCH_FIELDS}
    try:
        typed = {k: int(v) if k in ("repeats", "short_len") else str(v) for k, v in bench_values.items()}
    except ValueError as e:
        raise GrowLengthError(f"bad bench setting: {e}") from None
    bench_cfg = BenchConfig(**typed)
    if bench_cfg.repeats < 1:
        raise GrowLengthError(f"repeats must be at least 1, got {bench_cfg.repeats}")
    bench_cfg.run_names()
    return load_config(None, {k: coerce(k, v) for k, v in values.items()}), bench_cfg


def run_config(base: TrainConfig, name: str, repeat: int, bench: BenchConfig) -> TrainConfig:
    values = base.to_dict()
    values.update(recipe(name, short_len=bench.short_len, start_len=base.start_len))
    values.update(seed=base.seed + repeat, eval_seen_lengths=False, keep_checkpoints=1)
    return TrainConfig(**values)


def run_dir(out: Path, name: str, repeat: int) -> Path:
    return out / name / f"repeat{repeat}"


def bench(base: TrainConfig, bench_cfg: BenchConfig, out: str | Path, *, show_progress: bool = True) -> dict:
    """Train every run (interleaved over repeats), evaluate each at every length, report."""
    from growlength.evaluate import evaluate_checkpoint
    from growlength.train import train

    out = Path(out)
    names = bench_cfg.run_names()
    configs = {(n, r): run_config(base, n, r, bench_cfg) for r in range(bench_cfg.repeats) for n in names}
    _check_all(configs, out)
    lengths = bench_cfg.final_lengths(base.target_len)
    for i, ((name, r), cfg) in enumerate(configs.items(), 1):
        folder = run_dir(out, name, r)
        print(f"[{i}/{len(configs)}] {name} (repeat {r}, seed {cfg.seed}) -> {folder}", flush=True)
        if not (folder / "final-eval.json").is_file():
            train(cfg, folder, resume=(folder / "config.yaml").is_file(), show_progress=show_progress)
            report = evaluate_checkpoint(folder, lengths, eval_tokens=_eval_tokens(cfg, lengths))
            (folder / "final-eval.json").write_text(json.dumps(report, indent=2) + "\n")
    report = summarize(out, names, bench_cfg.repeats, base)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    from growlength.plots import plot_bench

    plot_bench(out, report)
    return report


def _check_all(configs: dict, out: Path) -> None:
    """Every run's config is valid before the first one starts (setup's checks, without training)."""
    from growlength.plan import preflight
    from growlength.prepare import resolve_data

    for (name, r), cfg in configs.items():
        try:
            preflight(cfg, resolve_data(cfg.data, cfg.vocab_size))
        except GrowLengthError as e:
            raise GrowLengthError(f"bench run {name}: {e}") from None
        saved = run_dir(out, name, r) / "config.yaml"
        if saved.is_file() and load_config(saved) != cfg:
            raise GrowLengthError(f"{out} holds a bench with another config ({name}): use a new --out")


def _eval_tokens(cfg: TrainConfig, lengths: list[int]) -> int:
    """The run's eval tokens, rounded up to a whole number of the longest window."""
    longest = max(lengths)
    return -(-cfg.eval_tokens // longest) * longest


def time_to_reach(xs: list[float], losses: list[float], level: float) -> float | None:
    """The first x at which the loss curve reaches `level`, interpolating linearly between points;
    None if it never does.

    >>> time_to_reach([0, 10, 20], [5.0, 4.0, 3.0], 3.5)
    15.0
    """
    for i, loss in enumerate(losses):
        if loss <= level:
            if i == 0:
                return xs[0]
            x0, x1, y0, y1 = xs[i - 1], xs[i], losses[i - 1], loss
            return x0 + (x1 - x0) * (y0 - level) / (y0 - y1)
    return None


def read_run(folder: Path) -> dict:
    from growlength.plots import read_metrics

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
        "tokens_per_s_by_len": by_len,
        "final_by_len": {r["seq_len"]: r["loss"] for r in final["results"]},
    }


def summarize(out: Path, names: list[str], repeats: int, base: TrainConfig) -> dict:
    """bench.json: per run final loss, tokens, speed by length, extrapolation, and the speedup."""
    runs = {n: [read_run(run_dir(out, n, r)) for r in range(repeats)] for n in names}
    baseline = runs[BASELINE]
    baseline_time = [_reach(b, b)["seconds"] for b in baseline]  # when each baseline reaches its own end
    summary = {}
    for name, reps in runs.items():
        to_reach = [_reach(b, rep) for b, rep in zip(baseline, reps)]
        speedups = [b / max(t["seconds"], 1e-9) if t else None for b, t in zip(baseline_time, to_reach)]
        summary[name] = {
            "final_val_loss": _mean([rep["val_loss"][-1] for rep in reps]),
            "final_val_loss_each": [rep["val_loss"][-1] for rep in reps],
            "tokens": _mean([rep["tokens"][-1] for rep in reps]),
            "data_tokens": _mean([rep["data_tokens"] for rep in reps]),
            "train_s": _mean([rep["wall_s"][-1] for rep in reps]),
            "steps": _mean([rep["steps"] for rep in reps]),
            "tokens_per_s_by_len": _median_by_len(reps),
            "val_loss_by_len": _mean_by_len(reps),
            "reach_baseline": to_reach,
            "speedup": _mean(speedups) if None not in speedups else None,
        }
    return {
        "target_len": base.target_len,
        "model": base.model,
        "budget": {"seconds": base.budget_seconds, "tokens": base.budget_tokens, "steps": base.budget_steps},
        "tokens_per_step": base.tokens_per_step,
        "repeats": repeats,
        "baseline": BASELINE,
        "runs": summary,
    }


def _reach(baseline: dict, run: dict) -> dict | None:
    """When `run` first reaches the baseline's final val loss, in seconds and tokens."""
    level = baseline["val_loss"][-1]
    seconds = time_to_reach(run["wall_s"], run["val_loss"], level)
    tokens = time_to_reach(run["tokens"], run["val_loss"], level)
    return None if seconds is None else {"seconds": seconds, "tokens": tokens}


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
    """A Markdown table of the report, one row per run."""
    target = report["target_len"]
    base = report["runs"][report["baseline"]]["final_val_loss"]
    lines = [
        f"| run | val loss @{target} | vs baseline | tokens | train s | time to baseline loss | speedup |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["runs"].items():
        reach = [x["seconds"] for x in r["reach_baseline"] if x]
        when = f"{_mean(reach):.0f} s" if len(reach) == len(r["reach_baseline"]) else "not reached"
        speedup = f"{r['speedup']:.2f}x" if r["speedup"] else "—"
        lines.append(
            f"| {name} | {r['final_val_loss']:.4f} | {r['final_val_loss'] - base:+.4f} | {r['tokens']:,.0f} "
            f"| {r['train_s']:.0f} | {when} | {speedup} |"
        )
    return "\n".join(lines)
