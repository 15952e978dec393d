-- Deduplication moves from append to the first claim (queue/base.py). Each job keeps its
-- dedupe window: from the append's now (dedupe_from) until now + window (dedupe_until);
-- dedupe_until NULL: nothing to check (window 0, or already checked by its first claim).
-- Jobs stored before this migration were checked when appended: NULL.
ALTER TABLE jobs ADD COLUMN dedupe_from double precision;
ALTER TABLE jobs ADD COLUMN dedupe_until double precision;
-- Each remembered entry is the window [seen_at, expires_at) of one job. Entries from before
-- get seen_at = expires_at - 24 h (the default window).
ALTER TABLE seen ADD COLUMN seen_at double precision;
UPDATE seen SET seen_at = expires_at - 86400;
ALTER TABLE seen ALTER COLUMN seen_at SET NOT NULL;
