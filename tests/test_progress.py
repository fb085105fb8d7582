"""contract/progress.py: tqdm frames on a terminal, one plain line per interval in a log."""
from __future__ import annotations

import io
import time

from contract.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(stream, steps: int = 40, pause: float = 0.005, interval: float = 0.05) -> str:
    bar = progress(total=steps, desc="epoch 1/1", stream=stream, interval=interval)
    for i in range(steps):
        time.sleep(pause)
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (i + 1):.4f}", refresh=False)
    bar.close()
    return stream.getvalue()


def test_a_log_gets_plain_lines_at_the_interval_and_the_final_state():
    text = run(io.StringIO())
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert 2 <= len(lines) <= 10  # 0.2 s of work at 0.05 s intervals, not one line per step
    assert lines[0].startswith("epoch 1/1:   0%") and lines[-1].startswith("epoch 1/1: 100%")
    assert "40/40" in lines[-1] and "loss=0.0250" in lines[-1]
    assert len(set(lines)) == len(lines)  # the closing redraw is not repeated


def test_a_terminal_gets_tqdm_frames():
    text = run(Terminal())
    assert text.count("\r") > 2 and "40/40" in text


def test_disabled_prints_nothing_and_still_iterates():
    stream = io.StringIO()
    assert list(progress(range(3), stream=stream, enabled=False)) == [0, 1, 2]
    assert stream.getvalue() == ""
