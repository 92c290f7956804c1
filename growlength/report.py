"""The arena's report, a pure function of its runs' records: when each recipe reaches the baseline's
final loss (in seconds and in tokens, with the evaluations that bracket it), its final loss, speed and
compile cost, the headline and the tables. bench.py runs the recipes and hands their folders' records here.

A speedup splits in two factors whose product it is, seed by seed:

    speedup = baseline's time / time to reach its final loss
            = (baseline's tokens / tokens to reach it)  x  (tokens/s up to then / baseline's tokens/s)
            =            learning                       x          cheaper tokens

`learning` is the token gain: fewer tokens to the same loss (what each token buys); `cheaper tokens`
is what a schedule buys by training at lengths whose tokens cost less. The machine bounds the second:
no schedule's tokens/s beats the fastest length's, so `ceiling` (the fastest length's tokens/s over the
target's, measured in the runs themselves) is the most that cheaper tokens alone could give.
"""

import json
import math
import statistics
from pathlib import Path

from growlength.config import point_label
from growlength.recipes import BASELINE
from growlength.trackers import read_metrics


def crossing(xs: list[float], losses: list[float], level: float) -> dict | None:
    """Where the loss curve first reaches `level`: `at`, interpolated linearly between the two
    evaluations that bracket it (`after` the last one above, `before` the first one at or below);
    None if it never does.

    >>> crossing([0, 10, 20], [5.0, 4.0, 3.0], 3.5)
    {'at': 15.0, 'after': 10, 'before': 20}
    """
    for i, loss in enumerate(losses):
        if loss <= level:
            if i == 0:
                return {"at": xs[0], "after": xs[0], "before": xs[0]}
            x0, x1, y0, y1 = xs[i - 1], xs[i], losses[i - 1], loss
            return {"at": x0 + (x1 - x0) * (y0 - level) / (y0 - y1), "after": x0, "before": x1}
    return None


def time_to_reach(xs: list[float], losses: list[float], level: float) -> float | None:
    """The first x at which the loss curve reaches `level` (linear between points), or None."""
    hit = crossing(xs, losses, level)
    return None if hit is None else hit["at"]


def read_run(folder: Path) -> dict:
    steps, evals = read_metrics(folder)
    final = json.loads((folder / "final-eval.json").read_text())
    by_len: dict[int, list[float]] = {}
    for r in steps:
        by_len.setdefault(r["seq_len"], []).append(r["tokens_per_s"])
    return {
        "wall_s": [e["wall_s"] for e in evals],
        "tokens": [e["tokens"] for e in evals],
        "val_loss": [e["val_loss"] for e in evals],
        "data_tokens": evals[-1].get("data_tokens", evals[-1]["tokens"]),
        "steps": steps[-1]["step"],
        "longest_step_s": max(r["tokens"] / max(r["tokens_per_s"], 1e-9) for r in _step_tokens(steps)),
        "tokens_per_s_by_len": by_len,
        "compile_s": sum(r.get("compile_s", 0.0) for r in steps),  # inside wall_s: --compile's cost
        "compiles": steps[-1].get("compiles", 0),
        "final_by_len": {r["seq_len"]: r["loss"] for r in final["results"]},
        "stage_jumps": stage_jumps(steps),
        "final_by_position": {
            r["seq_len"]: r["loss_by_position"] for r in final["results"] if "loss_by_position" in r
        },
    }


def stage_jumps(steps: list[dict], k: int = 5) -> list[dict]:
    """At every change of length a stepped schedule logged: the change's one-step `loss_jump` as the
    loop logged it, and `jump_k`, the mean loss of the k steps from the change on minus the k before it
    (one step's loss is noisy; k of them less so).

    >>> change = {"step": 6, "loss": 4.5, "seq_len": 128, "stage_change": True, "loss_jump": 0.5}
    >>> stage_jumps([{"loss": 4.0, "seq_len": 64}] * 5 + [change] + [{"loss": 4.1, "seq_len": 128}] * 4)
    [{'seq_len': 128, 'step': 6, 'loss_jump': 0.5, 'jump_k': 0.18}]
    """
    jumps = []
    for i, r in enumerate(steps):
        if r.get("stage_change"):
            before, after = steps[max(0, i - k) : i], steps[i : i + k]
            jump = statistics.fmean(x["loss"] for x in after) - statistics.fmean(x["loss"] for x in before)
            jumps.append(
                {"seq_len": r["seq_len"], "step": i + 1, "loss_jump": r["loss_jump"], "jump_k": round(jump, 4)}
            )
    return jumps


