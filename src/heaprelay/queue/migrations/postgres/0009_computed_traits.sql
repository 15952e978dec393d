-- Computed traits (heaprelay.audiences.rules): a trait's snapshot is its users' last values
-- sent, kept as audience members with a value (NULL for an audience's members).
ALTER TABLE audience_members ADD COLUMN value double precision;
-- 'audience', or 'trait' (a computed trait), fixed at its first sync.
ALTER TABLE audiences ADD COLUMN kind text NOT NULL DEFAULT 'audience';
