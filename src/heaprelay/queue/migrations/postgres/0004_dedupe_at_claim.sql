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
-- During a rolling upgrade, API processes of the previous version still remember messageIds
-- at append, without seen_at: fill it as above, so that their appends keep working.
CREATE FUNCTION seen_fill_seen_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seen_at IS NULL THEN
        NEW.seen_at := NEW.expires_at - 86400;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER seen_fill_seen_at BEFORE INSERT ON seen
    FOR EACH ROW EXECUTE FUNCTION seen_fill_seen_at();
