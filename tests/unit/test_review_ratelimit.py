"""The review API's rate limit per principal: counted by `limits` in memory, no sleeping."""

from __future__ import annotations

import pytest
from limits.storage import MemoryStorage

from concord.config import ReviewSettings
from concord.review.access import Principal, Role
from concord.review.ratelimit import PrincipalRateLimit

ALICE = Principal(subject="alice", role=Role.REVIEWER, issuer="https://idp.example")
BOB = Principal(subject="bob", role=Role.REVIEWER, issuer="https://idp.example")


def test_the_hit_after_the_limit_says_how_long_to_wait() -> None:
    limit = PrincipalRateLimit(5)
    assert [limit.hit(ALICE) for _ in range(5)] == [None] * 5
    assert limit.remaining(ALICE) == 0
    wait = limit.hit(ALICE)
    assert wait is not None and 0 < wait <= 60


def test_principals_are_counted_apart() -> None:
    limit = PrincipalRateLimit(1)
    assert limit.hit(ALICE) is None
    assert limit.hit(ALICE) is not None
    assert limit.hit(BOB) is None
    same_subject_other_issuer = Principal(
        subject="alice", role=Role.REVIEWER, issuer="https://other.example"
    )
    assert limit.hit(same_subject_other_issuer) is None


def test_a_window_that_has_passed_frees_the_principal() -> None:
    """The moving window forgets hits older than a minute: clear the storage to stand in for
    the minute passing (no sleeps)."""
    storage = MemoryStorage()
    limit = PrincipalRateLimit(2, storage=storage)
    limit.hit(ALICE)
    limit.hit(ALICE)
    assert limit.hit(ALICE) is not None
    storage.reset()
    assert limit.hit(ALICE) is None


def test_identifiers_do_not_collide_on_slashes() -> None:
    a = Principal(subject="b/c", role=Role.SRE, issuer="https://x/a")
    b = Principal(subject="c", role=Role.SRE, issuer="https://x/a/b")
    assert PrincipalRateLimit.identifier(a) != PrincipalRateLimit.identifier(b)


def test_from_settings() -> None:
    settings = ReviewSettings(
        database_url="postgresql://user@host:5432/concord",
        rate_limit_per_minute=3,
    )
    limit = PrincipalRateLimit.from_settings(settings)
    assert [limit.hit(ALICE) for _ in range(4)][-1] is not None


def test_at_least_one_a_minute() -> None:
    with pytest.raises(ValueError, match="at least one"):
        PrincipalRateLimit(0)
