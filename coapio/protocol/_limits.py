"""Reporting that a configured bound was reached: counted always, logged at most once per interval.

A server at one of its bounds (handlers, observers, reassembly, send backlog, dedup cache) is usually under
load or attack, and then hits the bound thousands of times a second; a log line each time would itself be
the denial of service. :class:`LimitLog` logs the first hit at once and then at most one line per
``interval`` per bound, saying how many hits it left unlogged, and keeps exact counts for monitoring and
tests. It takes the time as an argument, like the sans-IO core it serves.
"""

from __future__ import annotations

import logging

__all__ = ["LimitLog"]


class LimitLog:
    """Counts the hits of each named bound and logs a warning about each at most once per ``interval``."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0):
        self.logger = logger
        self.interval = interval
        #: Hits of each bound since the start, by name.
        self.hits: dict[str, int] = {}
        self._next_log: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def hit(self, name: str, now: float, what: str, *args: object) -> None:
        """Record one hit of bound ``name``; ``what`` (a %-format of ``args``) says what happened."""
        self.hits[name] = self.hits.get(name, 0) + 1
        if now < self._next_log.get(name, -1e300):
            self._unlogged[name] = self._unlogged.get(name, 0) + 1
            return
        self._next_log[name] = now + self.interval
        unlogged = self._unlogged.pop(name, 0)
        if self.logger.isEnabledFor(logging.WARNING):
            suffix = f" ({unlogged} more since the last report)" if unlogged else ""
            self.logger.warning("limit %s reached: " + what + "%s", name, *args, suffix)

    def __repr__(self) -> str:
        return f"<LimitLog {self.hits!r}>"
