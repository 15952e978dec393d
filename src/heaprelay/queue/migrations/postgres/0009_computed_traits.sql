-- Computed traits (heaprelay.audiences.rules): a trait's snapshot is its users' last values
-- sent, kept as audience members with a value (NULL for an audience's members).
ALTER TABLE audience_members ADD COLUMN value double precision;
-- 'audience', or 'trait' (a computed trait), fixed at its first sync.
ALTER TABLE audiences ADD COLUMN kind text NOT NULL DEFAULT 'audience';
-- A property's value, in the history's rows of a computed trait's sum (event: the track's
-- name, U+001F, the property's; queue/base.py, property_values); NULL in the others.
ALTER TABLE audience_events ADD COLUMN value double precision;
