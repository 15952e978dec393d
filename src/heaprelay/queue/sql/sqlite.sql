-- Named queries of the SQLite queue (heaprelay.queue.sqlite). Each query starts with a
-- "-- name: <name>" line and runs until the next one. Parameters are :named.

-- name: schema
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    message_id TEXT NOT NULL,
    order_key TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    first_attempt_at REAL,
    -- retry: when the job becomes claimable again; leased: when the lease expires.
    due_at REAL,
    worker TEXT,
    -- Claims so far: the current claim's lease token (Job.lease).
    leases INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    detail TEXT NOT NULL DEFAULT '',
    answer TEXT NOT NULL DEFAULT '',
    finished_at REAL,
    -- The job's dedupe window: from the append's now until now + window (queue/base.py).
    -- dedupe_until NULL: nothing to check (window 0, or checked by its first claim).
    dedupe_from REAL,
    dedupe_until REAL
);
-- Unfinished jobs, in append order (claims scan this).
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (id)
    WHERE state IN ('pending', 'leased', 'retry');
-- Jobs that block their key (leased or waiting for a retry).
CREATE INDEX IF NOT EXISTS jobs_blocking ON jobs (destination, order_key, due_at)
    WHERE state IN ('leased', 'retry');
CREATE INDEX IF NOT EXISTS jobs_dead ON jobs (destination, id) WHERE state = 'dead';
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at)
    WHERE state IN ('delivered', 'skipped');
-- Per (source, destination, messageId): the window of the job remembered for deduplication
-- (written by claims, queue/base.py).
CREATE TABLE IF NOT EXISTS seen (
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (source, destination, message_id)
) WITHOUT ROWID;

-- name: add_leases
-- For queue files made before lease tokens (open() runs it when the column is missing).
ALTER TABLE jobs ADD COLUMN leases INTEGER NOT NULL DEFAULT 0;

-- name: add_dedupe_window
-- For queue files made before dedupe moved to claims (open() runs it when the columns are
-- missing). Their jobs were checked when appended: nothing left to check (NULL).
BEGIN IMMEDIATE;
ALTER TABLE jobs ADD COLUMN dedupe_from REAL;
ALTER TABLE jobs ADD COLUMN dedupe_until REAL;
COMMIT;

-- name: add_seen_at
-- Likewise for "seen": entries of old files get seen_at = expires_at - 24 h (the default
-- window; an entry of a shorter window then reaches back further than it did).
BEGIN IMMEDIATE;
ALTER TABLE seen ADD COLUMN seen_at REAL;
UPDATE seen SET seen_at = expires_at - 86400;
COMMIT;

-- name: insert_jobs
-- ":rows" is expanded to one job_row per job (a multi-row insert is much cheaper than
-- executemany). No dedupe work here: claims do it.
INSERT INTO jobs (source, destination, message_id, order_key, payload, received_at, dedupe_from,
                  dedupe_until, state)
VALUES :rows;

-- name: job_row
(?, ?, ?, ?, ?, ?, ?, ?, 'pending')

-- name: claim_candidates
-- Unfinished jobs after :after, oldest first, of keys with no leased (unexpired) or
-- waiting-retry job; for those still to be checked, the remembered entry of their messageId.
SELECT j.id, j.source, j.destination, j.message_id, j.dedupe_from, j.dedupe_until, s.seen_at,
       s.expires_at
FROM jobs AS j
LEFT JOIN seen AS s
  ON j.dedupe_until IS NOT NULL AND s.source = j.source AND s.destination = j.destination
 AND s.message_id = j.message_id
WHERE j.state IN ('pending', 'leased', 'retry')
  AND j.id > :after
  AND NOT EXISTS (
      SELECT 1 FROM jobs AS b
      WHERE b.state IN ('leased', 'retry')
        AND b.destination = j.destination
        AND b.order_key = j.order_key
        AND b.due_at > :now
  )
ORDER BY j.id
LIMIT :limit;

-- name: remember_messages
-- Entries set by a claim. ":rows" is expanded to one "(?, ?, ?, ?, ?)" per entry.
INSERT INTO seen (source, destination, message_id, seen_at, expires_at) VALUES :rows
ON CONFLICT (source, destination, message_id)
DO UPDATE SET seen_at = excluded.seen_at, expires_at = excluded.expires_at;

