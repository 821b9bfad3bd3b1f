"""Reloading the source-of-truth policy while the conflicts worker runs.

The worker polls (a Faust timer) rather than watching for file events: a bind mount, a
Kubernetes ConfigMap (a symlink swapped) and an editor's rename all change the file in ways
inotify reports differently or not at all, while reading a few kilobytes every few seconds
sees every one of them. A change is recognized by the content's hash, not the mtime, which
`cp -p` and coarse file-system clocks can leave unchanged.

An invalid file never replaces a valid policy: the one in force stays, the error is logged
with its lines and counted, and nothing more happens until the file changes again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

from concord.conflicts.policy import PolicyError, SourcePolicy, parse_policy
from concord.conflicts.policy_file import unreadable
from concord.failures import failure_site
from concord.metrics import POLICY_INFO, POLICY_RELOADS

log = logging.getLogger(__name__)

ReloadOutcome = Literal["applied", "rejected"]


class PolicyHolder(Protocol):
    """What reads the policy on every batch (the conflicts stage)."""

    policy: SourcePolicy


def show_version(version: str) -> None:
    """concord_policy_info{version} = 1 for this version only."""
    POLICY_INFO.clear()
    POLICY_INFO.labels(version=version).set(1)


class PolicyWatcher:
    """The policy file at `path` and the policy in force from it.

    Built, it loads the file (PolicyError if it cannot be used); poll() then applies the file
    whenever its content changes and is valid. `read` stands in for the file system in tests.
    """

    def __init__(self, path: Path, *, read: Callable[[Path], bytes] = Path.read_bytes) -> None:
        self.path = path
        self._read = read
        try:
            document = read(path)
        except OSError as exc:
            raise unreadable(str(path), exc) from exc
        self.policy: SourcePolicy = parse_policy(document, str(path))
        self._seen = _digest(document)
        show_version(self.policy.version)

    def poll(self) -> ReloadOutcome | None:
        """Read the file; None when it is as last seen, else apply it or reject it."""
        try:
            document = self._read(self.path)
        except OSError as exc:
            # Reported once, not every poll, until the file is readable again.
            return self._reject(f"unreadable:{exc.errno}", unreadable(str(self.path), exc))
        seen = _digest(document)
        if seen == self._seen:
            return None
        try:
            policy = parse_policy(document, str(self.path))
        except PolicyError as exc:
            return self._reject(seen, exc)
        self._seen = seen
        previous, self.policy = self.policy.version, policy
        show_version(policy.version)
        POLICY_RELOADS.labels(outcome="applied").inc()
        log.info("source-of-truth policy %s applied (was %s)", policy.version, previous)
        return "applied"

    def _reject(self, seen: str, error: PolicyError) -> ReloadOutcome | None:
        if seen == self._seen:
            return None
        self._seen = seen
        POLICY_RELOADS.labels(outcome="rejected").inc()
        log.error(
            "the changed policy file was not applied; policy %s stays in force:\n%s",
            self.policy.version,
            error,
        )
        return "rejected"


async def reload_into(holder: PolicyHolder, watcher: PolicyWatcher) -> ReloadOutcome | None:
    """One poll, for a timer: the file read and validated off the event loop, the new policy
    handed to the holder on it (the stage reads `policy` from the loop only)."""
    try:
        outcome = await asyncio.to_thread(watcher.poll)
    except Exception as exc:
        # A reload must never stop the worker: the policy in force is still a valid one.
        log.error(
            "checking the policy file failed (%s); policy %s stays",
            failure_site(exc),
            watcher.policy.version,
        )
        POLICY_RELOADS.labels(outcome="rejected").inc()
        return "rejected"
    if holder.policy is not watcher.policy:
        holder.policy = watcher.policy
    return outcome


def _digest(document: bytes) -> str:
    return hashlib.sha256(document).hexdigest()
