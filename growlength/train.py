"""The reference GrowLength training loop, top to bottom.

setup: data, schedule, model, optimizer, loader, and the checks that fail before any work starts.
loop:  fraction of the budget -> seq_len and lr -> batch -> forward/backward over micro-batches
       -> optimizer step (and the next batch read ahead) -> log -> eval and checkpoint when due.

Shapes (docs/glossary.md): B rows, T positions (T1: seq_len + 1 tokens), R a step's rows, S sample tokens.
"""

import contextlib
import functools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from growlength import dist
from growlength.adaptive import StageWatch, decide, observe
from growlength.adaptive import advance as stage_advance
from growlength.buckets import BucketLoader, cycle_tokens_per_s, token_fraction
from growlength.budget import StepShape
from growlength.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from growlength.config import TrainConfig, save_config
from growlength.errors import GrowLengthError
from growlength.evaluate import val_losses
from growlength.files import WriteFailed, sole_writer, writing
from growlength.flops import device_name, flops_per_token, peak_flops
from growlength.loss import bound_logits, lm_loss
from growlength.mlm import mask_rows, mlm_token_losses
from growlength.models import build_model, compile_model, compile_stats, count_params, eager, set_rope
from growlength.preflight import (
    Preflight,
    check_attention,
    data_path,
    device_for,
    preflight,
    resolve_config,
)
from growlength.prepare import make_out_dir
from growlength.recipes import megatron_reshape
from growlength.schedule import LengthSchedule, doubling_lengths, lr_at, plan_stages, planned_schedule
from growlength.state import Ahead, Progress, Run
from growlength.steplog import log_step, progress_bar, update_bar
from growlength.throughput import measure_tokens_per_s, read_throughput
from growlength.tokens import Loader, doc_position_ids
from growlength.trackers import Trackers, tracker_names


def train(cfg: TrainConfig | None, out: str | Path, *, resume: bool = False, show_progress: bool = True) -> dict:
    """Train per cfg into `out` (cfg None: the one saved there, to resume); returns the last eval record.
    The first process holds the folder for as long as it runs (files.sole_writer): a second writer stops
    at once. A write that fails stops the run in one line that names the last good checkpoint."""
    out = Path(out)
    held = sole_writer(out, "growlength train") if dist.is_first_process() else contextlib.nullcontext()
    with held:
        try:
            run = setup(cfg, out, resume)
            try:
                return _loop(run, show_progress)
            finally:
                run.trackers.close()
        except WriteFailed as e:
            last = latest_checkpoint(out)
            raise GrowLengthError(
                f"{e}; the last good checkpoint is {last or 'none yet'}: free some space, then continue with "
                f"--resume"
            ) from None


def _loop(run: Run, show_progress: bool) -> dict:
    p = run.progress
    if p.last_eval_step < 0:
        evaluated(run, evaluate(run))  # the curves start at the untrained model
    bar = progress_bar(run, show_progress)
    while not finished(run):
        shape = run.shape_by_len[scheduled_len(run, step=p.step, tokens=p.tokens, seconds=p.seconds)]
        if not worth_a_step(run, shape):
            break
        set_positions(run, shape.seq_len)
        started = time.perf_counter()
        loss, lr = train_step(run, shape, started)
        step_s = dist.broadcast_float(time.perf_counter() - started)
        advance(run, shape, step_s, loss)
        if p.watch is not None:
            adapt(run, loss)
        record = log_step(run, shape, loss, lr, step_s)
        update_bar(bar, run, record)
        if eval_count(run) > p.evals:
            evaluated(run, evaluate(run))
        if checkpoint_due(run):
            checkpoint(run)
    bar.close()
    if p.last_eval_step != p.step:
        evaluated(run, evaluate(run))
    if p.step > 0 and run.checkpointed_step != p.step:
        checkpoint(run)
    dist.shutdown()
    return run.last_eval


