"""Measure what GrowLength can save on this hardware, before training: tokens/s and peak memory at each
length with constant tokens per step, beside the speed ratio a FLOP count predicts. It also measures
the machinery itself: the training step against a bare loop over the same model and batch shape, the
loader's speed, the first step at a new length (a stage change) and a checkpoint write.

Steps at the different lengths are interleaved (one step at each length, round after round, in
alternating order), so a slow spell of a shared machine lands on every length alike.
"""

import contextlib
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

from growlength import dist
from growlength.config import TrainConfig
from growlength.flops import flops_per_token
from growlength.meter import Meter
from growlength.steplog import log_step
from growlength.throughput import forward_backward, measure_tokens_per_s, sync_time
from growlength.train import advance, checkpoint, setup, train_step


def profile(cfg: TrainConfig, lengths: list[int], *, rounds: int = 5, show_progress: bool = True) -> dict:
    """Per-length throughput, memory and FLOP prediction; loop overhead; stage-change and checkpoint cost."""
    values = {**cfg.to_dict(), "schedule": "stages", "stages": _stages(lengths), "batch_policy": "tokens"}
    with tempfile.TemporaryDirectory(prefix="growlength-profile-") as tmp:
        run = setup(TrainConfig(**values), Path(tmp) / "run", resume=False)
        shapes = [run.shape_by_len[n] for n in lengths]
        ours: dict[int, list[float]] = {n: [] for n in lengths}
        bare: dict[int, list[float]] = {n: [] for n in lengths}
        peak: dict[int, float] = {}
        first: dict[int, float] = {}
        bar = Meter((rounds + 1) * len(shapes), desc="profile", unit="step", show=show_progress)
        for r in range(rounds + 1):
            for shape in shapes if r % 2 == 0 else shapes[::-1]:
                _reset_peak(run.device)
                started = time.perf_counter()
                loss, _ = train_step(run, shape, started, ahead=False)
                # read before log_step, which resets CUDA's peak after logging it
                peak[shape.seq_len] = max(peak.get(shape.seq_len, 0.0), _peak_mb(run.device))
                advance(run, shape, time.perf_counter() - started, loss)
                log_step(run, shape, loss, 0.0, run.progress.last_step_s)
                elapsed = sync_time(run.device, started)
                bare_s = _bare_step(run, shape)
                bar.update(1)
                if r == 0:  # round 0 meets each length for the first time, as a stage change does
                    first[shape.seq_len] = elapsed
                    continue
                ours[shape.seq_len].append(elapsed)
                bare[shape.seq_len].append(bare_s)
        bar.close()
        started = time.perf_counter()
        checkpoint(run)
        checkpoint_s = time.perf_counter() - started
        loader_tps = _loader_tokens_per_s(run, shapes[0])
        run.trackers.close()
    report = _report(run.model, shapes, ours, bare, peak, first, checkpoint_s, loader_tps, run.device)
    if run.peak_flops:  # MFU at each length, where the device's peak is known (or given), per device
        for row in report["lengths"]:
            row["mfu"] = row["tokens_per_s"] * run.flops_by_len[row["seq_len"]] / (run.peak_flops * run.world.size)
    if cfg.doc_mask:  # what the block-diagonal mask costs where every row crosses a document boundary
        model = dist.unwrap(run.model)
        plain = measure_tokens_per_s(model, shapes, run.device, run.autocast, rounds)
        packed = measure_tokens_per_s(model, shapes, run.device, run.autocast, rounds, packed=True)
        for row in report["lengths"]:
            row["doc_mask_cost"] = plain[row["seq_len"]] / packed[row["seq_len"]] - 1.0
    return report


def _stages(lengths: list[int]) -> str:
    """Equal, exact shares: '64:1/3,128:1/3,256:1/3'."""
    return ",".join(f"{n}:1/{len(lengths)}" for n in lengths)


