-- The queue's tables. Times are seconds since the epoch, passed in by the relay (never now()).

CREATE TABLE jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source text NOT NULL,
    destination text NOT NULL,
    message_id text NOT NULL,
    order_key text NOT NULL,
    payload bytea NOT NULL,
    received_at double precision NOT NULL,
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'leased', 'retry', 'delivered', 'dead', 'skipped')),
    attempts integer NOT NULL DEFAULT 0,
    first_attempt_at double precision,
    -- leased: when the lease expires; retry: when the job may be claimed again.
    due_at double precision,
    worker text,
    reason text,
    detail text NOT NULL DEFAULT '',
    answer text NOT NULL DEFAULT '',
    finished_at double precision
);

-- Unfinished jobs in append order: what claims scan.
CREATE INDEX jobs_open ON jobs (id) WHERE state IN ('pending', 'leased', 'retry');
-- Jobs that block their key: leased (until due_at) or waiting for a retry (until due_at).
CREATE INDEX jobs_blocking ON jobs (destination, order_key, due_at)
    WHERE state IN ('leased', 'retry');
CREATE INDEX jobs_key_open ON jobs (destination, order_key, id)
    WHERE state IN ('pending', 'leased', 'retry');
CREATE INDEX jobs_dead ON jobs (id) WHERE state = 'dead';
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state IN ('delivered', 'skipped');

-- One row per (destination, order_key) that a claim has looked at. Claimers lock these rows
-- (FOR UPDATE SKIP LOCKED) to own a key while they lease its jobs; see claim in postgres.py.
CREATE TABLE order_keys (
    destination text NOT NULL,
    order_key text NOT NULL,
    PRIMARY KEY (destination, order_key)
);

-- messageIds remembered for deduplication, until expires_at.
CREATE TABLE seen (
    source text NOT NULL,
    destination text NOT NULL,
    message_id text NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (source, destination, message_id)
);