def setup(cfg: TrainConfig | None, out: Path, resume: bool) -> Run:
    """Everything the loop needs: the checked config, model, optimizer, loader, and the restored progress."""
    cfg = resolve_config(cfg, out, resume)
    device = device_for(cfg.device)
    check_attention(cfg.attn_implementation, device)
    world = dist.init(device)
    checked = preflight(cfg, data_path(cfg, world), world.size)
    make_out_dir(out)
    model = build_model(
        checked.model_cfg, cfg.seed, cfg.attn_implementation, cfg.activation_checkpointing, init_from=cfg.init_from
    )
    n_params = count_params(model)
    flops_by_len = {s.seq_len: flops_per_token(model, s.seq_len) for s in checked.shapes}
    if cfg.objective == "clm":
        bound_logits(model, cfg.loss_chunk_tokens)
    if cfg.compile:
        compile_model(model, len(checked.shapes))
    model = dist.wrap(model, world, device, cfg.parallel)  # built on the CPU, moved (or sharded) onto the device
    run = Run(
        cfg=cfg,
        out=out,
        data=checked.data,
        schedule=checked.schedule,
        budget=checked.budget,
        shape_by_len={s.seq_len: s for s in checked.shapes},
        model=model,
        optimizer=_optimizer(model, cfg, device),
        loader=_loader(checked, cfg, world),
        device=device,
        world=world,
        flops_by_len=flops_by_len,
        peak_flops=peak_flops(device_name(device), cfg.peak_tflops),
        rope_at=checked.rope_at,
    )
    if resume:
        _restore(run)
    if world.is_main:
        with writing("config.yaml", out):
            save_config(cfg, out / "config.yaml")
        run.trackers = Trackers(out, tracker_names(cfg.log_to), step=run.progress.step, config=cfg.to_dict())
        lengths = [s.seq_len for s in checked.shapes]
        shown = lengths if len(lengths) <= 8 else f"{lengths[0]}..{lengths[-1]} ({len(lengths)} lengths)"
        print(
            f"model {cfg.model}: {n_params / 1e6:.2f}M parameters on {device}; schedule "
            f"{cfg.schedule} {shown}; budget {checked.budget.total:g} {checked.budget.unit}"
        )
    if cfg.schedule == "auto":
        run.schedule = auto_schedule(run)
    if cfg.schedule == "adaptive":
        run.progress.watch = run.progress.watch or StageWatch()  # a resumed run's history, or a new one
        planned_tokens_per_s(run, run.schedule.lengths)  # each length's tokens/s, for the rule's speed ratio
    if cfg.schedule == "dd" and run.budget.seconds is not None:
        run.length_fraction = dd_length_fraction(run)
    if cfg.compile:  # what compiling costs from here on is the steps' (measuring for auto compiles too)
        run.compile_seen = compile_stats()
    return run


def auto_schedule(run: Run) -> LengthSchedule:
    """--schedule auto: tokens/s at each candidate length (measured here, rank 0's figures broadcast;
    or read from --plan-from), then the stages plan_stages gives for them. Measuring is setup, like
    building the model: its seconds are reported (`plan_s` in auto-plan.json), not counted as training
    time, which would also spend the LR warmup before the first step. The table is kept in the run's
    progress, so every checkpoint holds it and a resumed run plans the same stages without measuring."""
    started = time.perf_counter()
    table = planned_tokens_per_s(run, run.schedule.all_lengths())
    plan_s = time.perf_counter() - started
    stages = plan_stages(table, unit=run.budget.unit, power=run.cfg.auto_power)
    if run.world.is_main:
        speeds = ", ".join(f"{n}: {v:,.0f}" for n, v in table.items())
        print(f"auto: tokens/s {speeds} ({plan_s:.1f} s) -> stages {stages} (shares of the {run.budget.unit})")
        record = {"tokens_per_s": table, "stages": stages, "plan_s": round(plan_s, 3)}
        with writing("auto-plan.json", run.out):
            (run.out / "auto-plan.json").write_text(json.dumps(record, indent=2))
    return planned_schedule(stages)


def dd_length_fraction(run: Run):
    """Dataset Decomposition under a seconds budget: its cycles counted in tokens, as DD counts them (in
    batches of equal tokens), at each bucket's tokens/s (measured like auto's, kept in the checkpoints;
    buckets.token_fraction)."""
    started = time.perf_counter()
    lengths = run.schedule.lengths
    table = planned_tokens_per_s(run, lengths)
    p = run.progress
    if p.planned_seconds == 0 and p.seconds > 0:  # a checkpoint from before the correction: none so far
        p.planned_seconds = p.seconds
    speed = cycle_tokens_per_s(list(run.schedule.shares), [table[n] for n in lengths])
    if run.world.is_main:
        speeds = ", ".join(f"{n}: {v:,.0f}" for n, v in table.items())
        print(
            f"dd: tokens/s {speeds} ({time.perf_counter() - started:.1f} s): {speed:,.0f} over a cycle; "
            f"cycles counted in tokens, about {run.budget.seconds * speed:,.0f} in {run.budget.seconds:g} s"
        )
    return functools.partial(_dd_fraction, run, speed)


