"""Time `growlength prepare` on a real corpus: wall, characters/s, peak memory of the whole process tree,
and the tokenizer's own limit on the same machine; optionally kill it midway and time the resumed run.

    python scripts/prepare_bench.py --input DIR --glob '*.c,*.h' --out runs/prep --kill-after 120 \
        --json runs/prep-bench.json -- --vocab-size 8192

Arguments after `--` go to `growlength prepare` as they are.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def tree_rss(pid: int) -> int:
    """Resident bytes of pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:  # no /proc to read: run() falls back on the kernel's own peak
        return 0
    for entry in entries:
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def run(argv: list[str], kill_after: float | None) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, start_new_session=True)
    peak, status, usage = 0, None, None
    while status is None:
        pid, wait_status, wait_usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            status, usage = os.waitstatus_to_exitcode(wait_status), wait_usage
            break
        peak = max(peak, tree_rss(proc.pid))
        if kill_after and time.perf_counter() - start > kill_after:
            os.killpg(proc.pid, signal.SIGKILL)
            _, wait_status, usage = os.wait4(proc.pid, 0)
            status = os.waitstatus_to_exitcode(wait_status)
            break
        time.sleep(0.5)
    proc.returncode = status
    # Sampling can miss a short run, or read nothing where /proc is restricted: the kernel's own peak for this
    # run (the process, or its largest waited-for descendant; KiB on Linux) is a floor under it.
    peak = max(peak, usage.ru_maxrss * 1024)
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_gb": round(peak / 2**30, 3),
        "rc": status,
    }


def tokenizer_limit(out: Path, inputs: list[str], glob: str, chars: int) -> dict:
    """encode_batch_fast over whole documents of the first `chars` characters, all cores, in-process."""
    from tokenizers import Tokenizer

    from growlength.readers import documents, list_sources

    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    texts, total = [], 0
    for _, text in documents(list_sources(inputs, glob)):
        texts.append(text)
        total += len(text)
        if total >= chars:
            break
    start = time.perf_counter()
    n_tokens = sum(len(e.ids) for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False))
    seconds = time.perf_counter() - start
    return {"chars": total, "chars_per_s": round(total / seconds), "tokens_per_s": round(n_tokens / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True)
    parser.add_argument("--glob", default="*.txt")
    parser.add_argument("--out", required=True)
    parser.add_argument("--kill-after", type=float, help="SIGKILL the first run after this many seconds")
    parser.add_argument("--limit-chars", type=int, default=100_000_000, help="text for the tokenizer's limit")
    parser.add_argument("--json", help="write the figures here")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    argv = [sys.executable, "-m", "growlength", "prepare", "--input", *args.input, "--glob", args.glob]
    argv += ["--out", args.out, *extra]
    report = {"command": argv[1:], "cpu_count": os.cpu_count()}
    if args.kill_after:
        report["killed_run"] = run(argv, args.kill_after)
        state = Path(args.out) / ".prepare-state.json"
        report["killed_at_chars"] = json.loads(state.read_text())["chars"] if state.is_file() else 0
    report["run"] = run(argv, None)
    meta = json.loads((Path(args.out) / "meta.json").read_text())
    report["meta"] = {k: meta[k] for k in ("text_chars", "train_tokens", "val_tokens", "encode_seconds")}
    report["meta"]["shards"] = sum(len(v) for v in meta["shards"].values())
    report["tokenizer_limit"] = tokenizer_limit(Path(args.out), args.input, args.glob, args.limit_chars)
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
