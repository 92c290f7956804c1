"""Figures: val loss against wall-clock seconds and against tokens, one line per run, stage changes
marked; and for a bench, tokens/s by length and loss by evaluation length."""

from pathlib import Path

from growlength.config import point_label
from growlength.trackers import read_metrics

MAX_MARKED_STAGES = 8  # a ramp changes length every few steps: marking each would hide the curves


def stage_changes(train_records: list[dict]) -> list[dict]:
    """The first record at each new seq_len."""
    return [r for prev, r in zip(train_records, train_records[1:]) if r["seq_len"] != prev["seq_len"]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_runs(
    run_dirs: list[str | Path],
    out: str | Path,
    *,
    labels: list[str] | None = None,
    title: str | None = None,
    level: float | None = None,
) -> Path:
    """Val loss against training seconds and tokens; `level` draws a horizontal reference line."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    labels = labels or [Path(d).name for d in run_dirs]
    colors = {label: f"C{i}" for i, label in enumerate(dict.fromkeys(labels))}
    for run_dir, label in zip(run_dirs, labels):
        train, evals = read_metrics(run_dir)
        changes = stage_changes(train)
        first_of_label = labels.index(label) == list(run_dirs).index(run_dir)
        for ax, x in zip(axes, ("wall_s", "tokens")):
            ax.plot(
                [r[x] for r in evals],
                [r["val_loss"] for r in evals],
                "o-",
                ms=2.5,
                lw=1.2,
                color=colors[label],
                label=label if first_of_label else None,
            )
            for change in changes if len(changes) < MAX_MARKED_STAGES else []:
                ax.axvline(change[x], color=colors[label], ls=":", lw=0.8)
                ax.annotate(
                    str(change["seq_len"]),
                    (change[x], 1.0),
                    xycoords=("data", "axes fraction"),
                    color=colors[label],
                    fontsize=7,
                    ha="left",
                    va="top",
                    rotation=90,
                )
    for ax, xlabel in zip(axes, ("training time (s)", "tokens trained")):
        if level is not None:
            ax.axhline(level, color="grey", ls="--", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val loss at the target length")
    axes[0].legend()
    _zoom(axes[0], run_dirs)
    fig.suptitle(title or "val loss (dotted lines: stage changes, labelled with the new seq_len)")
    return _save(fig, out)


def _zoom(ax, run_dirs) -> None:
    """Leave out the untrained model's loss so the differences that matter are visible."""
    tails = [e["val_loss"] for d in run_dirs for e in read_metrics(d)[1][1:]]
    if tails:
        low, high = min(tails), max(tails)
        ax.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.05 * (high - low + 1e-9))


def plot_bench(out: Path, report: dict, run_dirs: list[Path], labels: list[str]) -> list[Path]:
    """bench-loss.png, bench-throughput.png, bench-extrapolation.png and bench-positions.png in `out`
    (and bench-sweep.png after a sweep)."""
    baseline = report["runs"][report["baseline"]]["final_val_loss"]
    budget = {k: v for k, v in report["budget"].items() if v}
    title = (
        f"{report['model']}, target {report['target_len']}, budget {budget}: val loss (dashed: baseline's final)"
    )
    ran = {name: run for name, run in report["runs"].items() if "crash" not in run}
    paths = [plot_runs(run_dirs, out / "bench-loss.png", labels=labels, title=title, level=baseline)]
    paths.append(
        _plot_by_len(ran, report, "tokens_per_s_by_len", "training tokens/s", out / "bench-throughput.png")
    )
    paths.append(_plot_by_len(ran, report, "val_loss_by_len", "final val loss", out / "bench-extrapolation.png"))
    if all(run.get("val_loss_by_position") for run in ran.values()):
        paths.append(_plot_positions(ran, report["target_len"], out / "bench-positions.png"))
    if report.get("sweep"):
        paths.append(_plot_sweep(report["sweep"], out / "bench-sweep.png"))
    return paths