def _dd_fraction(run: Run, tokens_per_s: float, *, step: int, tokens: int, seconds: float) -> float:
    planned = run.progress.planned_seconds
    return token_fraction(
        tokens,
        seconds=seconds,
        planned_seconds=planned,
        budget_seconds=run.budget.seconds,
        tokens_per_s=tokens_per_s,
    )


def planned_tokens_per_s(run: Run, lengths: list[int]) -> dict[int, float]:
    """Tokens/s at each length to plan from: measured here (rank 0's figures broadcast) or read from
    --plan-from, once: kept in the run's progress, so every checkpoint holds the table and a resumed
    run plans the same without measuring. Measuring is setup, like building the model, not training."""
    p, cfg = run.progress, run.cfg
    if not p.planned_tokens_per_s:
        if cfg.plan_from:
            table = read_throughput(cfg.plan_from, lengths)
        else:
            shapes = [run.shape_by_len[n] for n in lengths]
            table = measure_tokens_per_s(dist.unwrap(run.model), shapes, run.device, run.autocast)
        p.planned_tokens_per_s = {str(n): dist.broadcast_float(v) for n, v in table.items()}
    return {int(n): v for n, v in p.planned_tokens_per_s.items()}


def adapt(run: Run, loss: float) -> None:
    """--schedule adaptive, after each step: add the step's loss to the history and end the stage if the
    rule says so (adaptive.decide; rank 0's decision broadcast, though every rank has the same history),
    and any later one the floors leave no time (a run of few steps), logging why."""
    p, watch, lengths = run.progress, run.progress.watch, run.schedule.lengths
    fraction = run.budget.fraction(step=p.step, tokens=p.tokens, seconds=p.seconds)
    step = fraction - (watch.points[-1][0] if watch.points else watch.started)  # this step's share
    floor, ceiling = run.cfg.adaptive_floor, run.cfg.adaptive_ceiling
    observe(watch, fraction, p.seconds, loss, window=floor / len(lengths) / 2)
    while watch.stage + 1 < len(lengths):  # a change, then any the later floors force at once
        speeds = p.planned_tokens_per_s
        ratio = speeds[str(lengths[watch.stage + 1])] / speeds[str(lengths[watch.stage])]
        bounds = dict(n_stages=len(lengths), speed_ratio=ratio, floor=floor, ceiling=ceiling, step=step)
        reason = dist.broadcast_json(decide(watch, fraction, **bounds))
        if reason is None:
            break
        decision = stage_advance(watch, fraction, reason, lengths)
        decision["step"] = p.step
        if run.world.is_main:
            print(f"adaptive: step {p.step}: {decision['from']} -> {decision['to']}, {reason}", file=sys.stderr)


def scheduled_len(run: Run, *, step: int, tokens: int, seconds: float) -> int:
    """The length of the step after `step` steps, `tokens` tokens and `seconds` of training: the
    schedule at the fraction of its budget done (`step` seeds dd's draw); for adaptive, the stage its
    decisions have reached."""
    if run.progress.watch is not None:
        return run.schedule.lengths[run.progress.watch.stage]
    fraction = (run.length_fraction or run.budget.fraction)(step=step, tokens=tokens, seconds=seconds)
    return run.schedule.seq_len_at(fraction, step)


def _loader(checked: Preflight, cfg: TrainConfig, world: dist.World) -> Loader | BucketLoader:
    """The re-chunking stream, or for Dataset Decomposition the bucket loader."""
    where = dict(seed=cfg.seed, rank=world.rank, world_size=world.size)
    if checked.buckets is not None:
        return BucketLoader(checked.data.train, checked.buckets, **where)
    return Loader(checked.data.train, block_tokens=cfg.block_tokens, lanes=cfg.lanes, **where)


