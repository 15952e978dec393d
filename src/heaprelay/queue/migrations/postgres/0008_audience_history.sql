-- The history audiences are evaluated over (queue/base.py, AudienceHistory): the track events
-- of the sources that have audiences, appended in the transaction of their jobs, pruned by
-- retention. Evaluation reads one range of the index (an index-only scan once vacuumed).
CREATE TABLE audience_events (
    source text NOT NULL,
    event text NOT NULL,
    ts double precision NOT NULL,
    user_id text NOT NULL,
    -- an event is counted once per messageId (an SDK's retry is the same event): a 64-bit
    -- hash of it (queue/base.py, message_key)
    message_key bigint NOT NULL
);
CREATE INDEX audience_events_rule ON audience_events (source, event, ts, user_id, message_key);

-- Each user's latest traits (from identify; a flat JSON object of scalar values).
CREATE TABLE audience_traits (
    source text NOT NULL,
    user_id text NOT NULL,
    traits jsonb NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (source, user_id)
);

-- When each audience was last evaluated by the schedule: several relays on one database
-- evaluate an audience once per period (a compare-and-set of ran_at).
CREATE TABLE audience_runs (
    key text PRIMARY KEY,
    ran_at double precision NOT NULL
);
