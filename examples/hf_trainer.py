"""GrowLength in an existing Hugging Face `Trainer` script. Only the lines marked GROWLENGTH are new:
a schedule, the dataset built from it (with its collator) and a callback; the model, TrainingArguments,
Trainer and resume are plain transformers.

    growlength prepare --out runs/data --vocab-size 2048
    python examples/hf_trainer.py --data runs/data --out runs/hf-trainer
    python examples/hf_trainer.py --data runs/data --out runs/hf-trainer --resume   # after a crash
    python examples/hf_trainer.py --data runs/data --out runs/hf-mlm --objective mlm  # a ModernBERT encoder
"""

import argparse

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    Trainer,
    TrainingArguments,
    set_seed,
)

from growlength import make_schedule, open_tokens  # GROWLENGTH
from growlength.integrations.hf_trainer import GrowLengthCallback, GrowLengthDataset  # GROWLENGTH


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a folder written by `growlength prepare`")
    parser.add_argument("--out", required=True, help="Trainer's output_dir")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--start-len", type=int, default=128)
    parser.add_argument("--target-len", type=int, default=1024)
    parser.add_argument("--tokens-per-batch", type=int, default=8192, help="tokens per micro-batch per device")
    parser.add_argument("--accum", type=int, default=1, help="gradient_accumulation_steps")
    parser.add_argument("--objective", choices=("clm", "mlm"), default="clm", help="mlm: a masked-LM encoder")
    parser.add_argument("--mask-rate", type=float, default=0.3, help="mlm: the share of tokens masked")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--save-steps", type=int, default=50)
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--report-to", default="none", help="none, tensorboard, wandb, ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    return parser.parse_args()


def build_model(opts):
    data = open_tokens(opts.data)  # GROWLENGTH: the tokenizer's size and end-of-text id
    vocab_size, eos_id = data.vocab_size, data.meta["eos_id"]
    if opts.objective == "mlm":
        # Two ids after the tokenizer's: the mask (the id GrowLengthDataset masks with) and padding.
        return ModernBertForMaskedLM(
            ModernBertConfig(
                vocab_size=vocab_size + 2,
                hidden_size=opts.hidden,
                num_hidden_layers=opts.layers,
                num_attention_heads=max(1, opts.hidden // 64),
                intermediate_size=2 * opts.hidden,
                max_position_embeddings=opts.target_len,
                mask_token_id=vocab_size,
                pad_token_id=vocab_size + 1,
                bos_token_id=eos_id,
                eos_token_id=eos_id,
                cls_token_id=eos_id,
                sep_token_id=eos_id,
            )
        )
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=opts.hidden,
            num_hidden_layers=opts.layers,
            num_attention_heads=max(1, opts.hidden // 64),
            intermediate_size=8 * opts.hidden // 3,
            max_position_embeddings=opts.target_len,
            tie_word_embeddings=True,
        )
    )


def main():
    opts = parse_args()
    set_seed(opts.seed)
    model = build_model(opts)
    args = TrainingArguments(
        output_dir=opts.out,
        max_steps=opts.max_steps,
        per_device_train_batch_size=1,  # GROWLENGTH: each item is a whole micro-batch
        gradient_accumulation_steps=opts.accum,
        learning_rate=opts.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.1,
        adam_beta2=0.95,
        logging_steps=opts.logging_steps,
        save_steps=opts.save_steps,
        save_total_limit=2,
        include_num_input_tokens_seen=True,
        report_to=opts.report_to,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
        seed=opts.seed,
    )
    schedule = make_schedule("doubling", start_len=opts.start_len, target_len=opts.target_len)  # GROWLENGTH
    dataset = GrowLengthDataset(  # GROWLENGTH
        opts.data,
        schedule,
        args,
        tokens_per_batch=opts.tokens_per_batch,
        objective=opts.objective,
        mask_rate=opts.mask_rate,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=dataset.collate,  # GROWLENGTH
        callbacks=[GrowLengthCallback(dataset)],  # GROWLENGTH
    )
    trainer.train(resume_from_checkpoint=True if opts.resume else None)
    trainer.save_model()
    if torch.distributed.is_initialized():
        # Under torchrun: a gloo group left alive at exit can abort the process (SIGABRT) as Python shuts down.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
