"""One sync of an audience: diff a complete member set against the stored snapshot, enqueue
the updates for the source's Heap destinations, and store the new snapshot.

The updates are ``identify`` messages (``userId`` = the member, ``traits`` = ``{key: true}``
plus the member's extra traits for those who entered, ``{key: false}`` for those who left),
stored exactly as ingest stores an SDK's identify, so that each destination's profile
transforms them (``heap``: ``"true"``/``"false"``; ``segment``: JSON booleans). The first sync
sends every member; later ones only who entered or left (reference audiences.md §3).

Exactly once: the jobs and the new snapshot are committed in one transaction of the queue's
store (:meth:`~heaprelay.queue.base.AudienceStore.commit_audience_sync`): a crash or error
before the commit leaves neither, so the next run computes the same diff again; after it,
both. messageIds are deterministic per (key, sync number, user) as well, so the last sync's
jobs can be found (``heaprelay audiences show``) and a message sent twice would be a
duplicate for the queue."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from heaprelay.audiences._key import audience_key, check_key
from heaprelay.config import Config, Source
from heaprelay.ingest import fan_out
from heaprelay.messages.incoming import Rejection, prepare
from heaprelay.queue.base import AudienceStore, AudienceSync, NewJob, Queue


class AudienceError(ValueError):
    """A sync that cannot be done as asked (unknown source, a key other than the audience's,
    an update the relay would refuse): nothing was enqueued or stored."""


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What a sync did (or, with ``dry_run``, would do)."""

    name: str
    key: str
    source: str
    #: This sync's number (1: the first sync, which sends every member).
    sync: int
    first: bool
    #: User ids that entered (sent ``key = true``) and left (``key = false``), sorted. A
    #: computed trait's: who got a value for the first time, and who had one and has none
    #: now (sent ``key = 0``).
    entered: tuple[str, ...]
    left: tuple[str, ...]
    #: Members before and after who were not sent anything.
    unchanged: int
    #: Members after the sync.
    members: int
    #: Jobs enqueued: updates x enabled destinations (0 for a dry run).
    jobs: int
    destinations: tuple[str, ...]
    dry_run: bool
    #: A computed trait's users whose value changed (sent the new value), sorted.
    changed: tuple[str, ...] = ()
    #: ``"audience"`` or ``"trait"`` (a computed trait's sync).
    kind: str = "audience"


def message_prefix(key: str, sync: int) -> str:
    """The start of the messageIds of sync number ``sync`` of the audience keyed ``key``."""
    return f"aud-{hashlib.blake2b(key.encode(), digest_size=6).hexdigest()}-{sync}-"


def message_id(key: str, sync: int, user_id: str) -> str:
    """The messageId of ``user_id``'s update in sync ``sync`` (under 100 characters, as
    Segment's messageIds are, whatever the id's length)."""
    user = hashlib.blake2b(f"{key}\0{user_id}".encode(), digest_size=12).hexdigest()
    return message_prefix(key, sync) + user


def source_of(config: Config, name: str) -> Source:
    for source in config.sources:
        if source.name == name:
            return source
    names = ", ".join(s.name for s in config.sources)
    raise AudienceError(f"no source {name!r} in the configuration (sources: {names})")


async def sync_members(
    store: AudienceStore,
    queue: Queue,
    config: Config,
    *,
    name: str,
    source: str,
    key: str | None,
    members: Mapping[str, Mapping[str, Any]],
    now: float,
    dry_run: bool = False,
) -> SyncResult:
    """Sync audience ``name`` to the complete member set ``members`` (user id -> extra
    traits sent with its ``true`` update).

    ``key``: the Heap user property; ``None`` is the audience's stored key, or
    :func:`audience_key` of ``name`` at the first sync. The key and the source are fixed at
    the first sync: another one later is an :class:`AudienceError`. ``store`` must be
    ``queue`` itself (the queue backends implement the store), since the updates and the
    snapshot commit together. ``dry_run``: compute the diff, change nothing. Raises
    :class:`AudienceError` (nothing written) for a sync that does not fit the stored
    audience, including one committed by another process meanwhile
    (:class:`~heaprelay.queue.base.AudienceConflict`)."""
    return await _sync(
        store, queue, config, name, source, key, members, None, now=now, dry_run=dry_run
    )


async def sync_values(
    store: AudienceStore,
    queue: Queue,
    config: Config,
    *,
    name: str,
    source: str,
    key: str | None,
    values: Mapping[str, float],
    now: float,
    dry_run: bool = False,
) -> SyncResult:
    """Sync computed trait ``name`` to ``values`` (user id -> value; a user left out has
    none), as :func:`sync_members` syncs an audience: the first sync sends every user's
    value, later ones only the values that changed, and ``key = 0`` to a user who had a
    value and has none now."""
    return await _sync(
        store, queue, config, name, source, key, {}, values, now=now, dry_run=dry_run
    )


