"""GrowLength in a `transformers.Trainer` script: a dataset (with its collator) and a callback.

    from growlength import make_schedule
    from growlength.integrations.hf_trainer import GrowLengthCallback, GrowLengthDataset

    args = TrainingArguments(..., max_steps=2000, per_device_train_batch_size=1, gradient_accumulation_steps=4)
    schedule = make_schedule("doubling", start_len=128, target_len=1024)
    dataset = GrowLengthDataset("runs/data", schedule, args, tokens_per_batch=8192)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=dataset.collate,
                      callbacks=[GrowLengthCallback(dataset)])
    trainer.train()                                  # or trainer.train(resume_from_checkpoint=True)

Each item of the dataset is one whole micro-batch of `tokens_per_batch` tokens (rows = tokens_per_batch /
seq_len) at the length the schedule gives the optimizer step it belongs to, with fraction = step /
max_steps. So every optimizer step holds tokens_per_batch x gradient_accumulation_steps x world_size
tokens whatever the length: Trainer's LR schedule over max_steps is a schedule over tokens, and
`num_input_tokens_seen` is exact. Labels are the next tokens (`shift_labels`), so every token of a
window is a target, as in `growlength train`. A micro-batch's rows come from up to `lanes` far-apart
regions of the stream (`tokens.Loader`), as in `growlength train`.

With `objective="mlm"` (an encoder such as ModernBERT, `AutoModelForMaskedLM`) an item's rows are
masked as `growlength train --objective mlm` masks them (mlm.py: BERT's 80/10/10 at `mask_rate`, the
mask id the data's vocab_size), from a generator seeded by the seed and the item index; `labels` hold
the chosen tokens' ids and -100 elsewhere, and the model's own masked-LM loss is the mean over the
chosen tokens of the whole step (Trainer passes it their count across the accumulated micro-batches).

Resume: the items (masks included) are a pure function of (data, seed, schedule, item index). When
Trainer resumes a checkpoint it skips the batches of the steps already trained, which replays the
loader's cursor to the same data position and the schedule to the same stage.

Under torchrun / `accelerate launch` with N processes, the dataset is one stream of micro-batches and
accelerate hands process p the p-th of every N (whether it shards the stream or dispatches from
process 0), so a step is gradient_accumulation_steps x N consecutive micro-batches at one length: the
same tokens one process would read with N times the accumulation. End such a script with a barrier
and `torch.distributed.destroy_process_group()` (as examples/hf_trainer.py does): Trainer leaves the
group alive, and a gloo group alive at interpreter exit can abort a rank with SIGABRT.
"""

import itertools

import torch
from transformers import TrainerCallback

from growlength.budget import check_lengths
from growlength.config import TrainConfig
from growlength.errors import GrowLengthError
from growlength.mlm import mask_generator, mask_tokens
from growlength.schedule import LengthSchedule
from growlength.tokens import Loader, open_tokens


class GrowLengthDataset(torch.utils.data.IterableDataset):
    """An endless stream of micro-batches whose length follows `schedule` over `args.max_steps`: next
    tokens to predict (objective "clm") or masked tokens to recover (objective "mlm")."""

    def __init__(
        self,
        data,
        schedule: LengthSchedule,
        args,
        *,
        tokens_per_batch: int,
        block_tokens: int = TrainConfig.block_tokens,
        lanes: int = TrainConfig.lanes,
        objective: str = TrainConfig.objective,
        mask_rate: float = TrainConfig.mask_rate,
    ):
        _check_args(args)
        if objective not in ("clm", "mlm") or not 0 < mask_rate < 1:
            raise GrowLengthError(
                f"objective must be clm or mlm and mask_rate in (0, 1), got {objective!r}, {mask_rate}"
            )
        self.objective, self.mask_rate = objective, mask_rate
        data = open_tokens(data)
        self.tokens, self.vocab_size = data.train, data.vocab_size
        self.schedule, self.tokens_per_batch, self.block_tokens = schedule, tokens_per_batch, block_tokens
        self.lanes = lanes
        self.max_steps, self.accum, self.seed = args.max_steps, args.gradient_accumulation_steps, args.seed
        self.items_per_step = self.accum * max(1, args.world_size)
        self.tokens_per_step = tokens_per_batch * self.items_per_step
        shapes = check_lengths(
            schedule.all_lengths(),
            tokens_per_step=tokens_per_batch,
            target_len=schedule.max_len,
            micro_batch_tokens=tokens_per_batch,
        )
        self.rows = {s.seq_len: s.rows for s in shapes}

    def seq_len_at(self, step: int) -> int:
        """The length of optimizer step `step` (0-based)."""
        return self.schedule.seq_len_at(min(step, self.max_steps) / self.max_steps)

    def __iter__(self):
        loader = Loader(self.tokens, seed=self.seed, block_tokens=self.block_tokens, lanes=self.lanes)
        for item in itertools.count():
            seq_len = self.seq_len_at(item // self.items_per_step)
            inputs, targets = loader.next_batch(seq_len, self.rows[seq_len])
            if self.objective == "mlm":
                yield self._masked(torch.from_numpy(inputs), item)
            else:
                yield {"input_ids": torch.from_numpy(inputs), "labels": torch.from_numpy(targets)}

    def _masked(self, ids_BT: torch.Tensor, item: int) -> dict:
        inputs_BT, labels_BT = mask_tokens(
            ids_BT,
            rate=self.mask_rate,
            mask_id=self.vocab_size,  # the first id after the tokenizer's, as models.model_config sets it
            vocab_size=self.vocab_size,
            generator=mask_generator(self.seed, item),
        )
        return {"input_ids": inputs_BT, "labels": labels_BT}

    def collate(self, items: list[dict]) -> dict:
        """Trainer's data_collator: the one micro-batch (per_device_train_batch_size is 1). A causal
        item's labels are marked as already shifted (`shift_labels`), which the model's loss and
        Trainer's token count then take as they are: without this collator the model would shift them
        a second time. A masked item goes as it is."""
        (item,) = items
        return {**item, "shift_labels": item["labels"]} if self.objective == "clm" else item


class GrowLengthCallback(TrainerCallback):
    """Checks the run matches the dataset, and adds `seq_len` and `tokens` to every log entry."""

    def __init__(self, dataset: GrowLengthDataset):
        self.dataset = dataset

    def on_train_begin(self, args, state, control, **kwargs):
        _check_args(args)
        built_for = (self.dataset.max_steps, self.dataset.items_per_step)
        if (args.max_steps, args.gradient_accumulation_steps * max(1, args.world_size)) != built_for:
            raise GrowLengthError(
                "max_steps, gradient_accumulation_steps or the number of processes changed after the "
                "GrowLengthDataset was built: build it from the TrainingArguments the Trainer uses"
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or state.global_step == 0:
            return
        values = {
            "seq_len": self.dataset.seq_len_at(state.global_step - 1),
            "tokens": state.global_step * self.dataset.tokens_per_step,
        }
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)


def _check_args(args) -> None:
    problems = []
    if args.max_steps <= 0:
        problems.append("set max_steps (the schedule runs over it)")
    if args.per_device_train_batch_size != 1:
        problems.append("set per_device_train_batch_size=1 (each item is a whole micro-batch)")
    if args.dataloader_num_workers != 0:
        problems.append("set dataloader_num_workers=0 (the stream has one cursor)")
    if problems:
        raise GrowLengthError("GrowLength with Trainer: " + "; ".join(problems))
