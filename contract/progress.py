"""Progress bars that suit where the output goes: tqdm frames on a terminal, plain lines in a log.

    bar = progress(total=len(batches), desc="epoch 1/3")
    for ... :
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    bar.close()

On a terminal this is tqdm as it is. When the stream is not a terminal (CI, `make demo > log`),
tqdm's carriage-return frames would pile up as hundreds of overwritten lines in the file; there the
same bar prints one plain line at most every `interval` seconds, and its final state when closed.
"""
from __future__ import annotations

import sys
from typing import Iterable, TextIO

from tqdm import tqdm

LOG_INTERVAL = 30.0  # seconds between two lines when the output is a file or a pipe


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _Lines:
    """A stream for tqdm that turns each frame ('\\r' + bar + padding) into one line of its own."""

    def __init__(self, stream: TextIO):
        self.stream, self.last = stream, None

    def write(self, text: str) -> None:
        line = text.replace("\r", "").replace("\x1b[A", "").strip()
        if line and line != self.last:  # tqdm redraws an unchanged bar when it closes
            self.stream.write(line + "\n")
            self.last = line

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Iterable | None = None, *, total: int | float | None = None, desc: str | None = None,
             enabled: bool = True, initial: int | float = 0, unit: str = "it", leave: bool = False,
             position: int | None = None, interval: float = LOG_INTERVAL, stream: TextIO | None = None,
             **tqdm_options) -> tqdm:
    """A tqdm bar on `stream` (default stderr); `enabled=False` gives a bar that prints nothing.
    `tqdm_options` go to tqdm as they are (bar_format, smoothing, ...)."""
    stream = stream if stream is not None else sys.stderr
    common = dict(total=total, desc=desc, initial=initial, unit=unit, position=position, **tqdm_options)
    if not enabled:
        return tqdm(iterable, disable=True, **common)
    if is_terminal(stream):
        return tqdm(iterable, file=stream, dynamic_ncols=True, leave=leave, **common)
    # a log keeps the last line (leave) and a bar of fixed width; no refresh between two intervals
    return tqdm(iterable, file=_Lines(stream), mininterval=interval, maxinterval=interval, leave=True, ncols=100,
                **common)
