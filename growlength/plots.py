"""Figures: val loss against wall-clock seconds and against tokens, one line per run, stage changes marked."""

import json
from pathlib import Path

from growlength.errors import GrowLengthError


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(train records, eval records) of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise GrowLengthError(f"no metrics.jsonl in {run_dir}: give folders that `growlength train` wrote")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if "loss" in r], [r for r in records if "val_loss" in r]


def stage_changes(train_records: list[dict]) -> list[dict]:
    """The first record at each new seq_len."""
    return [r for prev, r in zip(train_records, train_records[1:]) if r["seq_len"] != prev["seq_len"]]


def plot_runs(run_dirs: list[str | Path], out: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for i, run_dir in enumerate(run_dirs):
        train, evals = read_metrics(run_dir)
        color = f"C{i}"
        for ax, x in zip(axes, ("wall_s", "tokens")):
            ax.plot(
                [r[x] for r in evals],
                [r["val_loss"] for r in evals],
                "o-",
                color=color,
                ms=3,
                label=Path(run_dir).name,
            )
            for change in stage_changes(train):
                ax.axvline(change[x], color=color, ls=":", lw=0.8)
                ax.annotate(
                    str(change["seq_len"]),
                    (change[x], 1.0),
                    xycoords=("data", "axes fraction"),
                    color=color,
                    fontsize=7,
                    ha="left",
                    va="top",
                    rotation=90,
                )
    axes[0].set_xlabel("training time (s)")
    axes[1].set_xlabel("tokens")
    axes[0].set_ylabel("val loss at the target length")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title or "val loss (dotted lines: stage changes, labelled with the new seq_len)")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