-- name: skip_duplicates
-- :ids is a JSON array of job ids.
UPDATE jobs SET state = 'skipped', reason = :reason, detail = :detail, finished_at = :now,
       dedupe_until = NULL
WHERE id IN (SELECT value FROM json_each(:ids));

-- name: lease
-- :ids is a JSON array of job ids. Their dedupe check is done (by this claim).
UPDATE jobs SET state = 'leased', worker = :worker, due_at = :due_at, leases = leases + 1,
       dedupe_until = NULL
WHERE id IN (SELECT value FROM json_each(:ids))
RETURNING id, source, destination, message_id, order_key, payload, received_at, attempts,
          first_attempt_at, leases;

-- name: delivered
-- Outcomes (delivered … release) apply only to the current lease: the job is leased, to
-- :worker when given, with lease token :lease when given (queue/base.py, "Lease ownership").
UPDATE jobs SET state = 'delivered', answer = :answer, attempts = attempts + 1,
       first_attempt_at = coalesce(first_attempt_at, :now), finished_at = :now,
       due_at = NULL, worker = NULL
WHERE id = :id AND state = 'leased' AND (:worker IS NULL OR worker = :worker)
  AND (:lease IS NULL OR leases = :lease);

-- name: retry_at
UPDATE jobs SET state = 'retry', due_at = :at, reason = :reason, answer = :answer,
       attempts = attempts + 1, first_attempt_at = coalesce(first_attempt_at, :now),
       worker = NULL
WHERE id = :id AND state = 'leased' AND (:worker IS NULL OR worker = :worker)
  AND (:lease IS NULL OR leases = :lease);

-- name: dead
UPDATE jobs SET state = 'dead', reason = :reason, detail = :detail, answer = :answer,
       attempts = attempts + 1, first_attempt_at = coalesce(first_attempt_at, :now),
       finished_at = :now, due_at = NULL, worker = NULL
WHERE id = :id AND state = 'leased' AND (:worker IS NULL OR worker = :worker)
  AND (:lease IS NULL OR leases = :lease);

-- name: skipped
UPDATE jobs SET state = 'skipped', reason = :reason, detail = :detail, finished_at = :now,
       due_at = NULL, worker = NULL
WHERE id = :id AND state = 'leased' AND (:worker IS NULL OR worker = :worker)
  AND (:lease IS NULL OR leases = :lease);

-- name: release
UPDATE jobs SET state = 'pending', due_at = NULL, worker = NULL
WHERE id = :id AND state = 'leased' AND (:worker IS NULL OR worker = :worker)
  AND (:lease IS NULL OR leases = :lease);

-- name: count_by_destination_state
SELECT destination, state, count(*) FROM jobs GROUP BY destination, state;

-- name: count_by_reason
SELECT reason, count(*) FROM jobs
WHERE state IN ('dead', 'skipped') AND reason IS NOT NULL
GROUP BY reason;

-- name: oldest_unfinished
SELECT min(received_at) FROM jobs WHERE state IN ('pending', 'leased', 'retry');

-- name: dead_letters
SELECT id, source, destination, message_id, payload, reason, detail, answer, attempts,
       received_at, finished_at
FROM jobs
WHERE state = 'dead' AND (:destination IS NULL OR destination = :destination)
ORDER BY id
LIMIT :limit OFFSET :offset;

-- name: dead_letter
SELECT id, source, destination, message_id, payload, reason, detail, answer, attempts,
       received_at, finished_at
FROM jobs WHERE state = 'dead' AND id = :id;

-- name: replay_one
UPDATE jobs SET state = 'pending', attempts = 0, first_attempt_at = NULL, reason = NULL,
       detail = '', answer = '', finished_at = NULL, due_at = NULL
WHERE state = 'dead' AND id = :id;

-- name: replay_all
UPDATE jobs SET state = 'pending', attempts = 0, first_attempt_at = NULL, reason = NULL,
       detail = '', answer = '', finished_at = NULL, due_at = NULL
WHERE state = 'dead';

-- name: purge_one
DELETE FROM jobs WHERE state = 'dead' AND id = :id;

-- name: purge_all
DELETE FROM jobs WHERE state = 'dead';

-- name: prune_finished
DELETE FROM jobs WHERE state IN ('delivered', 'skipped') AND finished_at < :before;

-- name: prune_seen
DELETE FROM seen WHERE expires_at < :before;
