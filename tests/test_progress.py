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
    start = time.monotonic()
    text = run(io.StringIO())
    elapsed = time.monotonic() - start
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    # >= 0.2 s of work at 0.05 s intervals: a line per interval (a slow machine takes more of them),
    # not one per step
    assert 2 <= len(lines) <= min(elapsed / 0.05 + 3, 39)
    assert lines[0].startswith("epoch 1/1:   0%") and lines[-1].startswith("epoch 1/1: 100%")
    assert "40/40" in lines[-1] and "loss=0.0250" in lines[-1]
    assert len(set(lines)) == len(lines)  # the closing redraw is not repeated


def test_a_terminal_gets_tqdm_frames():
    text = run(Terminal())
    # frames redrawn in place; tqdm draws at most every 0.1 s and a closed bar (leave=False) is
    # cleared, so which counts show depends on timing: "40/40" need not be one of them
    assert text.count("\r") > 2 and "/40 [" in text and "\n" not in text


def test_disabled_prints_nothing_and_still_iterates():
    stream = io.StringIO()
    assert list(progress(range(3), stream=stream, enabled=False)) == [0, 1, 2]
    assert stream.getvalue() == ""
