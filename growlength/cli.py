"""The growlength command (prepare, train, eval, export, plot, bench, profile): a thin shell over the work."""

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from growlength.config import (
    BenchConfig,
    ProfileConfig,
    TrainConfig,
    coerce,
    field_type,
    fields_of,
    load_config,
    load_sections,
    parse_lengths,
)
from growlength.encode import PrepareOptions
from growlength.errors import GrowLengthError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except GrowLengthError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is intact; continue with --resume", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="growlength", description="Pretrain causal LMs with growing sequence length."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    prep = commands.add_parser("prepare", help="text -> token shards (train/val), meta.json, tokenizer.json")
    prep.add_argument(
        "--input",
        nargs="+",
        default=["shakespeare"],
        help="files (.jsonl[.gz|.zst] .parquet .csv .json, or text of any kind), folders of them, saved "
        "`datasets` folders, or 'shakespeare' (default)",
    )
    prep.add_argument("--out", required=True, help="folder to write (a rerun of the same command resumes it)")
    prep.add_argument("--tokenizer", help="use this tokenizer.json instead of training one")
    prep.add_argument("--tokenizer-only", action="store_true", help="write only tokenizer.json (for --part)")
    prep.add_argument("--workers", type=int, help="encoding processes (default: one per core)")
    _add_config_flags(prep, PrepareOptions, title="options (each decides the output: a rerun must repeat them)")
    prep.set_defaults(run=_prepare)

    train = commands.add_parser("train", help="GrowLength pretraining", argument_default=argparse.SUPPRESS)
    train.add_argument("--config", help="YAML file of config keys (flags override it)")
    train.add_argument("--out", required=True, help="run folder: metrics.jsonl, config.yaml, checkpoints/")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_flags(train, TrainConfig)
    train.set_defaults(run=_train)

    bench = commands.add_parser(
        "bench",
        help="the arena: every recipe swept, best against best, at equal time and equal tokens",
        argument_default=argparse.SUPPRESS,
    )
    bench.add_argument("--config", help="YAML file of train and bench keys (flags override it)")
    bench.add_argument("--out", required=True, help="bench folder: one run folder per recipe, bench.json, PNGs")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_flags(bench, BenchConfig, TrainConfig)
    bench.set_defaults(run=_bench)

    prof = commands.add_parser(
        "profile", help="tokens/s and memory per length, against a FLOP count", argument_default=argparse.SUPPRESS
    )
    prof.add_argument("--config", help="YAML file of config keys (flags override it; a bench's works too)")
    prof.add_argument("--out", help="JSON file to write (default: print only)")
    prof.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_flags(prof, ProfileConfig, TrainConfig)
    prof.set_defaults(run=_profile)

    ev = commands.add_parser("eval", help="loss and perplexity at many lengths, with or without RoPE scaling")
    ev.add_argument(
        "--ckpt",
        required=True,
        action="append",
        help="a checkpoint folder, or a run folder (its newest checkpoint); repeat it to compare models",
    )
    ev.add_argument("--lengths", default="128,256,512,1024,2048", help="comma-separated lengths")
    ev.add_argument(
        "--rope-scaling",
        default="none",
        help="comma-separated: none (direct extrapolation), linear, dynamic (NTK), yarn",
    )
    ev.add_argument(
        "--rope-factor", type=float, help="scaling factor (default: longest length / longest trained length)"
    )
    ev.add_argument("--data", help="prepared folder (default: the run's)")
    ev.add_argument("--eval-tokens", type=int, help="val tokens per length (default: the run's)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--out", help="JSON file to write (default: CKPT/eval.json beside each checkpoint)")
    ev.add_argument(
        "--plot",
        help="PNG of perplexity against length, one line per model and mode; beside it, NAME-positions.png: "
        "the loss by position in the window, one line per model",
    )
    ev.set_defaults(run=_eval)

    exp = commands.add_parser("export", help="a checkpoint as a Hugging Face model folder, tokenizer included")
    exp.add_argument("--ckpt", required=True, help="a checkpoint folder, or a run folder (its newest checkpoint)")
    exp.add_argument("--out", required=True, help="the folder to write (new or empty)")
    exp.add_argument("--data", help="prepared folder whose tokenizer to include (default: the run's)")
    exp.set_defaults(run=_export)

    scale = commands.add_parser("scale", help="the scale ladder: benches at many sizes and budgets, in one view")
    scale.add_argument("benches", nargs="+", help="bench folders (each with its bench.json)")
    scale.add_argument("--out", required=True, help="folder to write scale.json and scale.png to")
    scale.set_defaults(run=_scale)

    plot = commands.add_parser("plot", help="val loss against time and tokens, one line per run")
    plot.add_argument("runs", nargs="+", help="run folders")
    plot.add_argument("--out", help="PNG to write (default: FIRST_RUN/loss.png)")
    plot.set_defaults(run=_plot)
    return parser


