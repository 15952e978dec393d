"""Audiences over stored events (``[[audiences]]`` in the configuration).

An audience's rule is evaluated over its source's history (:class:`~heaprelay.queue.base.
AudienceHistory`, kept by the queue's store: the track events accepted and each user's latest
traits): the users with at least ``at_least`` events named ``event`` whose time is in
``[now - within, now]`` and whose latest traits have the rule's values. That member set goes
to :func:`heaprelay.audiences.sync.sync_members`, which diffs it against the audience's last
snapshot and enqueues ``key = true`` for those who entered and ``key = false`` for those who
left, to the source's Heap destinations.

Evaluated on demand (``heaprelay audiences run``) and on a schedule inside ``serve``
(:func:`audience_service`): each audience every ``every`` seconds, by one relay of those
sharing a store (:meth:`~heaprelay.queue.base.AudienceHistory.claim_audience_run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final

from heaprelay.audiences.sync import SyncResult, sync_members, sync_values
from heaprelay.config import Audience, Config
from heaprelay.queue.base import AudienceHistory, AudienceStore, CountQuery, MemberQuery, Queue

if TYPE_CHECKING:
    from heaprelay.runtime import Runtime

__all__ = [
    "audience_service",
    "evaluate",
    "evaluate_trait",
    "member_query",
    "run_audience",
    "summary",
]

log = logging.getLogger("heaprelay.audiences")

#: Longest wait between two looks at which audiences are due.
MAX_TICK: Final = 10.0


def member_query(audience: Audience, *, now: float) -> MemberQuery:
    """The history query of ``audience``'s rule evaluated at ``now``. Pure."""
    rule = audience.rule
    return MemberQuery(
        source=audience.source,
        event=rule.event,
        at_least=rule.at_least,
        start=now - rule.within,
        end=now,
        traits=rule.traits,
    )


async def evaluate(queue: Queue, audience: Audience, *, now: float) -> set[str]:
    """The user ids in ``audience`` at ``now``."""
    if not isinstance(queue, AudienceHistory):
        raise TypeError(f"{type(queue).__name__} keeps no history for audiences")
    return await queue.history_members(member_query(audience, now=now))


async def evaluate_trait(queue: Queue, trait: Audience, *, now: float) -> dict[str, float]:
    """A computed trait's value per user at ``now`` (users without one left out): the count
    of its event (distinct messageIds) in ``[now - within, now]``, or the sum of its
    property's numeric values (one a messageId)."""
    if not isinstance(queue, AudienceHistory):
        raise TypeError(f"{type(queue).__name__} keeps no history for computed traits")
    rule = trait.rule
    query = CountQuery(trait.source, rule.event, now - rule.within, now, rule.sum)
    if rule.sum is not None:
        return await queue.history_sums(query)
    return {user: float(n) for user, n in (await queue.history_counts(query)).items()}


async def run_audience(
    queue: Queue, config: Config, audience: Audience, *, now: float, dry_run: bool = False
) -> SyncResult:
    """Evaluate ``audience`` and sync its members, or a computed trait's values (the diff
    is enqueued unless ``dry_run``)."""
    if not isinstance(queue, AudienceStore):
        raise TypeError(f"{type(queue).__name__} keeps no audience snapshots")
    if audience.kind == "trait":
        values = await evaluate_trait(queue, audience, now=now)
        return await sync_values(
            queue,
            queue,
            config,
            name=audience.name,
            source=audience.source,
            key=audience.key,
            values=values,
            now=now,
            dry_run=dry_run,
        )
    members = await evaluate(queue, audience, now=now)
    return await sync_members(
        queue,
        queue,
        config,
        name=audience.name,
        source=audience.source,
        key=audience.key,
        members={user: {} for user in members},
        now=now,
        dry_run=dry_run,
    )


def summary(result: SyncResult) -> str:
    """One line: what an evaluation's sync did (or would do, ``dry_run``)."""
    verb = "would send" if result.dry_run else "enqueued"
    first = "first sync, " if result.first else ""
    if result.changed or result.kind == "trait":
        updates = len(result.entered) + len(result.changed) + len(result.left)
        return (
            f"{result.members} users with a value ({first}{len(result.entered)} new, "
            f"{len(result.changed)} changed, {len(result.left)} back to 0, "
            f"{result.unchanged} unchanged); {verb} {updates} updates"
            + ("" if result.dry_run else f" ({result.jobs} jobs)")
        )
    return (
        f"{result.members} members ({first}{len(result.entered)} entered, "
        f"{len(result.left)} left, {result.unchanged} unchanged); {verb} "
        f"{len(result.entered) + len(result.left)} updates"
        + ("" if result.dry_run else f" ({result.jobs} jobs)")
    )


async def audience_service(runtime: Runtime, *, tick: float | None = None) -> None:
    """Evaluate each configured audience every ``every`` seconds until the server stops.
    With several relays on one store, one of them evaluates a given audience a period.
    ``tick``: seconds between two looks at which audiences are due (default: the shortest
    ``every``, at most :data:`MAX_TICK`)."""
    assert runtime.queue is not None, "the server opens the queue before starting services"
    queue, config = runtime.queue, runtime.config
    if not config.audiences or not isinstance(queue, AudienceHistory):
        return
    if tick is None:
        tick = min(MAX_TICK, *(a.every for a in config.audiences))
    while not runtime.stopping.is_set():
        for audience in config.audiences:
            now = runtime.clock.now()
            try:
                if await queue.claim_audience_run(audience.key, now=now, every=audience.every):
                    result = await run_audience(queue, config, audience, now=now)
                    log.info("audience %r: %s", audience.name, summary(result))
            except Exception:  # a failed evaluation must not stop the server; next period
                log.exception("audience %r: evaluation failed", audience.name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runtime.stopping.wait(), tick)