def _bare_step(run, shape) -> float:
    """The same model, batch shape and optimizer with nothing else: the floor our step is held to."""
    model, device = run.model, run.device
    x = torch.randint(0, dist.unwrap(run.model).config.vocab_size, (shape.rows, shape.seq_len + 1), device=device)
    started = time.perf_counter()
    forward_backward(model, x, shape, run.autocast)
    torch.nn.utils.clip_grad_norm_(model.parameters(), run.cfg.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return sync_time(device, started)


def _loader_tokens_per_s(run, shape, seconds: float = 1.0) -> float:
    started, tokens = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        run.loader.next_batch(shape.seq_len, shape.rows)
        tokens += shape.tokens
    return tokens / (time.perf_counter() - started)


def _reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        with contextlib.suppress(OSError):  # Linux: 5 in clear_refs resets the peak resident size (VmHWM)
            Path("/proc/self/clear_refs").write_text("5")


def _peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
    except (OSError, AttributeError):  # no /proc: the kernel's peak through getrusage (KiB on Linux)
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _report(model, shapes, ours, bare, peak, first, checkpoint_s, loader_tps, device) -> dict:
    target = shapes[-1]
    speed = {s.seq_len: s.tokens / statistics.median(ours[s.seq_len]) for s in shapes}
    flops = {s.seq_len: flops_per_token(model, s.seq_len) for s in shapes}
    rows = []
    for s in shapes:
        median_s = statistics.median(ours[s.seq_len])
        rows.append(
            {
                "seq_len": s.seq_len,
                "rows": s.rows,
                "accum": s.accum,
                "step_s": median_s,
                "tokens_per_s": speed[s.seq_len],
                "measured_speedup": speed[s.seq_len] / speed[target.seq_len],
                "flops_speedup": flops[target.seq_len] / flops[s.seq_len],
                "peak_mb": peak[s.seq_len],
                "overhead_vs_bare": median_s / statistics.median(bare[s.seq_len]) - 1.0,
                "first_step_s": first[s.seq_len],
                "stage_change_vs_step": None if s is shapes[0] else first[s.seq_len] / median_s,
            }
        )
    equal_time = statistics.fmean(speed.values()) / speed[target.seq_len]
    flops_equal_time = statistics.fmean(flops[target.seq_len] / f for f in flops.values())
    return {
        "device": str(device),
        "tokens_per_step": target.tokens,
        "lengths": rows,
        "doubling_equal_time_token_gain": equal_time,
        "doubling_equal_time_token_gain_flops": flops_equal_time,
        "loader_tokens_per_s": loader_tps,
        "loader_vs_model_at_shortest": loader_tps / speed[shapes[0].seq_len],
        "checkpoint_s": checkpoint_s,
        "peak_mb_above_target": max(r["peak_mb"] for r in rows) - peak[target.seq_len],
    }


def format_profile(report: dict) -> str:
    lines = [
        "| seq_len | rows | tokens/s | speed vs target | FLOPs predict | peak MB | step vs bare loop "
        "| first step at this length |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with_mfu = all("mfu" in r for r in report["lengths"])
    if with_mfu:
        lines = [lines[0] + " MFU |", lines[1] + "---|"]
    with_mask = all("doc_mask_cost" in r for r in report["lengths"])
    if with_mask:
        lines = [lines[0] + " doc mask cost |", lines[1] + "---|"]
    for r in report["lengths"]:
        change = r["stage_change_vs_step"]
        lines.append(
            f"| {r['seq_len']} | {r['rows']} | {r['tokens_per_s']:,.0f} | {r['measured_speedup']:.2f}x "
            f"| {r['flops_speedup']:.2f}x | {r['peak_mb']:,.0f} | {r['overhead_vs_bare']:+.1%} "
            f"| {'—' if change is None else f'{change:.2f}x a step'} |"
            + (f" {r['mfu']:.1%} |" if with_mfu else "")
            + (f" {r['doc_mask_cost']:+.1%} |" if with_mask else "")
        )
    lines.append(
        f"\nA doubling schedule with equal time per stage trains {report['doubling_equal_time_token_gain']:.2f}x "
        f"the tokens of fixed-length training at the target in the same time (FLOPs predict "
        f"{report['doubling_equal_time_token_gain_flops']:.2f}x). Loader: {report['loader_tokens_per_s']:,.0f} "
        f"tokens/s, {report['loader_vs_model_at_shortest']:,.0f}x the model's speed at the shortest length. "
        f"Checkpoint write: {report['checkpoint_s']:.2f} s."
    )
    return "\n".join(lines)
