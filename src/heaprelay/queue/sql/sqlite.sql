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

-- Dictionaries payloads are compressed with (queue/_payload.py); never changed or deleted.
CREATE TABLE IF NOT EXISTS payload_dicts (
    id INTEGER PRIMARY KEY,
    dict BLOB NOT NULL,
    created_at REAL NOT NULL
);

-- Audiences synced as Heap user properties (heaprelay.audiences): one row each, and the
-- members of its last snapshot. last_jobs / first_job / last_job / message_prefix find the
-- last sync's jobs (queue/base.py, AudienceRecord).
CREATE TABLE IF NOT EXISTS audiences (
    name TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_sync_at REAL NOT NULL,
    syncs INTEGER NOT NULL,
    members INTEGER NOT NULL,
    last_entered INTEGER NOT NULL,
    last_left INTEGER NOT NULL,
    last_jobs INTEGER NOT NULL,
    first_job INTEGER,
    last_job INTEGER,
    message_prefix TEXT NOT NULL,
    -- 'audience', or 'trait' (a computed trait: its members' values in audience_members)
    kind TEXT NOT NULL DEFAULT 'audience',
    UNIQUE (source, key)
);
-- value: a computed trait's last value sent to the user (NULL for an audience's members).
CREATE TABLE IF NOT EXISTS audience_members (
    audience TEXT NOT NULL,
    user_id TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (audience, user_id)
) WITHOUT ROWID;

