"""What the services' stage handlers share: no-op lifecycle hooks, decoding, and the dead-letter
port (publish_dead_letter, from the batch loop, which isolates failing records with it)."""

from __future__ import annotations

import logging
from typing import TypeVar

from concord.deadletters import Rejection
from concord.events import codec
from concord.events.models import Event
from concord.events.raw import RawEvent
from concord.failures import failure_site
from concord.runtime.batch import Outbound, StageHandler, publish_dead_letter

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)


class BaseStage(StageHandler):
    """A StageHandler whose lifecycle hooks do nothing; a stage writes process() and the hooks
    it needs."""

    stage: str
    topics: tuple[str, ...]

    async def on_produced(self) -> None:
        return None

    async def on_assigned(self, partitions: set[int]) -> None:
        return None

    async def on_revoked(self, partitions: set[int]) -> None:
        return None

    async def on_tick(self, partitions: set[int], out: Outbound) -> None:
        return None


def core_failure(exc: Exception, raw: RawEvent, *, stage: str, reason_code: str) -> Rejection:
    """What a stage does when its pure core raises on a record (a bug): the record goes to the
    dead-letter topic, to be replayed once fixed, instead of crashing the worker on it at every
    restart; the log names the code line, never the exception text, which may quote PHI."""
    log.error(
        "%s failed on %s[%d]@%d: %s", stage, raw.topic, raw.partition, raw.offset, failure_site(exc)
    )
    return Rejection(reason_code, f"{type(exc).__name__} in the {stage} core")


def decode_or_dead_letter(
    out: Outbound, raw: RawEvent, event_codec: codec.EventCodec[E]
) -> E | None:
    """The event a raw record holds, or None once the record has gone to the dead-letter topic:
    one undecodable record must not stop the batch, and is kept to be replayed."""
    try:
        return event_codec.decode(raw.value)
    except codec.CodecError as exc:
        rejection = Rejection("UNDECODABLE_EVENT", f"{exc} [{exc.reason_code}]")
        publish_dead_letter(out, raw=raw, rejection=rejection)
        return None