def train_step(run: Run, shape: StepShape, started: float, ahead: bool = True) -> tuple[float, float]:
    """One optimizer step: accumulate gradients over micro-batches, clip, set the LR, step; then, while
    the device works through what was queued, read the next step's batch (unless this is the last step,
    or `ahead` is off: profile's steps follow no schedule); then wait for the loss.
    Returns the mean loss and the LR used."""
    parts_BT1 = take_batch(run, shape)  # per part of the step, rows of its inputs and, one token on, targets
    masked = step_masks(run, shape, parts_BT1) if run.cfg.objective == "mlm" else None
    total = torch.zeros((), device=run.device)
    micro = 0  # over every part: gradients are reduced in the step's last micro-batch
    for part, rows_BT1 in zip(shape.parts, parts_BT1, strict=True):
        for first in range(0, len(rows_BT1), part.micro_rows):
            host_BT1 = rows_BT1[first : first + part.micro_rows]
            # Weight by tokens so each micro-batch counts for what it holds: the sum is the step's mean.
            weight = host_BT1[:, 1:].numel() / (shape.tokens // run.world.size)
            with dist.no_sync(run.model, micro, shape.micro_batches), run.autocast():
                if masked is not None:  # masked on the host (seeded), then sent
                    inputs_BT, labels_BT = (t.to(run.device) for t in masked.micro[micro])
                    loss = mlm_token_losses(run.model, inputs_BT, labels_BT).sum() * masked.scale
                else:
                    micro_BT1 = host_BT1.to(run.device, non_blocking=True)
                    position_ids = _doc_positions(run, host_BT1[:, :-1])
                    loss = lm_loss(run.model, micro_BT1[:, :-1], micro_BT1[:, 1:], position_ids) * weight
                loss.backward()
            total += loss.detach()  # on the device: one sync per step, below
            micro += 1
    if run.cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip)
    after = _progress_after_step(run, shape, started)
    fraction = run.budget.fraction(**after)
    lr = set_lr(run, fraction, shape.seq_len)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if ahead and fraction < 1.0:
        read_ahead(run, run.shape_by_len[scheduled_len(run, **after)])
    loss = dist.mean_over_ranks(total.item())
    if not math.isfinite(loss):
        raise GrowLengthError(
            f"the loss is {loss} at step {run.progress.step + 1} (seq_len {shape.seq_len}): training stopped; "
            "the last good checkpoint is intact. Lower lr or raise warmup and resume"
        )
    return loss, lr


@dataclass
class StepMasks:
    micro: list[tuple[torch.Tensor, torch.Tensor]]  # (inputs, labels) of each micro-batch, in order
    scale: float  # ranks / the step's masked tokens on all ranks: the summed losses make their mean


def step_masks(run: Run, shape: StepShape, parts_BT1: list[torch.Tensor]) -> StepMasks:
    """--objective mlm: each part of the step masked from one seeded draw for all its rows on every rank
    (mlm.mask_rows: this rank's rows follow the lower ranks'), cut into micro-batches, and the scale
    that makes the step's loss the mean over all its masked tokens on every rank together (DDP averages
    the ranks' gradients: hence x ranks). One small collective per step; the step is then the same
    however it is split over micro-batches and ranks, as HF Trainer does with `num_items_in_batch`."""
    micro = []
    for part_index, (part, rows_BT1) in enumerate(zip(shape.parts, parts_BT1, strict=True)):
        keys = (run.cfg.seed, run.progress.step, part_index)
        first, rows = run.world.rank * len(rows_BT1), run.world.size * len(rows_BT1)
        vocab = run.data.vocab_size  # the mask id is the first after the tokenizer's
        inputs_BT, labels_BT = mask_rows(
            rows_BT1[:, :-1],
            *keys,
            first_row=first,
            rows=rows,
            rate=run.cfg.mask_rate,
            mask_id=vocab,
            vocab_size=vocab,
        )
        micro += [
            (inputs_BT[i : i + part.micro_rows], labels_BT[i : i + part.micro_rows])
            for i in range(0, len(rows_BT1), part.micro_rows)
        ]
    chosen = dist.sum_over_ranks(float(sum(int((labels != -100).sum()) for _, labels in micro)))
    return StepMasks(micro, run.world.size / max(chosen, 1.0))


