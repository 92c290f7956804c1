import io

from growlength.meter import Meter


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_progress_is_plain_lines_at_the_interval():
    log = io.StringIO()
    meter = Meter(100.0, desc="train", unit="s", every_s=0.0, stream=log)
    meter.update(34.2481196589988, "seq_len 128 loss 5.120")
    meter.update(10.0)
    meter.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 3
    assert lines[0].startswith("train: 34 s/100 s (34%), 0:00:00 elapsed") and lines[0].endswith(
        "| seq_len 128 loss 5.120"
    )
    assert lines[1].startswith("train: 44 s/100 s (44%)") and "seq_len 128" in lines[1]  # the last postfix stays


def test_lines_are_rate_limited_and_quiet_means_quiet():
    log = io.StringIO()
    meter = Meter(10_000_000, desc="encode", unit="char", every_s=3600.0, stream=log)
    for _ in range(100):
        meter.update(1000)
    meter.close()
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[0]]  # only the closing line
    assert log.getvalue().startswith("encode: 100.0k char/10.00M char (1%)")
    quiet = io.StringIO()
    Meter(10, desc="x", unit="step", show=False, stream=quiet).close()
    assert quiet.getvalue() == ""


def test_on_a_terminal_a_seconds_bar_shows_whole_seconds():
    screen = Terminal()
    meter = Meter(100.0, desc="train", unit="s", stream=screen)
    meter.update(34.2481196589988, "loss 5.1")
    meter.close()
    assert "34/100 s" in screen.getvalue() and "34.248" not in screen.getvalue()


def test_a_resumed_meter_times_what_is_left_by_its_own_rate(monkeypatch):
    import growlength.meter as meter_module

    clock = iter([0.0, 10.0, 10.0])  # started; then the update and its line
    monkeypatch.setattr(meter_module.time, "perf_counter", lambda: next(clock))
    log = io.StringIO()
    meter = Meter(1000, desc="encode", unit="char", initial=500, every_s=1.0, stream=log)
    meter.update(100)  # 100 chars in 10 s here: 400 left take 40 s (not 400 x 10 / 600)
    assert "0:00:10 elapsed, 0:00:40 left" in log.getvalue()
