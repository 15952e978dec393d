-- Audiences synced as Heap user properties (heaprelay.audiences): one row each, and the
-- members of its last snapshot. last_jobs / first_job / last_job / message_prefix find the
-- last sync's jobs (queue/base.py, AudienceRecord).
CREATE TABLE audiences (
    name text PRIMARY KEY,
    key text NOT NULL,
    source text NOT NULL,
    created_at float8 NOT NULL,
    last_sync_at float8 NOT NULL,
    syncs integer NOT NULL,
    members bigint NOT NULL,
    last_entered bigint NOT NULL,
    last_left bigint NOT NULL,
    last_jobs bigint NOT NULL,
    first_job bigint,
    last_job bigint,
    message_prefix text NOT NULL,
    UNIQUE (source, key)
);

CREATE TABLE audience_members (
    audience text NOT NULL,
    user_id text NOT NULL,
    PRIMARY KEY (audience, user_id)
);