def take_batch(run: Run, shape: StepShape) -> list[torch.Tensor]:
    """This rank's rows of a step at `shape`, per part of it (rows of seq_len + 1 tokens; a second part
    for SkyLadder's fragments): the batch read ahead if it was
    read for this shape; else (a seconds budget that changed length a step sooner than guessed) the
    loader goes back to where it was before reading ahead, and reads for the shape the step has."""
    ahead, run.ahead = run.ahead, None
    if ahead is not None:
        if ahead.shape == shape:
            return ahead.parts_BT1
        run.loader.load_state_dict(ahead.loader_state)
    return [_host_rows(run, *part) for part in read_batch(run.loader, shape)]


def read_ahead(run: Run, shape: StepShape) -> None:
    """Read the batch of the step expected next (its length from the progress this step ends at, as the
    loop will compute it: exact for step and token budgets) while the device computes this one."""
    state, cursor = run.loader.state_dict(), run.loader.cursor
    run.ahead = Ahead(shape, state, cursor, [_host_rows(run, *part) for part in read_batch(run.loader, shape)])


def loader_state(run: Run) -> dict:
    """The loader's state as of the last step trained (before any read ahead)."""
    return run.ahead.loader_state if run.ahead is not None else run.loader.state_dict()


def data_tokens(run: Run) -> int:
    """Tokens the loader has read for the steps trained (before any read ahead)."""
    return run.ahead.cursor if run.ahead is not None else run.loader.cursor


def _host_rows(run: Run, inputs_BT: np.ndarray, targets_BT: np.ndarray) -> torch.Tensor:
    """A batch as one contiguous CPU tensor of rows of seq_len + 1 tokens (the targets are the inputs one
    token on), written straight into pinned memory on CUDA: each micro-batch then goes to the device in
    one asynchronous copy, and inputs and targets are views of it there."""
    rows_BT1 = torch.empty(
        (len(inputs_BT), inputs_BT.shape[1] + 1), dtype=torch.int64, pin_memory=run.device.type == "cuda"
    )
    out_BT1 = rows_BT1.numpy()
    out_BT1[:, :-1], out_BT1[:, -1] = inputs_BT, targets_BT[:, -1]
    return rows_BT1


def _doc_positions(run: Run, inputs_BT: torch.Tensor) -> torch.Tensor | None:
    """With --doc-mask, position ids restarting at each document (None: 0 .. seq_len - 1 in every row)."""
    if not run.cfg.doc_mask:
        return None
    positions_BT = doc_position_ids(inputs_BT.numpy(), int(run.data.meta["eos_id"]))
    return torch.from_numpy(positions_BT).to(run.device, non_blocking=True)


def read_batch(loader: Loader, shape: StepShape) -> list[tuple[np.ndarray, np.ndarray]]:
    """This rank's (inputs, targets) of one step, per part: windows of the stream; or the step's samples
    of row_stride + 1 tokens, for Megatron's reshape each micro-batch of them cut into rows of seq_len,
    for SkyLadder's windows each cut into windows of seq_len and its remainder (the second part)."""
    if not shape.cut:
        return [loader.next_batch(shape.seq_len, shape.rows, row_stride=shape.row_stride)]
    inputs, targets = loader.next_batch(shape.row_stride, shape.samples)
    samples_BS = np.concatenate([inputs, targets[:, -1:]], axis=1)
    if shape.cut == "windows":
        return [(rows[:, :-1], rows[:, 1:]) for rows in cut_windows(samples_BS, shape.seq_len)]
    mbs = len(samples_BS) // shape.accum
    rows_R = np.concatenate(
        [megatron_reshape(samples_BS[i * mbs : (i + 1) * mbs], shape.seq_len) for i in range(shape.accum)]
    )
    return [(rows_R[:, :-1], rows_R[:, 1:])]


def cut_windows(samples_BS: np.ndarray, seq_len: int) -> list[np.ndarray]:
    """SkyLadder's windows of samples (B, T + 1): each sample's whole windows of seq_len (rows of
    seq_len + 1 tokens, each one token into the next), then, if seq_len does not divide T, each
    sample's last T mod seq_len targets as one shorter row: every target of the sample once.

    >>> [rows.tolist() for rows in cut_windows(np.arange(8)[None], 3)]
    [[[0, 1, 2, 3], [3, 4, 5, 6]], [[6, 7]]]
    """
    batch, sample_len = samples_BS.shape[0], samples_BS.shape[1] - 1
    windows, rest = divmod(sample_len, seq_len)
    starts = np.arange(windows) * seq_len
    rows_RL1 = samples_BS[:, starts[:, None] + np.arange(seq_len + 1)].reshape(batch * windows, seq_len + 1)
    return [rows_RL1, samples_BS[:, windows * seq_len :]] if rest else [rows_RL1]