-- The history audiences are evaluated over (queue/base.py, AudienceHistory): the track events
-- of the sources that have audiences, appended with their jobs, pruned by retention.
-- Evaluation reads one range of the table, clustered on (source, event, ts) (WITHOUT ROWID:
-- one b-tree to write, no separate index); an event is counted once per messageId (an SDK's
-- retry is the same event), message_key being a 64-bit hash of it (queue/base.py).
CREATE TABLE IF NOT EXISTS audience_events (
    source TEXT NOT NULL,
    event TEXT NOT NULL,
    ts REAL NOT NULL,
    user_id TEXT NOT NULL,
    message_key INTEGER NOT NULL,
    -- a property's value, in the rows of a computed trait's sum (event: the track's name,
    -- U+001F, the property's; queue/base.py, property_values); NULL in the others
    value REAL,
    PRIMARY KEY (source, event, ts, user_id, message_key)
) WITHOUT ROWID;
-- Each user's latest traits (from identify; a flat JSON object of scalar values).
CREATE TABLE IF NOT EXISTS audience_traits (
    source TEXT NOT NULL,
    user_id TEXT NOT NULL,
    traits TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (source, user_id)
) WITHOUT ROWID;
-- When each audience was last evaluated by the schedule (claim_audience_run).
CREATE TABLE IF NOT EXISTS audience_runs (
    key TEXT PRIMARY KEY,
    ran_at REAL NOT NULL
) WITHOUT ROWID;

-- name: counters
-- Maintained counts (queue/base.py, QueueStats): kind 'now' = jobs per (destination, state,
-- reason) now (reason '' but for skipped / dead / retry); kind 'total' = how many jobs were
-- ever received, and how many times one became delivered / skipped / dead / retry. Appends
-- add theirs in the same transaction (add_counts, one row a destination and commit, cheaper
-- than a trigger a row); every other change of a job's state or reason (updates, deletes:
-- claims, outcomes, replay, purge, prune) is counted by the triggers below, in its
-- transaction. open() creates them with the schema, and fills the table from the jobs when
-- it is new (fill_counts).
CREATE TABLE IF NOT EXISTS counts (
    kind TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (kind, destination, state, reason)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS jobs_count_update AFTER UPDATE OF state, reason ON jobs
WHEN old.state IS NOT new.state
  OR (new.state IN ('skipped', 'dead', 'retry') AND old.reason IS NOT new.reason)
BEGIN
    INSERT INTO counts VALUES ('now', old.destination, old.state,
        CASE WHEN old.state IN ('skipped', 'dead', 'retry') THEN coalesce(old.reason, '')
             ELSE '' END, -1)
    ON CONFLICT DO UPDATE SET n = n - 1;
    INSERT INTO counts VALUES ('now', new.destination, new.state,
        CASE WHEN new.state IN ('skipped', 'dead', 'retry') THEN coalesce(new.reason, '')
             ELSE '' END, 1)
    ON CONFLICT DO UPDATE SET n = n + 1;
    INSERT INTO counts SELECT 'total', new.destination, new.state, '', 1
    WHERE new.state IN ('delivered', 'skipped', 'dead', 'retry') AND old.state IS NOT new.state
    ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS jobs_count_delete AFTER DELETE ON jobs
BEGIN
    INSERT INTO counts VALUES ('now', old.destination, old.state,
        CASE WHEN old.state IN ('skipped', 'dead', 'retry') THEN coalesce(old.reason, '')
             ELSE '' END, -1)
    ON CONFLICT DO UPDATE SET n = n - 1;
END;
-- Failed attempts (retries and dead letters) as complete() recorded them, the latest kept.
CREATE TABLE IF NOT EXISTS errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    answer TEXT NOT NULL,
    jobs INTEGER NOT NULL,
    job_id INTEGER NOT NULL
);
-- The debugger's search (Queue.search): keys of each job (queue/base.py, search_keys),
-- written by Queue.index in the background, never by appends; next_id: the first job not
-- indexed yet.
CREATE TABLE IF NOT EXISTS search (
    key TEXT NOT NULL,
    job_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS search_key ON search (key, job_id);
CREATE INDEX IF NOT EXISTS search_job ON search (job_id);
CREATE TABLE IF NOT EXISTS search_cursor (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    next_id INTEGER NOT NULL
);

-- name: fill_counts
-- A counts table new in an existing file: count what is there (once, O(jobs)). Totals start
-- from the jobs still kept.
INSERT INTO counts (kind, destination, state, reason, n)
SELECT 'now', destination, state,
       CASE WHEN state IN ('skipped', 'dead', 'retry') THEN coalesce(reason, '') ELSE '' END,
       count(*)
FROM jobs GROUP BY 1, 2, 3, 4
ON CONFLICT DO UPDATE SET n = excluded.n;
INSERT INTO counts (kind, destination, state, reason, n)
SELECT 'total', destination, 'received', '', count(*) FROM jobs GROUP BY 1, 2, 3, 4
ON CONFLICT DO UPDATE SET n = excluded.n;
INSERT INTO counts (kind, destination, state, reason, n)
SELECT 'total', destination, state, '', count(*) FROM jobs
WHERE state IN ('delivered', 'skipped', 'dead', 'retry') GROUP BY 1, 2, 3, 4
ON CONFLICT DO UPDATE SET n = excluded.n;

-- name: add_counts
-- The counts of an append (one row per destination: pending now, and received in total).
-- ":rows" is expanded to one "(?, ?, ?, ?, ?)" per row.
INSERT INTO counts (kind, destination, state, reason, n) VALUES :rows
ON CONFLICT DO UPDATE SET n = n + excluded.n;

-- name: dictionaries
SELECT id, dict FROM payload_dicts;

-- name: dictionary
SELECT dict FROM payload_dicts WHERE id = :id;

-- name: add_dictionary
INSERT INTO payload_dicts (dict, created_at) VALUES (:dict, :now) RETURNING id;

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
  AND (:end IS NULL OR j.id < :end)
  AND NOT EXISTS (
      SELECT 1 FROM jobs AS b
      WHERE b.state IN ('leased', 'retry')
        AND b.destination = j.destination
        AND b.order_key = j.order_key
        AND b.due_at > :now
  )
ORDER BY j.id
LIMIT :limit;

-- name: oldest_open
-- Where the claim window starts (queue/base.py).
SELECT min(id) FROM jobs WHERE state IN ('pending', 'leased', 'retry');

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

-- name: renew
-- :leases is a JSON array of [id, lease token]: jobs still leased by that claim get a new
-- lease end (queue/base.py, "Renewing").
UPDATE jobs SET due_at = :due_at
FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS lease
      FROM json_each(:leases)) AS r
