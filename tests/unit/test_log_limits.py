"""The limit on repeated log lines (concord.runtime.log_limits), on hand-made LogRecords: the
records' own timestamps drive it, so nothing sleeps."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from mode.utils.logging import ExtensionFormatter

from concord.runtime.log_limits import INTERVAL_SECONDS, RepeatLimit, limit_repeats

UNABLE = "Unable connect to node with id %s: %s"
METADATA = "Unable to update metadata from %s"


def record(
    created: float,
    msg: str = UNABLE,
    args: tuple[object, ...] = (1, "[Errno 111] Connect call failed"),
    name: str = "aiokafka",
    level: int = logging.ERROR,
) -> logging.LogRecord:
    made = logging.LogRecord(name, level, "client.py", 435, msg, args, None)
    made.created = created
    return made


def passed(limit: RepeatLimit, *records: logging.LogRecord) -> list[str]:
    """The messages of the records the filter lets through."""
    return [r.getMessage() for r in records if limit.filter(r)]


def test_the_first_line_of_a_kind_passes_unchanged() -> None:
    limit = RepeatLimit(interval=10)
    assert passed(limit, record(1000.0)) == [
        "Unable connect to node with id 1: [Errno 111] Connect call failed"
    ]


def test_repeats_within_the_interval_are_dropped_whatever_their_arguments() -> None:
    limit = RepeatLimit(interval=10)
    assert limit.filter(record(1000.0))
    # Every 50 ms for just under 10 s, another node id and error each time: the same kind.
    repeats = [record(1000.0 + 0.05 * n, args=(n, f"port {n}")) for n in range(1, 200)]
    assert passed(limit, *repeats) == []


def test_the_next_line_after_the_interval_passes_with_the_suppressed_count() -> None:
    limit = RepeatLimit(interval=10)
    assert limit.filter(record(1000.0))
    assert passed(limit, *(record(1000.0 + n) for n in range(1, 10))) == []  # 9 dropped
    assert passed(limit, record(1010.0, args=(2, "refused"))) == [
        "Unable connect to node with id 2: refused [9 similar lines suppressed in 10.0 s]"
    ]
    # The count starts again: one dropped, then one more let through.
    assert passed(limit, record(1015.0), record(1020.5, args=(3, "x"))) == [
        "Unable connect to node with id 3: x [1 similar line suppressed in 10.5 s]"
    ]
    # Nothing dropped since: no count.
    assert passed(limit, record(1040.0, args=(4, "y"))) == ["Unable connect to node with id 4: y"]


def test_a_line_with_the_count_keeps_its_exception_and_has_no_arguments_left() -> None:
    limit = RepeatLimit(interval=10)
    template, args = "50%% of %s failed", ("requests",)
    assert limit.filter(record(0.0, msg=template, args=args))
    assert not limit.filter(record(1.0, msg=template, args=args))
    later = record(10.0, msg=template, args=args)
    later.exc_info = (ValueError, ValueError("boom"), None)
    assert limit.filter(later)
    assert later.args == () and later.exc_info is not None
    # The % the arguments were formatted into is not read as a placeholder afterwards, by
    # logging's formatter nor by the worker's (Faust's, which wraps args that are not a tuple:
    # None would become (None,) and fail to format).
    assert later.getMessage() == "50% of requests failed [1 similar line suppressed in 10.0 s]"
    for formatter in (logging.Formatter(), ExtensionFormatter(stream=io.StringIO())):
        formatted = formatter.format(later)
        assert "50% of requests failed [1 similar line" in formatted, formatted
        assert "boom" in formatted


def test_different_templates_loggers_and_levels_are_limited_apart() -> None:
    limit = RepeatLimit(interval=10)
    kinds = [
        record(1000.0),
        record(1000.1, msg=METADATA, args=([1],)),
        record(1000.2, name="aiokafka.conn"),
        record(1000.3, level=logging.WARNING),
    ]
    assert len(passed(limit, *kinds)) == 4
    # Each kind's repeats dropped, each on its own clock.
    assert passed(limit, record(1005.0), record(1005.0, msg=METADATA, args=([1],))) == []
    assert passed(limit, record(1010.0), record(1010.05, msg=METADATA, args=([1],))) == [
        "Unable connect to node with id 1: [Errno 111] Connect call failed"
        " [1 similar line suppressed in 10.0 s]"
    ]
    assert passed(limit, record(1010.1, msg=METADATA, args=([2],))) == [
        "Unable to update metadata from [2] [2 similar lines suppressed in 10.0 s]"
    ]


def test_a_clock_set_back_lets_the_line_through() -> None:
    limit = RepeatLimit(interval=10)
    assert limit.filter(record(1000.0))
    assert limit.filter(record(400.0))
    assert not limit.filter(record(405.0))


def test_memory_is_bounded_forgetting_the_least_recently_seen_kind() -> None:
    limit = RepeatLimit(interval=10, max_kinds=3)
    for n in range(1000):
        assert limit.filter(record(1000.0, msg=f"template {n} %s"))
        assert limit.kinds <= 3
    assert limit.kinds == 3
    # The three last kinds are remembered (their repeats dropped); seeing one again keeps it,
    # so a new kind makes the least recently seen one forgotten: 998, not 997.
    assert not limit.filter(record(1001.0, msg="template 997 %s"))
    assert limit.filter(record(1001.0, msg="template 0 %s"))
    assert not limit.filter(record(1002.0, msg="template 997 %s"))
    assert not limit.filter(record(1002.0, msg="template 999 %s"))
    assert limit.filter(record(1002.0, msg="template 998 %s"))


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        RepeatLimit(interval=0)
    with pytest.raises(ValueError):
        RepeatLimit(max_kinds=0)


@pytest.fixture
def installed() -> Iterator[RepeatLimit]:
    """limit_repeats on aiokafka's loggers, removed again afterwards."""
    limit = limit_repeats("aiokafka")
    try:
        yield limit
    finally:
        for logger in logging.root.manager.loggerDict.values():
            if isinstance(logger, logging.Logger) and limit in logger.filters:
                logger.removeFilter(limit)


