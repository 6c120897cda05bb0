"""Progress of long loops, readable on a terminal and in a batch log.

On a terminal: a tqdm bar. When stderr is a file or a pipe (nohup, SLURM, a Ray worker) a bar
would either print nothing or a carriage-return soup, so a plain line is logged instead every
DATADREAM_PROGRESS_SECONDS seconds (default 30), and once when a loop that long ends:

    adapt [2/10] 002-cat: 120/400 steps (30%), 3.91 steps/s, ETA 1m12s, loss 0.1432

The lines go through the `datadream.progress` logger, so `-q` silences them like any other
information. Only this module decides between the two; stages call `progress(...)` as they would
call tqdm.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO

log = logging.getLogger("datadream.progress")

INTERVAL_ENV = "DATADREAM_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def interval_seconds() -> float:
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL
    except ValueError:
        value = DEFAULT_INTERVAL
    return value if value >= 0 else DEFAULT_INTERVAL


class LineProgress:
    """tqdm's small surface (update, set_postfix, close, iteration) writing timed plain lines."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = initial
        self.interval = interval_seconds() if interval is None else interval
        self.clock = clock
        self.started = self.last = clock()
        self.postfix: dict[str, Any] = {}
        self.closed = False

    def __iter__(self) -> Iterator:
        assert self.iterable is not None, "LineProgress was given no iterable"
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total or 0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        finished = self.total is not None and self.n >= self.total
        if now - self.last >= self.interval and not finished:  # close() reports the end
            self.last = now
            log.info(self.line(now))

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **values: Any) -> None:
        self.postfix.update(ordered_dict or {}, **values)

    def close(self) -> None:
        """A last line with the loop's time, for loops long enough to have been reported on:
        a batch log should not hold a line per validation pass of a few seconds."""
        if not self.closed:
            self.closed = True
            now = self.clock()
            if now - self.started >= self.interval:
                log.info(self.line(now, final=True))

    def line(self, now: float, final: bool = False) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = (self.n - self.initial) / elapsed
        done = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        if self.total:
            done += f" ({100.0 * self.n / self.total:.0f}%)"
        parts = [f"{self.desc}: {done}" if self.desc else done, f"{rate:.3g} {self.unit}/s"]
        if final:
            parts.append(f"took {format_duration(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"ETA {format_duration((self.total - self.n) / rate)}")
        else:
            parts.append("ETA ?")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        return ", ".join(parts)


class _Silent(LineProgress):
    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, disable: bool = False, leave: bool = False, stream: TextIO | None = None,
             clock: Callable[[], float] = time.monotonic) -> Any:
    """A tqdm bar when `stream` (default stderr) is a terminal, else timed plain lines; nothing
    when `disable`. `leave` only matters for the bar: a batch log keeps every line anyway."""
    stream = sys.stderr if stream is None else stream
    if disable:
        return _Silent(iterable, total, desc, unit, initial, clock=clock)
    if _is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=stream,
                    dynamic_ncols=True)
    return LineProgress(iterable, total, desc, unit, initial, clock=clock)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or exotic stream
        return False