def _step_tokens(steps: list[dict]) -> list[dict]:
    """Each step record with the tokens of that step (records hold the running total)."""
    previous = [0] + [r["tokens"] for r in steps[:-1]]
    return [{**r, "tokens": r["tokens"] - before} for r, before in zip(steps, previous, strict=True)]


def versus(baseline: list[dict], reps: list[dict]) -> dict:
    """A recipe's seeds against the baseline's, seed by seed: final loss, and when (in seconds and in
    tokens) it reaches the baseline's final val loss, with the evaluations bracketing that moment."""
    reach_s = [
        crossing(r["wall_s"], r["val_loss"], b["val_loss"][-1]) for b, r in zip(baseline, reps, strict=True)
    ]
    reach_t = [
        crossing(r["tokens"], r["val_loss"], b["val_loss"][-1]) for b, r in zip(baseline, reps, strict=True)
    ]
    speedups = [_ratio(b["wall_s"][-1], hit) for b, hit in zip(baseline, reach_s, strict=True)]
    token_gains = [_ratio(b["tokens"][-1], hit) for b, hit in zip(baseline, reach_t, strict=True)]
    finals = [r["val_loss"][-1] for r in reps]
    cheaper = [
        s["at"] / g["at"] if s and g else None for s, g in zip(speedups, token_gains, strict=True)
    ]  # speedup = learning x cheaper tokens, seed by seed
    result = {
        "final_val_loss": _mean(finals),
        "final_val_loss_each": finals,
        "tokens": _mean([r["tokens"][-1] for r in reps]),
        "data_tokens": _mean([r["data_tokens"] for r in reps]),
        "train_s_each": [r["wall_s"][-1] for r in reps],
        "longest_step_s": max(r["longest_step_s"] for r in reps),
        "steps": _mean([r["steps"] for r in reps]),
        "compile_s": _mean([r["compile_s"] for r in reps]),
        "compiles": _mean([r["compiles"] for r in reps]),
        "reach_baseline_s": reach_s,
        "reach_baseline_tokens": reach_t,
        "speedup_each": speedups,
        "speedup": _mean([s["at"] for s in speedups]) if None not in speedups else None,
        "token_gain_each": token_gains,
        "token_gain": _mean([g["at"] for g in token_gains]) if None not in token_gains else None,
        "cheaper_tokens_each": cheaper,
        "tokens_vs_baseline_each": [
            r["tokens"][-1] / b["tokens"][-1] for b, r in zip(baseline, reps, strict=True)
        ],
        "tokens_per_s_by_len": _median_by_len(reps),
        "steps_by_len": _steps_by_len(reps),
        "val_loss_by_len": _mean_by_len(reps),
        "val_loss_by_position": _mean_by_position(reps),
        "stage_jumps_each": [r.get("stage_jumps", []) for r in reps],
    }
    # of the means, so that the printed speedup = learning x cheaper tokens (seed by seed: cheaper_tokens_each)
    known = result["speedup"] is not None and result["token_gain"] is not None
    result["cheaper_tokens"] = result["speedup"] / result["token_gain"] if known else None
    return result


def ceiling(runs: dict, target_len: int, min_steps: int = 5) -> dict | None:
    """The most that cheaper tokens alone could give on this machine: the median tokens/s of the fastest
    length at or below the target, over the target's, each the median over the runs that trained at it
    for at least min_steps steps (its seeds together): a ramp's one-step lengths are noise, and the max
    of noise is biased up; a run without `steps_by_len` vouches for no length. None without the target.

    >>> run = {"tokens_per_s_by_len": {"128": 300.0, "2048": 200.0}, "steps_by_len": {"128": 9, "2048": 9}}
    >>> ceiling({"a": run}, 2048)
    {'speedup': 1.5, 'fastest_len': 128, 'tokens_per_s_by_len': {'128': 300.0, '2048': 200.0}}
    """
    merged: dict[int, list[float]] = {}
    for r in runs.values():
        for seq_len, speed in r.get("tokens_per_s_by_len", {}).items():
            if r.get("steps_by_len", {}).get(seq_len, 0) >= min_steps:
                merged.setdefault(int(seq_len), []).append(speed)
    by_len = {n: statistics.median(v) for n, v in sorted(merged.items()) if n <= target_len}
    if target_len not in by_len:
        return None
    fastest = max(by_len, key=by_len.get)
    return {
        "speedup": by_len[fastest] / by_len[target_len],
        "fastest_len": fastest,
        "tokens_per_s_by_len": {str(n): v for n, v in by_len.items()},
    }