def _add_config_flags(
    parser: argparse.ArgumentParser, *classes: type, title: str = "config keys (also YAML keys of --config)"
) -> None:
    """A --flag for every field of the config classes that has help, its help ending with the default;
    a bool flag alone means true (`--equal-tokens`), or takes a value (`--eval-seen-lengths false`). The
    values are given as typed (strings), typed by the config's one coercion; an absent flag is absent."""
    group = parser.add_argument_group(title)
    for cls in classes:
        for name, f in fields_of(cls).items():
            if "help" not in f.metadata:
                continue
            kind = field_type(name, cls)
            flag = "--" + name.replace("_", "-")
            default = "none" if f.default is None else f.default
            extra = {"nargs": "?", "const": "true"} if kind is bool else {}
            help = f"{f.metadata['help']} (default: {default})"
            group.add_argument(
                flag, dest=name, help=help, metavar=kind.__name__.upper(), default=argparse.SUPPRESS, **extra
            )


def _overrides(args, *classes: type) -> dict:
    names = {name for cls in classes for name in fields_of(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def _prepare(args) -> int:
    from growlength.prepare import prepare

    options = {
        name: coerce(name, value, PrepareOptions) for name, value in _overrides(args, PrepareOptions).items()
    }
    meta = prepare(
        args.input,
        args.out,
        tokenizer_path=getattr(args, "tokenizer", None),
        workers=getattr(args, "workers", None),
        tokenizer_only=getattr(args, "tokenizer_only", False),
        **options,
    )
    if getattr(args, "tokenizer_only", False):
        print(f"wrote {meta['tokenizer']} (sha256 {meta['tokenizer_sha256'][:12]})")
        return 0
    shards = sum(len(s) for s in meta["shards"].values())
    print(
        f"wrote {args.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens "
        f"({meta['train_docs']} + {meta['val_docs']} documents) in {shards} shards, vocab {meta['vocab_size']}"
    )
    return 0


def _train(args) -> int:
    from growlength.train import train

    overrides = _overrides(args, TrainConfig)
    resume = getattr(args, "resume", False)
    config = getattr(args, "config", None)
    saved = Path(args.out) / "config.yaml"
    if resume and config is None and saved.is_file():
        config = saved  # flags given with --resume are checked against the saved run, not silently applied
    cfg = None if resume and config is None else load_config(config, overrides)
    record = train(cfg, args.out, resume=resume, show_progress=not getattr(args, "quiet", False))
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    by_len = ", ".join(f"{k}: {v:.3f}" for k, v in record["val_loss_by_len"].items())
    print(
        f"done: step {record['step']}, {record['tokens']:,} tokens, {record['wall_s']:.0f} s training; "
        f"val loss {record['val_loss']:.4f} (by length {by_len})"
    )
    return 0


def _bench(args) -> int:
    from growlength.bench import bench
    from growlength.report import format_jumps, format_positions, format_sweep, format_table

    overrides = _overrides(args, TrainConfig, BenchConfig)
    base, bench_cfg = load_sections(getattr(args, "config", None), overrides, TrainConfig, BenchConfig)
    report = bench(base, bench_cfg, args.out, show_progress=not getattr(args, "quiet", False))
    if report["sweep"]:
        print(format_sweep(report), end="\n\n")
    print(format_table(report))
    for extra in (format_positions(report), format_jumps(report)):
        if extra:
            print("", extra, sep="\n")
    print(report["headline"])
    print(f"wrote {Path(args.out) / 'bench.json'}, bench-*.png and runs.tar.gz")
    return 0


def _profile(args) -> int:
    from growlength.profile import format_profile, profile

    # a bench config works too: its train keys are used, its bench keys ignored
    overrides = _overrides(args, TrainConfig, ProfileConfig)
    config = getattr(args, "config", None)
    cfg, prof, _ = load_sections(config, overrides, TrainConfig, ProfileConfig, BenchConfig)
    lengths = prof.length_list(cfg)
    report = profile(cfg, lengths, rounds=prof.rounds, show_progress=not getattr(args, "quiet", False))
    print(format_profile(report))
    if getattr(args, "out", None):
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def _eval(args) -> int:
    from growlength.evaluate import evaluate_checkpoint

    lengths = parse_lengths(args.lengths, "--lengths")
    modes = tuple(m.strip() for m in args.rope_scaling.split(",") if m.strip())
    reports = []
    for ckpt in args.ckpt:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            report = evaluate_checkpoint(
                ckpt,
                lengths,
                data=args.data,
                eval_tokens=args.eval_tokens,
                device=args.device,
                rope_scaling=modes,
                rope_factor=args.rope_factor,
            )
        _print_eval(report)
        reports.append(report)
        if not args.out:
            _write_json(Path(report["checkpoint"]) / "eval.json", report)
    if args.out:
        _write_json(Path(args.out), reports[0] if len(reports) == 1 else reports)
    if args.plot:
        from growlength.plots import plot_eval_positions, plot_extrapolation

        plot_extrapolation(reports, args.plot)
        positions = plot_eval_positions(
            reports, Path(args.plot).with_name(Path(args.plot).stem + "-positions.png")
        )
        print(f"wrote {args.plot}" + (f" and {positions}" if positions else ""))
    return 0


def _export(args) -> int:
    from growlength.export import export

    out = export(args.ckpt, args.out, data=args.data)
    kind = (
        "AutoModelForMaskedLM"
        if (out / "config.json").read_text().count('"modernbert"')
        else "AutoModelForCausalLM"
    )
    print(f"wrote {out}: load it with {kind}.from_pretrained and AutoTokenizer.from_pretrained")
    return 0


def _print_eval(report: dict) -> None:
    print(f"{report['checkpoint']} on {report['eval_tokens']:,} val tokens of {report['data']}")
    print(f"{'rope':>10} {'seq_len':>8} {'loss':>8} {'ppl':>9}")
    for row in report["results"]:
        note = "  (beyond the longest trained length)" if row["beyond_trained"] else ""
        mode = row["rope_scaling"] + (f" x{row['rope_factor']:g}" if row["rope_scaling"] != "none" else "")
        print(f"{mode:>10} {row['seq_len']:>8} {row['loss']:>8.4f} {row['ppl']:>9.2f}{note}")
    widest = max(report["results"], key=lambda row: (row["rope_scaling"] == "none", row["seq_len"]))
    buckets = ", ".join(
        f"{b['positions'][0]}-{b['positions'][1]} {b['loss']:.3f}" for b in widest["loss_by_position"]
    )
    print(f"loss by position at {widest['seq_len']} ({widest['rope_scaling']}): {buckets}")


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")
    print(f"wrote {path}")


def _scale(args) -> int:
    from growlength.plots import plot_scale
    from growlength.report import format_scale, format_trend, scale_rows, scale_trend

    reports = []
    for folder in args.benches:
        path = Path(folder) / "bench.json"
        if not path.is_file():
            raise GrowLengthError(f"{folder} holds no bench.json: run the bench there first (it resumes)")
        reports.append(json.loads(path.read_text()))
    missing = [f for f, r in zip(args.benches, reports, strict=True) if "params" not in r]
    if missing:
        raise GrowLengthError(
            f"{', '.join(missing)}: bench.json without params; rerun the bench there to rewrite it"
        )
    rows = scale_rows(reports)
    trends = scale_trend(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scale = {"benches": args.benches, "rows": rows, "trends": trends}
    (out / "scale.json").write_text(json.dumps(scale, indent=2) + "\n")
    print(format_scale(rows))
    if trends:
        print(
            "\nthe trend (between rungs on the line joining them; beyond, the last two's line):\n"
            + format_trend(trends)
        )
    print(f"wrote {out / 'scale.json'} and {plot_scale(rows, out / 'scale.png')}")
    return 0


def _plot(args) -> int:
    from growlength.plots import plot_runs

    out = plot_runs(args.runs, args.out or Path(args.runs[0]) / "loss.png")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
