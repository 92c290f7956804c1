"""Progress for long work: tqdm's bar on a terminal, plain lines in a log file.

Under a batch scheduler stderr is a file, and a redrawn bar leaves megabytes of carriage returns in it
(a 21-second run of 200 steps once left a 28 kB log in 3 lines). Off a terminal, a Meter prints one
line every `every_s` seconds instead, and one at the end:

    train: 41/100 s (41%), 0:00:41 elapsed, 0:00:59 left | stage 2/4 seq_len 256 rows 32 6,911 tok/s loss 5.120
"""

import sys
import time


class Meter:
    def __init__(
        self,
        total: float | None,
        *,
        desc: str,
        unit: str,
        initial: float = 0,
        every_s: float = 30.0,
        show: bool = True,
        scale: bool = False,
        stream=None,
    ):
        self.total, self.desc, self.unit, self.done, self.every_s = total, desc, unit, initial, every_s
        self.initial = initial  # done before this process (a resumed run): not part of its rate
        self.stream = stream or sys.stderr
        self.show, self.postfix, self.started = show, "", time.perf_counter()
        self.last_line = self.started
        self.bar = None
        if show and _is_terminal(self.stream):
            from tqdm.auto import tqdm

            whole = "{n:.0f}/{total:.0f} " + unit if unit == "s" else "{n_fmt}/{total_fmt} " + unit
            self.bar = tqdm(
                total=total,
                initial=initial,
                unit=unit,
                unit_scale=scale,
                desc=desc,
                mininterval=1.0,
                dynamic_ncols=True,
                file=self.stream,
                bar_format="{l_bar}{bar}| " + whole + " [{elapsed}<{remaining}{postfix}]" if total else None,
            )

    def update(self, n: float, postfix: str | None = None) -> None:
        self.done += n
        if postfix is not None:
            self.postfix = postfix
        if self.bar is not None:
            if postfix is not None:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(n)
        elif self.show and time.perf_counter() - self.last_line >= self.every_s:
            self.print_line()

    def print_line(self) -> None:
        self.last_line = time.perf_counter()
        print(self.line(self.last_line - self.started), file=self.stream, flush=True)

    def line(self, elapsed: float) -> str:
        done = _amount(self.done, self.unit)
        text = f"{self.desc}: {done}"
        if self.total:
            text += f"/{_amount(self.total, self.unit)} ({100 * self.done / self.total:.0f}%)"
        text += f", {_clock(elapsed)} elapsed"
        if self.total and self.done > self.initial and elapsed > 0:
            rate = (self.done - self.initial) / elapsed
            text += f", {_clock(max(0.0, (self.total - self.done) / rate))} left"
        return text + (f" | {self.postfix}" if self.postfix else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.show:
            self.print_line()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _amount(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.0f} s"
    if abs(value) >= 10_000:
        return f"{value / 1e6:.2f}M {unit}" if abs(value) >= 1e6 else f"{value / 1e3:.1f}k {unit}"
    return f"{value:,.0f} {unit}"


def _clock(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}"