def _ratio(baseline_end: float, hit: dict | None) -> dict | None:
    """baseline_end / the crossing, with the range its bracketing evaluations allow (no upper bound,
    None, when the crossing comes before the first evaluation after the start)."""
    if hit is None:
        return None
    return {
        "at": baseline_end / max(hit["at"], 1e-9),
        "low": baseline_end / max(hit["before"], 1e-9),
        "high": baseline_end / hit["after"] if hit["after"] > 0 else None,
    }


def headline(report: dict) -> str:
    """One sentence: GrowLength's best against the baseline's best (a run named with its tuning,
    growlength+lr=0.008, is GrowLength)."""
    runs, base = report["runs"], report["runs"][BASELINE]
    mine = next((r for name, r in runs.items() if recipe_of(name) == "growlength"), None)
    if not mine or "crash" in mine:
        return "no growlength run in this bench"
    speed = mine["speedup"]
    reach = f"{speed:.2f}x (seeds {_spread(mine['speedup_each'])})" if speed else "never (within the budget)"
    return (
        f"growlength reaches the tuned fixed-length baseline's final val loss {reach} sooner; final val loss "
        f"{mine['final_val_loss']:.4f} vs {base['final_val_loss']:.4f} "
        f"(seeds {_spread(mine['final_val_loss_each'], '.4f')} vs {_spread(base['final_val_loss_each'], '.4f')})"
    )


def _spread(values: list, fmt: str = ".2f") -> str:
    values = [v["at"] if isinstance(v, dict) else v for v in values if v is not None]
    return ", ".join(f"{v:{fmt}}" for v in values) if values else "—"


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def _median_by_len(reps: list[dict]) -> dict[str, float]:
    merged: dict[int, list[float]] = {}
    for rep in reps:
        for seq_len, speeds in rep["tokens_per_s_by_len"].items():
            merged.setdefault(seq_len, []).extend(speeds)
    return {str(k): statistics.median(v) for k, v in sorted(merged.items())}


def _steps_by_len(reps: list[dict]) -> dict[str, int]:
    """How many steps every seed together trained at each length."""
    counts: dict[int, int] = {}
    for rep in reps:
        for seq_len, speeds in rep["tokens_per_s_by_len"].items():
            counts[int(seq_len)] = counts.get(int(seq_len), 0) + len(speeds)
    return {str(k): v for k, v in sorted(counts.items())}


def _mean_by_position(reps: list[dict]) -> dict[str, list[dict]]:
    """Per evaluated length, each position bucket's loss averaged over the seeds."""
    if not all(rep.get("final_by_position") for rep in reps):
        return {}
    out = {}
    for seq_len, buckets in sorted(reps[0]["final_by_position"].items()):
        losses = [[b["loss"] for b in rep["final_by_position"][seq_len]] for rep in reps]
        out[str(seq_len)] = [
            {"positions": b["positions"], "loss": _mean(column)}
            for b, column in zip(buckets, zip(*losses, strict=True), strict=True)
        ]
    return out


def _mean_by_len(reps: list[dict]) -> dict[str, float]:
    lengths = sorted(reps[0]["final_by_len"])
    return {str(n): _mean([rep["final_by_len"][n] for rep in reps]) for n in lengths}


