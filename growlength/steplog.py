"""The training loop's per-step record (metrics.jsonl, trackers) and its progress line: what a step
logs, what a stage change logs, what compiling cost, and the bar or plain line a person reads. These
read the run's state (train.advance changes it) and change none of it."""

import statistics
import sys

import torch

from growlength.budget import StepShape
from growlength.meter import Meter
from growlength.state import Run


def log_step(run: Run, shape: StepShape, loss: float, lr: float, step_s: float) -> dict:
    """The step's record, written to metrics.jsonl and the trackers: its length, loss, LR and speed;
    MFU, compiling and peak memory where they apply; the loss jump at a stage change."""
    p = run.progress
    record = {
        "step": p.step,
        "tokens": p.tokens,
        "seq_len": shape.seq_len,
        "rows": shape.rows,
        "loss": loss,
        "lr": lr,
        "wall_s": round(p.seconds, 4),
        "tokens_per_s": round(shape.tokens / max(step_s, 1e-9), 1),
        "stage": stage(run, shape.seq_len),
    }
    if run.peak_flops:  # tokens/s is every rank's together, the peak one device's
        flops_per_s = record["tokens_per_s"] * run.flops_by_len[shape.seq_len]
        record["mfu"] = round(flops_per_s / (run.peak_flops * run.world.size), 4)
    if run.cfg.compile:  # this step's compiling (inside wall_s) and the run's graphs so far
        record.update(compile_s=round(p.last_compile_s, 3), compiles=p.compiles)
    if run.device.type == "cuda":  # this step's peak (a stage's is the largest of its steps')
        record["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(run.device) / 2**20)
        torch.cuda.reset_peak_memory_stats(run.device)
    before = p.recent[:-1]  # the steps before this one (advance added it)
    if run.schedule.has_stages and before and before[-1][0] != shape.seq_len:
        record.update(stage_change_record(loss, [recent_loss for _, recent_loss in before]))
        if record["spike"] and run.world.is_main:
            print(
                f"loss spike at the change to seq_len {shape.seq_len}: {record['loss_jump']:+.3f}", file=sys.stderr
            )
    watch = p.watch
    reasons = [d["reason"] for d in watch.decisions if d.get("step") == p.step] if watch is not None else []
    if reasons:  # the next step trains at the next length (or later: a short run may skip one)
        record["stage_decision"] = "; then ".join(reasons)
    run.trackers.write(record)
    return record


def stage(run: Run, seq_len: int) -> int:
    """The stage of a length: its place (from 1) among the schedule's lengths, in the record and the bar."""
    return run.schedule.all_lengths().index(seq_len) + 1


def stage_change_record(loss: float, before: list[float]) -> dict:
    """The first step at a new length: its loss against the last steps before the change. A spike is a
    rise of more than 3 standard deviations of those steps (or any rise, with one step to compare)."""
    mean = statistics.fmean(before)
    noise = statistics.stdev(before) if len(before) > 1 else 0.0
    jump = loss - mean
    return {"stage_change": True, "loss_jump": jump, "spike": jump > 0 and jump > 3 * noise}


def progress_bar(run: Run, show: bool) -> Meter:
    p, unit = run.progress, run.budget.unit
    done = {"steps": p.step, "tokens": p.tokens, "seconds": p.seconds}[unit]
    return Meter(
        run.budget.total,
        initial=done,
        desc="train",
        unit={"steps": "step", "tokens": "token", "seconds": "s"}[unit],
        scale=unit == "tokens",
        show=show and run.world.is_main,
        every_s=run.cfg.log_every_seconds,
    )


def update_bar(bar: Meter, run: Run, record: dict) -> None:
    done = {"steps": 1, "tokens": run.shape_by_len[record["seq_len"]].tokens, "seconds": run.progress.last_step_s}
    stages = len(run.schedule.all_lengths())
    shown = f"stage {record['stage']}/{stages} " if stages < 10 else ""
    postfix = (
        f"{shown}seq_len {record['seq_len']} rows {record['rows']} "
        f"{record['tokens_per_s']:,.0f} tok/s "
        + (f"MFU {record['mfu']:.0%} " if "mfu" in record else "")
        + f"loss {record['loss']:.3f}"
    )
    bar.update(done[run.budget.unit], postfix)
