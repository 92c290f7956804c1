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
from growlength.files import WriteFailed, sole_writer, write_atomically, writing
from growlength.recipes import BASELINE, ComposerCrash
from growlength.report import ceiling, headline, read_run, versus


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
    """Run the phases, then write bench.json, the plots and runs.tar.gz (every run's records). The bench
    folder is held for the whole bench (one writer); a write that fails stops it in one line, and the
    same command continues where it stopped once there is room."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise GrowLengthError(
            "growlength bench runs its recipes one after another in one process: start it without torchrun "
            "(CUDA_VISIBLE_DEVICES=0 growlength bench ...); to use more GPUs, start one bench per GPU, each "
            "with its own --out and --runs or --seed"
        )
    out = Path(out)
    with sole_writer(out, "growlength bench"):
        try:
            return _bench(base, bench_cfg, out, show_progress)
        except WriteFailed as e:
            raise GrowLengthError(
                f"{e}; finished runs are kept: free some space, then run the same bench again to continue"
            ) from None


def _bench(base: TrainConfig, bench_cfg: BenchConfig, out: Path, show_progress: bool) -> dict:
    names, points = bench_cfg.run_names(), parse_sweep(bench_cfg.sweep)
    crashes = _check_all(base, bench_cfg, names, points, out)
    if not (out / "provenance.json").is_file():  # the code that ran the first run, kept when a bench resumes
        write_atomically(out / "provenance.json", json.dumps(provenance(), indent=2) + "\n")
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
        tokens = round(statistics.fmean([read_run(seed_dir(out, BASELINE, s))["tokens"][-1] for s in seeds]))
        budget = dict(budget_tokens=tokens, budget_seconds=None, budget_steps=None)
        cfgs = [
            (run_config(base, n, best[n], s, bench_cfg, **budget), seed_dir(out, n, s, "equal-tokens"))
            for s in seeds
            for n in runnable
        ]
        _run_all(cfgs, lengths, "equal-tokens", show_progress)
    report = summarize(out, base, bench_cfg, names, points, best, crashes)
    from growlength.plots import plot_bench

    dirs = [seed_dir(out, n, s) for s in seeds for n in runnable]
    with writing("the bench's report (bench.json, plots, runs.tar.gz)", out):
        write_atomically(out / "bench.json", json.dumps(report, indent=2) + "\n")
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
        write_atomically(folder / "final-eval.json", json.dumps(report, indent=2) + "\n")


def _check_all(base, bench_cfg: BenchConfig, names: list[str], points: list[dict], out: Path) -> dict:
    """Every run's config is valid before the first one starts (setup's checks, without training).
    Returns the runs Composer itself cannot do: {recipe: {point label: reason}}; any other bad config
    fails the bench here."""
    from growlength.preflight import preflight
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
        results[name] = {"setting": best[name], **versus(baseline, reps)}
        if bench_cfg.equal_tokens:
            finals = [read_run(seed_dir(out, name, s, "equal-tokens")) for s in seeds]
            results[name]["equal_tokens"] = {
                "tokens_each": [f["tokens"][-1] for f in finals],
                "final_val_loss": statistics.fmean([f["val_loss"][-1] for f in finals]),
                "final_val_loss_each": [f["val_loss"][-1] for f in finals],
            }
    report = {
        "provenance": json.loads((out / "provenance.json").read_text()),
        "config": base.to_dict(),
        "bench": dataclasses.asdict(bench_cfg),
        "target_len": base.target_len,
        "model": base.model,
        "params": _params(base),
        "budget": {"seconds": base.budget_seconds, "tokens": base.budget_tokens, "steps": base.budget_steps},
        "tokens_per_step": base.tokens_per_step,
        "seeds": seeds,
        "baseline": BASELINE,
        "sweep": _sweep_table(out, names, points, crashes) if bench_cfg.sweep else None,
        "runs": results,
        "ceiling": ceiling({n: r for n, r in results.items() if "crash" not in r}, base.target_len),
    }
    report["headline"] = headline(report)
    return report


def _params(base: TrainConfig) -> int:
    from growlength.models import params_of
    from growlength.preflight import run_model_config
    from growlength.prepare import resolve_data
    from growlength.tokens import open_tokens

    return params_of(run_model_config(base, open_tokens(resolve_data(base.data, base.vocab_size))))


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


def provenance() -> dict:
    """What a reader needs to trust and rerun the numbers: code, versions, machine, command."""
    import numpy
    import torch
    import transformers

    repo = Path(__file__).resolve().parent.parent
    return {
        "git_commit": _git(repo, "rev-parse", "HEAD"),
        "git_dirty": bool(_git(repo, "status", "--porcelain", "--untracked-files=no")),
        "versions": {
            "growlength": _installed_version("growlength"),
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


def _installed_version(package: str) -> str | None:
    """The installed package's version; None when it runs from a source tree on PYTHONPATH (as the
    device script does), where git_commit says which code ran."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


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
    path, tmp = out / "runs.tar.gz", out / ".runs.tar.gz.tmp"
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for name in ("metrics.jsonl", "config.yaml", "final-eval.json"):
                for file in sorted(out.rglob(name)):
                    tar.add(file, arcname=str(file.relative_to(out)))
        os.replace(tmp, path)  # an earlier archive stays whole until this one is
    finally:
        tmp.unlink(missing_ok=True)
    return path