def format_table(report: dict) -> str:
    """A Markdown table of the report, one row per recipe (its best setting, mean over seeds)."""
    target = report["target_len"]
    base = report["runs"][report["baseline"]]["final_val_loss"]
    equal_tokens = any("equal_tokens" in r for r in report["runs"].values())
    compiled = any(r.get("compiles") for r in report["runs"].values())
    head = (
        f"| run | setting | val loss @{target} | vs baseline | tokens | speedup (equal time) "
        "| = learning (token gain) | x cheaper tokens |"
    )
    head += " loss at equal tokens |" if equal_tokens else ""
    head += " compiling (graphs) |" if compiled else ""
    columns = 8 + equal_tokens + compiled
    lines = [head, "|---" * columns + "|"]
    for name, r in report["runs"].items():
        if "crash" in r:
            crash = r["crash"].split(":")[0]
            lines.append(f"| {name} | crashes in the peer's own code: {crash} |" + " |" * (columns - 2))
            continue
        row = (
            f"| {name} | {point_label(r['setting'])} | {r['final_val_loss']:.4f} "
            f"| {r['final_val_loss'] - base:+.4f} "
            f"| {r['tokens']:,.0f} | {_ratio_text(r['speedup'], r['speedup_each'])} "
            f"| {_ratio_text(r['token_gain'], r['token_gain_each'])} | {_factor(r.get('cheaper_tokens'))} |"
        )
        if equal_tokens:
            row += f" {r['equal_tokens']['final_val_loss']:.4f} |"
        if compiled:
            row += f" {r['compile_s']:.1f} s ({r['compiles']:g}) |"
        lines.append(row)
    limit = report.get("ceiling")
    if limit:
        lines.append(
            f"\nCheaper tokens alone could give at most {limit['speedup']:.2f}x here: tokens/s at "
            f"{limit['fastest_len']} over tokens/s at {target}, measured in these runs."
        )
    return "\n".join(lines)


def format_positions(report: dict) -> str:
    """A Markdown table of each recipe's final loss by position at the longest length evaluated (the
    target and beyond it), mean over seeds; '' when the runs have none."""
    rows = {n: r["val_loss_by_position"] for n, r in report["runs"].items() if r.get("val_loss_by_position")}
    if not rows:
        return ""
    window = max(int(n) for n in next(iter(rows.values())))
    buckets = next(iter(rows.values()))[str(window)]
    labels = [f"{a}-{b}" for a, b in (x["positions"] for x in buckets)]
    lines = [
        f"| run (loss by position at {window}) | " + " | ".join(labels) + " |",
        "|---" * (len(labels) + 1) + "|",
    ]
    for name, by_len in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{b['loss']:.4f}" for b in by_len[str(window)]) + " |")
    return "\n".join(lines)


def format_jumps(report: dict) -> str:
    """A Markdown table of the loss jump at each change of length (mean over the seeds of the k-step
    jump), one row per recipe whose schedule has stages; '' when none has."""
    rows = {}
    for name, r in report["runs"].items():
        each = r.get("stage_jumps_each") or []
        if each and all(each) and len({len(e) for e in each}) == 1:
            rows[name] = [(c[0]["seq_len"], _mean([x["jump_k"] for x in c])) for c in zip(*each, strict=True)]
    if not rows:
        return ""
    lengths = sorted({n for jumps in rows.values() for n, _ in jumps})
    lines = [
        "| run (loss jump at the change to) | " + " | ".join(map(str, lengths)) + " | sum |",
        "|---" * (len(lengths) + 2) + "|",
    ]
    for name, jumps in rows.items():
        by_len = dict(jumps)
        cells = [f"{by_len[n]:+.3f}" if n in by_len else "" for n in lengths]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {sum(by_len.values()):+.3f} |")
    return "\n".join(lines)


