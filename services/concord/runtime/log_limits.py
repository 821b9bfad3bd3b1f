"""A limit on repeated log lines, installed on aiokafka's loggers by the worker.

While the broker is away aiokafka retries every ~50 ms and logs each failure ("Unable connect
to node with id …", "Unable to update metadata from …", coordinator and fetch errors): 150-190
ERROR lines a second per worker, ~5,000 for a 30 s outage, burying everything else. The worker
reports the outage itself (/health 503 with `stalled`, the metrics), so one line of each kind
per interval is enough: the first passes, the repeats within INTERVAL_SECONDS are dropped, and
the next one after it passes and says how many were dropped meanwhile.

A kind is the logger's name, the level and the message template (record.msg, before its %
arguments): the same error for another node id or port is the same kind, two different errors
never are. Time is the record's own (record.created), so the filter is a pure function of the
records it is shown.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
from collections import OrderedDict

# At most one line of a kind per this many seconds.
INTERVAL_SECONDS = 10.0
# Kinds remembered at most (least recently seen forgotten first); aiokafka has ~200 templates.
MAX_KINDS = 512
# The logger whose lines (its own and its children's) are limited.
LIMITED_LOGGER = "aiokafka"

_Kind = tuple[str, int, str]


class _Seen:
    __slots__ = ("passed_at", "suppressed")

    def __init__(self, passed_at: float) -> None:
        self.passed_at = passed_at
        self.suppressed = 0


class RepeatLimit(logging.Filter):
    """Lets the first record of a kind through, then at most one per `interval` seconds; the
    one let through after others were dropped says how many ("… [12 similar lines suppressed
    in 10.0 s]")."""

    def __init__(self, interval: float = INTERVAL_SECONDS, max_kinds: int = MAX_KINDS) -> None:
        super().__init__()
        if interval <= 0 or max_kinds < 1:
            raise ValueError("interval must be positive and max_kinds at least 1")
        self.interval = interval
        self.max_kinds = max_kinds
        self._seen: OrderedDict[_Kind, _Seen] = OrderedDict()
        # Faust runs a consumer on a thread of its own: records arrive from several threads.
        self._lock = threading.Lock()

    @property
    def kinds(self) -> int:
        """How many kinds are remembered now (never more than max_kinds)."""
        return len(self._seen)

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, str(record.msg))
        with self._lock:
            seen = self._seen.get(kind)
            if seen is None:
                self._seen[kind] = _Seen(record.created)
                if len(self._seen) > self.max_kinds:
                    self._seen.popitem(last=False)
                return True
            self._seen.move_to_end(kind)
            elapsed = record.created - seen.passed_at
            # A clock set back (elapsed < 0) lets the record through rather than muting the
            # kind until the clock catches up.
            if 0 <= elapsed < self.interval:
                seen.suppressed += 1
                return False
            suppressed, seen.suppressed, seen.passed_at = seen.suppressed, 0, record.created
        if suppressed:
            try:
                message = record.getMessage()
            except Exception:  # a record that does not format: the handler reports it
                return True
            record.msg = (
                f"{message} [{suppressed} similar "
                f"line{'s' if suppressed != 1 else ''} suppressed in {elapsed:.1f} s]"
            )
            record.args = ()  # not None: Faust's formatter makes that (None,)
        return True


def limit_repeats(
    logger_name: str = LIMITED_LOGGER, interval: float = INTERVAL_SECONDS
) -> RepeatLimit:
    """Install one RepeatLimit on `logger_name` and every logger below it; the one already
    installed is returned when called again.

    A logger's filters see only the records logged on that logger, not those its children pass
    up, so the filter goes on each of them. For a package (aiokafka), the loggers of its
    modules not imported yet are made now, under their module names, so the module gets the
    filtered logger when it is imported later."""
    root = logging.getLogger(logger_name)
    installed = next((f for f in root.filters if isinstance(f, RepeatLimit)), None)
    limit = installed or RepeatLimit(interval)
    names = {logger_name, *_module_names(logger_name)}
    names.update(
        name
        for name, logger in list(logging.root.manager.loggerDict.items())
        if name.startswith(logger_name + ".") and isinstance(logger, logging.Logger)
    )
    for name in sorted(names):
        logger = logging.getLogger(name)
        if limit not in logger.filters:
            logger.addFilter(limit)
    return limit


def _module_names(package: str) -> list[str]:
    """The names of a package's modules, found without importing them (only subpackages
    are imported); none when it is not an installed package."""
    try:
        path = getattr(importlib.import_module(package), "__path__", None)
    except ImportError:
        return []
    if path is None:
        return []
    return [
        info.name for info in pkgutil.walk_packages(path, package + ".", onerror=lambda name: None)
    ]