WHERE jobs.id = r.id AND jobs.state = 'leased' AND jobs.worker = :worker
  AND jobs.leases = r.lease
RETURNING jobs.id;

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
  AND (:lease IS NULL OR leases = :lease)
RETURNING destination;

-- name: dead
UPDATE jobs SET state = 'dead', reason = :reason, detail = :detail, answer = :answer,
       attempts = attempts + 1, first_attempt_at = coalesce(first_attempt_at, :now),
       finished_at = :now, due_at = NULL, worker = NULL
WHERE id = :id AND state = 'leased' AND (:worker IS NULL OR worker = :worker)
  AND (:lease IS NULL OR leases = :lease)
RETURNING destination;

-- name: skipped
UPDATE jobs SET state = 'skipped', reason = :reason, detail = :detail, finished_at = :now,
       due_at = NULL, worker = NULL
WHERE id = :id AND state = 'leased' AND (:worker IS NULL OR worker = :worker)
  AND (:lease IS NULL OR leases = :lease);

-- name: release
UPDATE jobs SET state = 'pending', due_at = NULL, worker = NULL
WHERE id = :id AND state = 'leased' AND (:worker IS NULL OR worker = :worker)
  AND (:lease IS NULL OR leases = :lease);

-- name: counts
SELECT kind, destination, state, reason, n FROM counts WHERE n <> 0;

-- name: oldest_unfinished
-- The unfinished job appended first (jobs_open: one index step, whatever the backlog).
SELECT received_at FROM jobs WHERE state IN ('pending', 'leased', 'retry') ORDER BY id LIMIT 1;

-- name: add_error
INSERT INTO errors (at, destination, state, reason, answer, jobs, job_id)
VALUES (:at, :destination, :state, :reason, :answer, :jobs, :job_id);

-- name: trim_errors
DELETE FROM errors WHERE id <= (SELECT max(id) FROM errors) - :keep;

-- name: recent_errors
SELECT id, at, destination, state, reason, answer, jobs, job_id FROM errors
ORDER BY id DESC LIMIT :limit;

-- name: job
SELECT id, source, destination, message_id, order_key, payload, received_at, state, attempts,
       CASE WHEN state IN ('skipped', 'dead', 'retry') THEN coalesce(reason, '') ELSE '' END,
       CASE WHEN state IN ('skipped', 'dead', 'retry') THEN detail ELSE '' END,
       answer, finished_at, CASE WHEN state IN ('leased', 'retry') THEN due_at END
FROM jobs WHERE id = :id;

-- name: jobs
SELECT id, source, destination, message_id, order_key, payload, received_at, state, attempts,
       CASE WHEN state IN ('skipped', 'dead', 'retry') THEN coalesce(reason, '') ELSE '' END,
       CASE WHEN state IN ('skipped', 'dead', 'retry') THEN detail ELSE '' END,
       answer, finished_at, CASE WHEN state IN ('leased', 'retry') THEN due_at END
FROM jobs WHERE id < :before ORDER BY id DESC LIMIT :limit;

-- name: search
SELECT j.id, j.source, j.destination, j.message_id, j.order_key, j.payload, j.received_at,
       j.state, j.attempts,
       CASE WHEN j.state IN ('skipped', 'dead', 'retry') THEN coalesce(j.reason, '') ELSE '' END,
       CASE WHEN j.state IN ('skipped', 'dead', 'retry') THEN j.detail ELSE '' END,
       j.answer, j.finished_at, CASE WHEN j.state IN ('leased', 'retry') THEN j.due_at END
FROM search AS s JOIN jobs AS j ON j.id = s.job_id
WHERE s.key = :key ORDER BY s.job_id DESC LIMIT :limit;

-- name: search_next
SELECT next_id FROM search_cursor WHERE one = 1;