def _plot_sweep(sweep: dict, out: Path) -> Path:
    """Final val loss of every recipe at every sweep point (crashes left out)."""
    plt = _pyplot()
    labels = [point_label(row["setting"]) for row in next(iter(sweep.values()))]
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(labels)), 4.5))
    for i, (name, rows) in enumerate(sweep.items()):
        points = [(j, row["final_val_loss"]) for j, row in enumerate(rows) if "final_val_loss" in row]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", ms=4, color=f"C{i}", label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("final val loss (sweep seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("the sweep: each recipe's best point is rerun with fresh seeds")
    return _save(fig, out)


def _plot_positions(runs: dict, target_len: int, out: Path) -> Path:
    """Each recipe's final loss by position bucket, at the target and at the longest length evaluated
    (beyond the target: extrapolation), one point per bucket at its last position."""
    plt = _pyplot()
    evaluated = sorted({int(n) for run in runs.values() for n in run["val_loss_by_position"]})
    windows = [n for n in evaluated if n >= target_len] or evaluated[-1:]  # else the longest there is
    windows = [windows[0], windows[-1]] if len(windows) > 1 else windows
    fig, axes = plt.subplots(1, len(windows), figsize=(6.5 * len(windows), 4.5), squeeze=False)
    for ax, window in zip(axes[0], windows, strict=True):
        for i, (name, run) in enumerate(runs.items()):
            buckets = run["val_loss_by_position"].get(str(window), [])
            ax.plot(
                [b["positions"][1] for b in buckets],
                [b["loss"] for b in buckets],
                "o-",
                ms=3,
                color=f"C{i}",
                label=name,
            )
        ax.axvline(target_len, color="grey", ls="--", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("position in the window (bucket's last; dashed: the target)")
        ax.set_ylabel(f"final loss, windows of {window}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("does the model use its whole context? loss by position, mean over seeds")
    return _save(fig, out)


def _plot_by_len(runs: dict, report: dict, key: str, ylabel: str, out: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, run) in enumerate(runs.items()):
        points = sorted((int(k), v) for k, v in run[key].items())
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", ms=3, color=f"C{i}", label=name)
    ax.axvline(report["target_len"], color="grey", ls="--", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (dashed: the target)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out


def plot_extrapolation(reports: list[dict], out: str | Path) -> Path:
    """Perplexity against evaluation length: one colour per model, one line style per RoPE mode; each
    model's longest trained length dotted."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.8))
    styles = dict(zip(("none", "linear", "dynamic", "yarn"), ("o-", "s--", "^-.", "d:")))
    for i, report in enumerate(reports):
        name = _model_name(report["checkpoint"])
        for mode in dict.fromkeys(r["rope_scaling"] for r in report["results"]):
            rows = [r for r in report["results"] if r["rope_scaling"] == mode]
            factor = f" x{rows[0]['rope_factor']:g}" if mode != "none" else ""
            ax.plot(
                [r["seq_len"] for r in rows],
                [r["ppl"] for r in rows],
                styles[mode],
                ms=3.5,
                lw=1.2,
                color=f"C{i}",
                label=f"{name}: {mode}{factor}",
            )
        ax.axvline(report["longest_trained"], color=f"C{i}", ls=":", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("evaluation length (dotted: longest trained length)")
    ax.set_ylabel("val perplexity")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("length extrapolation, with and without RoPE scaling")
    return _save(fig, out)


def plot_eval_positions(reports: list[dict], out: str | Path) -> Path | None:
    """`eval --plot`'s second figure: each model's loss by position bucket (plain RoPE), in windows of
    its longest trained length and of the longest length evaluated (or, with none that long, the
    longest evaluated), as the bench draws its runs. None when no plain-RoPE length was evaluated."""
    runs = {}
    for i, report in enumerate(reports):
        name = _model_name(report["checkpoint"])
        by_len = {
            str(r["seq_len"]): r["loss_by_position"] for r in report["results"] if r["rope_scaling"] == "none"
        }
        if by_len:
            runs[name if name not in runs else f"{name} ({i + 1})"] = {"val_loss_by_position": by_len}
    if not runs:
        return None
    return _plot_positions(runs, min(r["longest_trained"] for r in reports), Path(out))


def _model_name(checkpoint: str) -> str:
    """The run folder's name for a checkpoint at RUN/checkpoints/step_N (RECIPE/repeatK for a bench's
    runs), else the folder's own."""
    path = Path(checkpoint)
    run = path.parent.parent if path.parent.name == "checkpoints" else path
    return f"{run.parent.name}/{run.name}" if run.name.startswith("repeat") else run.name


def plot_scale(rows: list[dict], out: str | Path) -> Path:
    """The scale ladder (report.scale_rows): speedup at equal time against tokens per parameter, one
    colour per recipe, one line style per model size (the baseline is the line at 1x: by definition, not
    its seeds' scatter around their mean); beside it, the final loss gap to the baseline. A recipe with a
    seed that never reached the baseline's loss is an x at 1x."""
    plt = _pyplot()
    from matplotlib import ticker

    fig, (speed_ax, gap_ax) = plt.subplots(1, 2, figsize=(13, 4.8))
    recipes = sorted({row["recipe"] for row in rows if not row["baseline"]}, key=lambda r: (r != "growlength", r))
    models = sorted({(row["params"], row["model"]) for row in rows})
    styles = ["o-", "s--", "^:", "D-."]
    for i, recipe in enumerate(recipes):
        for j, (_, model) in enumerate(models):
            mine = [row for row in rows if row["recipe"] == recipe and row["model"] == model]
            if not mine:
                continue
            label = f"{recipe}, {model}" if len(models) > 1 else recipe
            xs = [row["tokens_per_param"] for row in mine]
            reached = [(row["tokens_per_param"], row["speedup"]) for row in mine if row["speedup"]]
            speed_ax.plot(
                [x for x, _ in reached], [y for _, y in reached], styles[j % 4], color=f"C{i}", label=label
            )
            missed = [row["tokens_per_param"] for row in mine if not row["speedup"]]
            speed_ax.plot(missed, [1.0] * len(missed), "x", ms=9, color=f"C{i}")  # a seed never reached it
            for row in mine:  # each seed's speedup, small
                seeds = [s for s in row["speedup_each"] if s]
                speed_ax.plot([row["tokens_per_param"]] * len(seeds), seeds, ".", ms=3, color=f"C{i}", alpha=0.6)
            gap_ax.plot(xs, [row["final_gap"] for row in mine], styles[j % 4], color=f"C{i}", label=label)
    speed_ax.axhline(1.0, color="black", lw=1.2, label="fixed length (the tuned baseline)")
    gap_ax.axhline(0.0, color="black", lw=1.2)
    for ax in (speed_ax, gap_ax):
        ax.set_xscale("log")
        ax.axvline(20, color="grey", lw=0.8, ls=":")  # Chinchilla's compute-optimal ratio
        ax.text(20, 1.0, " 20: Chinchilla", transform=ax.get_xaxis_transform(), va="top", fontsize=7, color="grey")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_xlabel("tokens per parameter (the baseline's, at equal time)")
        ax.grid(alpha=0.3, which="both")
    speed_ax.set_yscale("log", base=2)
    speed_ax.yaxis.set_major_locator(ticker.FixedLocator([0.75, 1, 1.25, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32]))
    speed_ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:g}x"))
    speed_ax.yaxis.set_minor_locator(ticker.NullLocator())
    speed_ax.set_ylabel("speedup to the baseline's final loss (x: a seed never reached it)")
    gap_ax.set_ylabel("final val loss minus the baseline's")
    speed_ax.legend(fontsize=7)
    fig.suptitle("does the lead hold as the run grows? equal time against the tuned fixed-length baseline")
    return _save(fig, out)