async def _sync(
    store: AudienceStore,
    queue: Queue,
    config: Config,
    name: str,
    source: str,
    key: str | None,
    members: Mapping[str, Mapping[str, Any]],
    values: Mapping[str, float] | None,
    *,
    now: float,
    dry_run: bool,
) -> SyncResult:
    """An audience's sync (``values`` None: ``members`` are in) or a computed trait's."""
    from heaprelay.queue.base import AudienceConflict

    if store is not queue:  # type: ignore[comparison-overlap]
        raise ValueError("the audience store must be the queue the updates go to")
    relay_source = source_of(config, source)
    stored = await store.audience(name)
    if stored is not None:
        if key is not None and key != stored.key:
            raise AudienceError(
                f"audience {name!r} has key {stored.key!r} since its first sync; a key "
                f"cannot change (got --key {key!r}): create an audience of another name"
            )
        if source != stored.source:
            raise AudienceError(
                f"audience {name!r} goes to source {stored.source!r} since its first sync, "
                f"not {source!r}"
            )
        key = stored.key
    else:
        key = audience_key(name) if key is None else check_key(key)
    changed: list[str] = []
    if values is None:
        current = await store.audience_members(name) if stored is not None else set()
        entered = sorted(u for u in members if u not in current)
        left = sorted(u for u in current if u not in members)
    else:
        had = await store.audience_values(name) if stored is not None else {}
        current = set(had)
        entered = sorted(u for u in values if u not in had)
        changed = sorted(u for u in values if u in had and had[u] != values[u])
        left = sorted(u for u in had if u not in values)
    number = (stored.syncs if stored is not None else 0) + 1
    destinations = tuple(d.id for d in relay_source.destinations if d.enabled)
    result = SyncResult(
        name=name,
        key=key,
        source=source,
        sync=number,
        first=stored is None,
        entered=tuple(entered),
        left=tuple(left),
        unchanged=len(current) - len(left) - len(changed),
        members=len(current) - len(left) + len(entered),
        jobs=0,
        destinations=destinations,
        dry_run=dry_run,
        changed=tuple(changed),
        kind="audience" if values is None else "trait",
    )
    if dry_run:
        return result
    jobs = update_jobs(relay_source, key, number, entered, left, members, now, changed, values)
    sync = AudienceSync(
        name,
        key,
        source,
        number,
        entered,
        left,
        message_prefix(key, number),
        changed=changed,
        values=dict(values or {}),
        kind="audience" if values is None else "trait",
    )
    try:
        await store.commit_audience_sync(sync, jobs, now=now)
    except AudienceConflict as exc:
        raise AudienceError(str(exc)) from None
    return SyncResult(**{**_fields(result), "jobs": len(jobs)})


def _fields(result: SyncResult) -> dict[str, Any]:
    return {f: getattr(result, f) for f in SyncResult.__dataclass_fields__}


def trait_value(value: float) -> int | float:
    """A computed trait's value as sent: a whole number as an integer (a count, as stored
    as a REAL by SQLite), else as it is."""
    return int(value) if float(value).is_integer() else value


def update_messages(
    key: str,
    sync: int,
    entered: list[str],
    left: list[str],
    members: Mapping[str, Mapping[str, Any]],
    changed: list[str] | None = None,
    values: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """The identify messages of one sync (pure): ``true`` with the member's traits for each
    user who entered, ``false`` for each who left; a computed trait's (``values``): the
    value for each user who entered or ``changed``, ``0`` for each who left."""
    if values is not None:
        return [
            {
                "type": "identify",
                "userId": user,
                "messageId": message_id(key, sync, user),
                "traits": {key: trait_value(values[user]) if user in values else 0},
            }
            for user in [*entered, *(changed or ()), *left]
        ]
    messages = [
        {
            "type": "identify",
            "userId": user,
            "messageId": message_id(key, sync, user),
            "traits": {**members.get(user, {}), key: True},
        }
        for user in entered
    ]
    messages += [
        {
            "type": "identify",
            "userId": user,
            "messageId": message_id(key, sync, user),
            "traits": {key: False},
        }
        for user in left
    ]
    return messages


def update_jobs(
    source: Source,
    key: str,
    sync: int,
    entered: list[str],
    left: list[str],
    members: Mapping[str, Mapping[str, Any]],
    now: float,
    changed: list[str] | None = None,
    values: Mapping[str, float] | None = None,
) -> list[NewJob]:
    """The jobs of one sync's updates, checked and enriched as ingest does (``receivedAt``,
    ``timestamp``), one per update and enabled destination of ``source``."""
    messages = update_messages(key, sync, entered, left, members, changed, values)
    if not messages:
        return []
    prepared = prepare(
        {"batch": messages},
        route_type=None,
        received_at=now,
        max_message_bytes=source.limits.max_message_bytes,
        body_bytes=0,
    )
    if isinstance(prepared, Rejection):
        where = f"update {prepared.index}: " if prepared.index is not None else ""
        raise AudienceError(f"the relay refuses an update: {where}{prepared.message}")
    return fan_out(source, prepared, now)