-- name: to_index
SELECT id, payload FROM jobs WHERE id >= :next ORDER BY id LIMIT :limit;

-- name: add_search
-- ":rows" is expanded to one "(?, ?)" per key.
INSERT INTO search (key, job_id) VALUES :rows;

-- name: set_search_next
INSERT INTO search_cursor (one, next_id) VALUES (1, :next)
ON CONFLICT (one) DO UPDATE SET next_id = excluded.next_id;

-- name: unsearch_finished
-- Search keys of the jobs prune_finished is about to delete.
DELETE FROM search WHERE job_id IN (
    SELECT id FROM jobs WHERE state IN ('delivered', 'skipped') AND finished_at < :before
);

-- name: unsearch_dead
-- Search keys of the dead jobs purge is about to delete.
DELETE FROM search WHERE job_id IN (
    SELECT id FROM jobs
    WHERE state = 'dead' AND (:all OR id IN (SELECT value FROM json_each(:ids)))
      AND (:destination IS NULL OR destination = :destination)
);

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

-- name: replay
-- :ids is a JSON array of job ids (ignored when :all).
UPDATE jobs SET state = 'pending', attempts = 0, first_attempt_at = NULL, reason = NULL,
       detail = '', answer = '', finished_at = NULL, due_at = NULL
WHERE state = 'dead' AND (:all OR id IN (SELECT value FROM json_each(:ids)))
  AND (:destination IS NULL OR destination = :destination);

-- name: purge
DELETE FROM jobs
WHERE state = 'dead' AND (:all OR id IN (SELECT value FROM json_each(:ids)))
  AND (:destination IS NULL OR destination = :destination);

-- name: prune_finished
DELETE FROM jobs WHERE state IN ('delivered', 'skipped') AND finished_at < :before;

-- name: prune_seen
DELETE FROM seen WHERE expires_at < :before;

-- name: audience
SELECT name, key, source, created_at, last_sync_at, syncs, members, last_entered, last_left,
       last_jobs, first_job, last_job, message_prefix, kind
FROM audiences WHERE name = :name;

-- name: audiences
SELECT name, key, source, created_at, last_sync_at, syncs, members, last_entered, last_left,
       last_jobs, first_job, last_job, message_prefix, kind
FROM audiences ORDER BY name;

-- name: audience_with_key
SELECT name FROM audiences WHERE source = :source AND key = :key AND name <> :name;

-- name: audience_members
SELECT user_id FROM audience_members WHERE audience = :name;

-- name: add_audience_members
INSERT INTO audience_members (audience, user_id, value) VALUES (:name, :user_id, :value);

-- name: set_audience_values
UPDATE audience_members SET value = :value WHERE audience = :name AND user_id = :user_id;

-- name: audience_values
SELECT user_id, value FROM audience_members WHERE audience = :name AND value IS NOT NULL;

-- name: add_member_values
-- A file from before computed traits (audience_members had no value column).
BEGIN IMMEDIATE;
ALTER TABLE audience_members ADD COLUMN value REAL;
ALTER TABLE audiences ADD COLUMN kind TEXT NOT NULL DEFAULT 'audience';
COMMIT;

-- name: add_event_values
-- Likewise: the history's property values of computed traits' sums.
ALTER TABLE audience_events ADD COLUMN value REAL;

-- name: remove_audience_members
DELETE FROM audience_members WHERE audience = :name AND user_id = :user_id;

-- name: save_audience
INSERT INTO audiences (name, key, source, created_at, last_sync_at, syncs, members,
                       last_entered, last_left, last_jobs, first_job, last_job, message_prefix,
                       kind)
VALUES (:name, :key, :source, :created_at, :last_sync_at, :syncs, :members, :last_entered,
        :last_left, :last_jobs, :first_job, :last_job, :message_prefix, :kind)
