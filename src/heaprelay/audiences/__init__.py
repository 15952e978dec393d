"""Audiences synced to Heap as user properties (SPEC §7, reference audiences.md): a complete
member set is diffed against the stored snapshot, and who entered or left gets an identify
with ``key = true | false`` through the normal queue to the source's Heap destinations.

The snapshots live in the queue's own store (:class:`~heaprelay.queue.base.AudienceStore`,
implemented by every queue backend), so a sync's updates and snapshot commit together."""

from heaprelay.audiences._files import MembershipFileError, read_members
from heaprelay.audiences._key import AudienceKeyError, audience_key, check_key
from heaprelay.audiences.sync import (
    AudienceError,
    SyncResult,
    message_id,
    message_prefix,
    sync_members,
)
from heaprelay.queue.base import AudienceRecord, AudienceStore

__all__ = [
    "AudienceError",
    "AudienceKeyError",
    "AudienceRecord",
    "AudienceStore",
    "MembershipFileError",
    "SyncResult",
    "audience_key",
    "check_key",
    "message_id",
    "message_prefix",
    "read_members",
    "sync_members",
]