def advance(run: Run, shape: StepShape, step_s: float, loss: float) -> None:
    """Every change a step makes to the run's state: the counters, the recent losses a stage change is
    judged against, and (with --compile) the graphs dynamo built in the step and their seconds."""
    p = run.progress
    p.step += 1
    p.tokens += shape.tokens
    p.seconds += step_s
    p.last_step_s = step_s
    p.step_s_by_len[str(shape.seq_len)] = step_s
    if shape.seq_len not in p.seq_lens:
        p.seq_lens.append(shape.seq_len)
    p.recent = [*p.recent, (shape.seq_len, loss)][-6:]
    if run.length_fraction is not None:  # dd under seconds: its speed estimate's correction
        p.planned_seconds += shape.tokens / p.planned_tokens_per_s[str(shape.seq_len)]
    if run.cfg.compile:
        graphs, seconds = compile_stats()
        p.compiles += graphs - run.compile_seen[0]
        p.last_compile_s = seconds - run.compile_seen[1]
        p.compile_s += p.last_compile_s
        run.compile_seen = (graphs, seconds)


def set_positions(run: Run, seq_len: int) -> None:
    """The position policy's RoPE for this length (a no-op unless rope_theta or rope_scaling changes it
    here); a function of the length alone, so a resumed run gets it back without saved state."""
    if set_rope(dist.unwrap(run.model), run.rope_at(seq_len)) and run.world.is_main:
        print(f"seq_len {seq_len}: RoPE {run.rope_at(seq_len)}", file=sys.stderr)


def finished(run: Run) -> bool:
    p = run.progress
    return run.budget.fraction(step=p.step, tokens=p.tokens, seconds=p.seconds) >= 1.0


def worth_a_step(run: Run, shape: StepShape) -> bool:
    """Under a seconds budget, take the next step only if it ends nearer the budget than stopping now
    does (its time estimated by the last step at its length, else the last step): every run then
    trains within half a step of the budget, instead of always past it."""
    p = run.progress
    if run.budget.seconds is None:
        return True
    estimate = p.step_s_by_len.get(str(shape.seq_len), p.last_step_s)
    return p.seconds + estimate / 2 <= run.budget.seconds


def set_lr(run: Run, fraction: float, seq_len: int) -> float:
    """The LR schedule at `fraction` (warmup, cosine), times the multiplier of the stage at seq_len
    (the length the step trained at) where the stages give one."""
    lr = lr_at(fraction, lr=run.cfg.lr, warmup=run.cfg.warmup, min_lr_ratio=run.cfg.min_lr_ratio)
    lr *= run.schedule.lr_scale(seq_len)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    return lr


def _progress_after_step(run: Run, shape: StepShape, started: float) -> dict:
    """Progress at the end of this step (steps, tokens, seconds), which the LR is set for. Known exactly
    for steps and tokens; for seconds, the time spent so far (rank 0's, so every rank sets the same LR)
    stands for the step's: the optimizer step itself is what remains. So the first step trains at a
    small LR, not at zero."""
    p = run.progress
    seconds = p.seconds
    if run.budget.seconds is not None:
        seconds += dist.broadcast_float(time.perf_counter() - started)
    return {"step": p.step + 1, "tokens": p.tokens + shape.tokens, "seconds": seconds}


def eval_count(run: Run) -> int:
    """How many evaluation points the run has passed (every eval_every_tokens, or evals over the budget)."""
    p, cfg = run.progress, run.cfg
    if cfg.eval_every_tokens:
        return p.tokens // cfg.eval_every_tokens
    fraction = run.budget.fraction(step=p.step, tokens=p.tokens, seconds=p.seconds)
    return math.floor(fraction * cfg.evals + 1e-9)