ON CONFLICT (name) DO UPDATE SET
    last_sync_at = excluded.last_sync_at, syncs = excluded.syncs, members = excluded.members,
    last_entered = excluded.last_entered, last_left = excluded.last_left,
    last_jobs = excluded.last_jobs, first_job = excluded.first_job,
    last_job = excluded.last_job, message_prefix = excluded.message_prefix;

-- name: audience_job_states
-- The last sync's jobs: in its id range, of its source, with its messageId prefix.
SELECT destination, state, count(*) FROM jobs
WHERE id BETWEEN :first AND :last AND source = :source
  AND substr(message_id, 1, length(:prefix)) = :prefix
GROUP BY destination, state;
-- name: insert_history
-- The same event at the same time twice (a retry the relay timed alike) is one row.
INSERT OR IGNORE INTO audience_events (source, event, ts, user_id, message_key, value)
VALUES :rows;

-- name: ensure_traits
INSERT OR IGNORE INTO audience_traits (source, user_id, traits, updated_at) VALUES :rows;

-- name: merge_traits
-- json_patch: a later value of a key replaces the earlier one, null removes the key.
UPDATE audience_traits
SET traits = json_patch(audience_traits.traits, v.column3), updated_at = v.column4
FROM (VALUES :rows) AS v
WHERE audience_traits.source = v.column1 AND audience_traits.user_id = v.column2;

-- name: history_members
SELECT user_id FROM audience_events
WHERE source = :source AND event = :event AND ts >= :start AND ts <= :end
GROUP BY user_id HAVING count(DISTINCT message_key) >= :at_least;

-- name: audience_members_with_traits
-- :want is a JSON object of the wanted traits, :wanted how many keys it has; numbers are
-- equal whether integer or real, other values only of the same JSON type.
SELECT m.user_id
FROM (SELECT user_id FROM audience_events
      WHERE source = :source AND event = :event AND ts >= :start AND ts <= :end
      GROUP BY user_id HAVING count(DISTINCT message_key) >= :at_least) AS m
JOIN audience_traits AS t ON t.source = :source AND t.user_id = m.user_id
WHERE (SELECT count(*) FROM json_each(:want) AS w JOIN json_each(t.traits) AS h
       ON h.key = w.key AND h.atom = w.atom
      AND (h.type = w.type OR (h.type IN ('integer', 'real') AND w.type IN ('integer', 'real'))))
      = :wanted;

-- name: history_counts
SELECT user_id, count(DISTINCT message_key) FROM audience_events
WHERE source = :source AND event = :event AND ts >= :start AND ts <= :end
GROUP BY user_id;

-- name: history_sums
-- One value per messageId (a retry timed alike is one row already; timed otherwise, two).
SELECT user_id, sum(v) FROM (
    SELECT user_id, max(value) AS v FROM audience_events
    WHERE source = :source AND event = :event AND ts >= :start AND ts <= :end
      AND value IS NOT NULL
    GROUP BY user_id, message_key
) GROUP BY user_id;

-- name: history_sources
-- The distinct sources of the history, one index seek each.
WITH RECURSIVE names(source) AS (
    SELECT min(source) FROM audience_events
    UNION ALL
    SELECT (SELECT min(source) FROM audience_events WHERE source > names.source)
    FROM names WHERE names.source IS NOT NULL
)
SELECT source FROM names WHERE source IS NOT NULL;

-- name: history_events
-- The distinct event names of a source, one index seek each.
WITH RECURSIVE names(event) AS (
    SELECT min(event) FROM audience_events WHERE source = :source
    UNION ALL
    SELECT (SELECT min(event) FROM audience_events WHERE source = :source AND event > names.event)
    FROM names WHERE names.event IS NOT NULL
)
SELECT event FROM names WHERE event IS NOT NULL;

-- name: prune_history
DELETE FROM audience_events WHERE source = :source AND event = :event AND ts < :before;

-- name: claim_audience_run
INSERT INTO audience_runs (key, ran_at) VALUES (:key, :now)
ON CONFLICT (key) DO UPDATE SET ran_at = excluded.ran_at
WHERE audience_runs.ran_at <= :now - :every
RETURNING key;