def test_the_limit_is_on_aiokafka_and_each_of_its_module_loggers(
    installed: RepeatLimit,
) -> None:
    assert installed.interval == INTERVAL_SECONDS == 10.0
    # A logger's filters do not see its children's records, so every module's logger has it,
    # those of modules imported later too (helpers is imported only for SSL contexts).
    for name in (
        "aiokafka",
        "aiokafka.conn",
        "aiokafka.cluster",
        "aiokafka.consumer.fetcher",
        "aiokafka.consumer.group_coordinator",
        "aiokafka.producer.sender",
        "aiokafka.admin.client",
        "aiokafka.helpers",
    ):
        assert installed in logging.getLogger(name).filters, name
    # Installing again adds nothing.
    assert limit_repeats("aiokafka") is installed
    assert logging.getLogger("aiokafka.conn").filters.count(installed) == 1
    # Other loggers are left alone.
    assert installed not in logging.getLogger("concord.worker").filters


def test_records_through_the_loggers_are_limited(
    installed: RepeatLimit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="aiokafka")
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    for n in range(100):
        fetcher.error("Failed fetch messages from %s: %s", n, "NodeNotReadyError")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["Failed fetch messages from 0: NodeNotReadyError"]


def test_a_record_that_does_not_format_passes_untouched_for_the_handler_to_report() -> None:
    limit = RepeatLimit(interval=10)
    assert limit.filter(record(0.0, msg="%s and %s", args=(1,)))
    assert not limit.filter(record(1.0, msg="%s and %s", args=(1,)))
    broken = record(10.0, msg="%s and %s", args=(1,))
    assert limit.filter(broken)  # no exception raised into the caller's log call
    assert (broken.msg, broken.args) == ("%s and %s", (1,))