def evaluate(run: Run) -> dict:
    """The evaluation record: val loss at the target length and at every stage length seen (each rank
    scoring its share of the windows). It changes nothing; `evaluated` logs it and counts it."""
    p, cfg = run.progress, run.cfg
    started = time.perf_counter()
    with eager() if cfg.compile else contextlib.nullcontext():
        by_len = val_losses(
            dist.unwrap(run.model),
            run.data.val,
            _eval_lengths(run),
            eval_tokens=cfg.eval_tokens,
            micro_batch_tokens=cfg.micro_batch_tokens,
            device=run.device,
            autocast=run.autocast,
            objective=cfg.objective,
        )
    record = {
        "step": p.step,
        "tokens": p.tokens,
        "seq_len": p.seq_lens[-1] if p.seq_lens else run.schedule.seq_len_at(0.0),
        "wall_s": round(p.seconds, 3),
        "val_loss": by_len[cfg.target_len],
        "data_tokens": data_tokens(run),
        "val_loss_by_len": {str(k): v for k, v in by_len.items()},
        "eval_s": round(time.perf_counter() - started, 3),
    }
    return record


def evaluated(run: Run, record: dict) -> None:
    """Every change an evaluation makes to the run's state (the evaluations passed, the last one), and
    its record logged."""
    p = run.progress
    p.evals, p.last_eval_step = eval_count(run), p.step
    run.last_eval = record
    run.trackers.write(record)


def checkpoint_due(run: Run) -> bool:
    """Every checkpoint_every steps; without it, at each evaluation (but the first, of the untrained model)."""
    p, every = run.progress, run.cfg.checkpoint_every
    if p.step == 0 or run.checkpointed_step == p.step:
        return False
    return p.step % every == 0 if every else p.last_eval_step == p.step


def checkpoint(run: Run) -> None:
    """Gather the full state (every rank takes part: FSDP gathers shards) and write it from rank 0."""
    model_state, optim_state = dist.full_state(run.model, run.optimizer)
    if run.world.is_main:
        state = {
            "progress": asdict(run.progress),
            "loader": loader_state(run),
            "config": run.cfg.to_dict(),
            "tokenizer_sha256": run.data.meta["tokenizer_sha256"],
            "last_eval": run.last_eval,
        }
        save_checkpoint(
            run.out,
            step=run.progress.step,
            model_state=model_state,
            optim_state=optim_state,
            model_config=dist.unwrap(run.model).config,
            state=state,
            keep=run.cfg.keep_checkpoints,
        )
    run.checkpointed_step = run.progress.step
    dist.barrier()


def _eval_lengths(run: Run) -> list[int]:
    """The target, plus the lengths trained so far that lie on the doubling grid (all stages of a
    stepped schedule; a ramp's lengths are many, so only the grid points are scored)."""
    target = run.cfg.target_len
    if not run.cfg.eval_seen_lengths:
        return [target]
    grid = set(doubling_lengths(run.schedule.all_lengths()[0], target))
    # A model trained elsewhere (--init-from) is scored at every stage length from the start: before and after
    seen = run.schedule.all_lengths() if run.cfg.init_from else run.progress.seq_lens
    return sorted({target} | {s for s in seen if not run.schedule.is_ramp or s in grid})


def _optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (fused into one kernel on CUDA); matrices decay, biases and norms do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), fused=device.type == "cuda")


def _restore(run: Run) -> None:
    """Progress and last eval record of the newest good checkpoint; model, optimizer, loader restored.
    Rank 0 alone looks for it and verifies its checksums; the others follow rank 0's choice."""
    found = latest_checkpoint(run.out) if run.world.is_main else None
    found = dist.broadcast_json(str(found) if found else None)
    if found is None:
        if run.world.is_main:
            print(f"no checkpoint in {run.out}: starting from the beginning")
        return
    state = load_checkpoint(Path(found) if run.world.is_main else None, run.model, run.optimizer)
    run.loader.load_state_dict(state["loader"])
    run.progress, run.last_eval = Progress(**state["progress"]), state["last_eval"]
    if isinstance(run.progress.watch, dict):
        run.progress.watch = StageWatch.from_dict(run.progress.watch)
    run.checkpointed_step = run.progress.step
    if run.world.is_main:
        print(f"resuming from {found} (step {run.progress.step}, {run.progress.tokens:,} tokens)")