def _factor(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def format_sweep(report: dict) -> str:
    """A Markdown table of the sweep: final val loss of every recipe at every point, the best in bold."""
    sweep = report.get("sweep")
    if not sweep:
        return ""
    labels = [point_label(row["setting"]) for row in next(iter(sweep.values()))]
    lines = ["| run | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name, rows in sweep.items():
        losses = [row.get("final_val_loss") for row in rows]
        best = min((x for x in losses if x is not None), default=None)
        cells = ["crash" if x is None else f"**{x:.4f}**" if x == best else f"{x:.4f}" for x in losses]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio_text(mean: float | None, each: list) -> str:
    """'1.52x [1.40-1.61]': the mean and the range its bracketing evaluations allow over the seeds."""
    if mean is None:
        return "not reached"
    low = min(e["low"] for e in each)
    highs = [e["high"] for e in each]
    high = "inf" if None in highs else f"{max(highs):.2f}"
    return f"{mean:.2f}x [{low:.2f}-{high}]"


TUNING_KEYS = ("lr", "tokens_per_step")  # a run named growlength+lr=0.004 is the recipe growlength, tuned


def recipe_of(run: str) -> str:
    """A bench run's recipe, without the tuning its name carries: 'growlength+lr=0.004' -> 'growlength';
    other variants keep their keys ('growlength+rope_theta=100000+lr=0.004' -> 'growlength+rope_theta=100000')."""
    name, *items = run.split("+")
    kept = [item for item in items if item.partition("=")[0] not in TUNING_KEYS]
    return "+".join([name, *kept])


def scale_rows(reports: list[dict]) -> list[dict]:
    """One row per bench and recipe, for the scale ladder: the model's size, tokens per parameter (the
    baseline's tokens over the parameters), and what the recipe gains there at equal time: speedup
    with its seeds and bracket, its split into learning and cheaper tokens, the final loss gap to the
    baseline and its tokens. Rows sorted by model size, then tokens per parameter."""
    corpora = {_corpus(report) for report in reports}
    rows = []
    for report in reports:
        runs = report["runs"]
        # one model on two corpora is two ladders: never one trend line
        model = report["model"] if len(corpora) == 1 else f"{report['model']} on {_corpus(report)}"
        base_name = next(n for n in runs if recipe_of(n) == report["baseline"])
        base = runs[base_name]
        for name, r in runs.items():
            if "crash" in r:
                continue
            rows.append(
                {
                    "model": model,
                    "params": report["params"],
                    "budget_s": report["budget"]["seconds"],
                    "tokens_per_param": base["tokens"] / report["params"],
                    "recipe": recipe_of(name),
                    "baseline": name == base_name,
                    "run": name,
                    "setting": r["setting"],
                    "speedup": r["speedup"],
                    "speedup_each": [s and s["at"] for s in r["speedup_each"]],
                    "speedup_low": min((s["low"] for s in r["speedup_each"] if s), default=None),
                    "speedup_high": _highest(r["speedup_each"]),
                    "learning": r["token_gain"],
                    "cheaper_tokens": r.get("cheaper_tokens"),
                    "final_gap": r["final_val_loss"] - base["final_val_loss"],
                    "final_val_loss_each": r["final_val_loss_each"],
                    "tokens": r["tokens"],
                    "ceiling": (report.get("ceiling") or {}).get("speedup"),
                }
            )
    return sorted(rows, key=lambda row: (row["params"], row["model"], row["tokens_per_param"], row["recipe"]))


def _corpus(report: dict) -> str:
    """The prepared data a bench trained on, by its folder's name ('shakespeare' for the default)."""
    return Path(str(report.get("config", {}).get("data", "shakespeare"))).name


def _highest(each: list[dict | None]) -> float | None:
    """The upper end of the seeds' brackets: None where a seed has none (it crossed before its first
    evaluation after the start, or never)."""
    highs = [s and s["high"] for s in each]
    return None if not highs or None in highs else max(highs)


def scale_trend(rows: list[dict], at: tuple[float, ...] = (20, 100, 1000)) -> list[dict]:
    """Which way the lead goes as the run grows: for each model and recipe measured at two rungs or
    more, the final loss gap (and log speedup, over the rungs where every seed reached the baseline's
    loss) against log10 tokens per parameter, read at each of `at`: between two rungs on the line
    joining them, beyond the last on the line through the last two (the latest trend, carried on).
    A few rungs say where the trend points, not what a longer run will get: `measured` gives the
    range, and a value read beyond it is a prediction. Beyond the last rung where it reached the
    baseline's loss, where the gap read is above 0 the recipe is read to end above the baseline's final
    loss, so not to reach it: the speedup there is None, not a line's value."""
    trends = []
    for model, recipe in dict.fromkeys((r["model"], r["recipe"]) for r in rows if not r["baseline"]):
        mine = [r for r in rows if (r["model"], r["recipe"]) == (model, recipe)]
        gaps = _by_rung([(r["tokens_per_param"], r["final_gap"]) for r in mine])
        if len(gaps) < 2:
            continue
        speeds = _by_rung([(r["tokens_per_param"], math.log(r["speedup"])) for r in mine if r["speedup"]])
        gap_at = {str(a): _read(gaps, a) for a in at}
        # beyond the last rung it reached the baseline at, a recipe read to end above the baseline's
        # final loss is read not to reach it: no speedup there, whatever the speedup's line says
        last = speeds[-1][0] if speeds else 0.0
        speedup_at = (
            {str(a): None if a > last and gap_at[str(a)] > 0 else math.exp(_read(speeds, a)) for a in at}
            if len(speeds) > 1
            else None
        )
        trends.append(
            {
                "model": model,
                "recipe": recipe,
                "measured": [gaps[0][0], gaps[-1][0]],
                "rungs": len(gaps),
                "gap_per_decade": _slope(gaps[-2], gaps[-1]),  # over the last two rungs
                "gap_at": gap_at,
                "speedup_at": speedup_at,
                "speedup_measured": [speeds[0][0], speeds[-1][0]] if len(speeds) > 1 else None,
            }
        )
    return trends


def _by_rung(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(tokens per parameter, mean value) per rung, in order."""
    rungs: dict[float, list[float]] = {}
    for tpp, value in points:
        rungs.setdefault(tpp, []).append(value)
    return sorted((tpp, statistics.fmean(values)) for tpp, values in rungs.items())


def _slope(a: tuple[float, float], b: tuple[float, float]) -> float:
    """The change per 10x tokens per parameter from rung a to rung b."""
    return (b[1] - a[1]) / math.log10(b[0] / a[0])


def _read(points: list[tuple[float, float]], tpp: float) -> float:
    """The piecewise line (in log10 tokens per parameter) through the rungs at tpp: between the two
    around it, or beyond the ends on the line through the two nearest."""
    i = next((k for k in range(1, len(points) - 1) if tpp < points[k][0]), len(points) - 1)
    a, b = points[i - 1], points[i]
    return a[1] + _slope(a, b) * math.log10(tpp / a[0])


def format_trend(trends: list[dict]) -> str:
    """scale_trend as a Markdown table; a value read beyond the measured rungs is marked "predicted"."""
    if not trends:
        return ""
    at = list(trends[0]["gap_at"])
    head = [f"gap at {a}" for a in at] + [f"speedup at {a}" for a in at]
    lines = [
        "| model | recipe | rungs (tokens/param) | gap per 10x tokens (last two rungs) | "
        + " | ".join(head)
        + " |",
        "|---" * (4 + len(head)) + "|",
    ]
    for t in trends:
        low, high = t["measured"]
        gaps = [_predicted(f"{v:+.3f}", a, t["measured"]) for a, v in t["gap_at"].items()]
        speed_at = t["speedup_at"] or dict.fromkeys(at)
        speeds = [
            _predicted("not reached", a, t["measured"])
            if v is None and t["speedup_at"] and t["gap_at"][a] > 0
            else _predicted(_factor(v), a, t["speedup_measured"])
            for a, v in speed_at.items()
        ]
        cells = gaps + speeds
        rungs = f"{t['rungs']} ({low:.1f}–{high:.1f})"
        lines.append(
            f"| {t['model']} | {t['recipe']} | {rungs} | {t['gap_per_decade']:+.3f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def _predicted(cell: str, at: str, measured: list[float] | None) -> str:
    """The cell, marked "predicted" where `at` lies beyond the rungs its line was read from."""
    if measured is None or measured[0] <= float(at) <= measured[1]:
        return cell
    return f"{cell} predicted"


def format_scale(rows: list[dict]) -> str:
    """The scale ladder as a Markdown table, one row per size, budget and recipe."""
    lines = [
        "| model (params) | budget | tokens/param | recipe | speedup [bracket] (seeds) | = learning "
        "| x cheaper tokens | final loss vs baseline | tokens |",
        "|---" * 9 + "|",
    ]
    for row in rows:
        seeds = ", ".join("—" if s is None else f"{s:.2f}" for s in row["speedup_each"])
        high = "inf" if row["speedup_high"] is None else f"{row['speedup_high']:.2f}"
        bracket = f" [{row['speedup_low']:.2f}-{high}]" if row["speedup"] else ""
        speed = f"{row['speedup']:.2f}x{bracket} ({seeds})" if row["speedup"] else f"not reached ({seeds})"
        size = f"{row['model']} ({row['params'] / 1e6:.2f}M)"
        cells = [
            size,
            f"{row['budget_s']:g} s",
            f"{row['tokens_per_param']:.1f}",
            row["recipe"],
            speed,
            _factor(row["learning"]),
            _factor(row["cheaper_tokens"]),
            f"{row['final_gap']:+.4f}",
            f"{row['tokens']:,.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
