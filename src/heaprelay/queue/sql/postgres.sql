-- Named queries of the PostgreSQL queue (heaprelay.queue.postgres). Each query starts with a
-- "-- name: <name>" line and runs until the next one. Parameters are %(named)s (psycopg).
-- The schema itself lives in migrations/postgres/*.sql.

-- name: insert_jobs
-- No dedupe work here: claims do it (queue/base.py). state defaults to 'pending'.
INSERT INTO jobs (source, destination, message_id, order_key, payload, received_at,
                  dedupe_from, dedupe_until)
SELECT s, d, m, k, p, r, f, u
FROM unnest(%(sources)s::text[], %(destinations)s::text[], %(message_ids)s::text[],
            %(keys)s::text[], %(payloads)s::bytea[], %(received)s::float8[],
            %(froms)s::float8[], %(untils)s::float8[])
     WITH ORDINALITY AS t(s, d, m, k, p, r, f, u, n)
ORDER BY n;

-- name: dictionaries
SELECT id, dict FROM payload_dicts;

-- name: dictionaries_by_id
SELECT id, dict FROM payload_dicts WHERE id = ANY(%(ids)s::int[]);

-- name: add_dictionary
INSERT INTO payload_dicts (dict, created_at) VALUES (%(dict)s, %(now)s) RETURNING id;

-- name: claim_candidates
-- The oldest claimable jobs after %(after)s: unfinished, of keys with no leased (unexpired)
-- or waiting-retry job. Takes no locks; their keys are then locked and looked at again.
SELECT j.id, j.destination, j.order_key FROM jobs AS j
WHERE j.state IN ('pending', 'leased', 'retry')
  AND j.id > %(after)s
  AND (%(end)s::bigint IS NULL OR j.id < %(end)s::bigint)
  AND NOT EXISTS (
      SELECT 1 FROM jobs AS b
      WHERE b.state IN ('leased', 'retry')
        AND b.destination = j.destination
        AND b.order_key = j.order_key
        AND b.due_at > %(now)s
      -- A fence: probe jobs_blocking once per candidate. As an anti-join, planned while few
      -- jobs are leased, PostgreSQL compares each candidate with every blocking job.
      OFFSET 0
  )
ORDER BY j.id
LIMIT %(limit)s;

-- name: oldest_open
-- Where the claim window starts (queue/base.py).
SELECT min(id) FROM jobs WHERE state IN ('pending', 'leased', 'retry');

-- name: ensure_keys
INSERT INTO order_keys (destination, order_key)
SELECT * FROM unnest(%(destinations)s::text[], %(keys)s::text[])
ON CONFLICT DO NOTHING;

-- name: lock_keys
-- Own the keys no other claimer owns right now; the others are skipped, not waited for.
SELECT o.destination, o.order_key FROM order_keys AS o
JOIN unnest(%(destinations)s::text[], %(keys)s::text[]) AS k(destination, order_key)
  USING (destination, order_key)
FOR UPDATE OF o SKIP LOCKED;

-- name: lock_expired_leases
-- Rows of our keys whose lease expired may be being completed right now by the worker that
-- held them: wait for that (row lock), so that the next statement sees its outcome.
SELECT j.id FROM jobs AS j
JOIN unnest(%(destinations)s::text[], %(keys)s::text[]) AS k(destination, order_key)
  USING (destination, order_key)
WHERE j.state = 'leased'
ORDER BY j.id
FOR UPDATE OF j;

-- name: claimable_of_keys
-- The oldest claimable jobs of keys this claim owns (a fresh snapshot, taken after their
-- locks) that it has not looked at yet (%(done)s), with their dedupe window. Each key from
-- its head: a key owned in a later round may have been blocked when the first round looked.
SELECT j.id, j.source, j.destination, j.message_id, j.dedupe_from, j.dedupe_until
FROM jobs AS j
JOIN unnest(%(destinations)s::text[], %(keys)s::text[]) AS k(destination, order_key)
  USING (destination, order_key)
WHERE j.state IN ('pending', 'leased', 'retry')
  AND j.id <> ALL(%(done)s::bigint[])
  AND (%(end)s::bigint IS NULL OR j.id < %(end)s::bigint)
  AND NOT EXISTS (
      SELECT 1 FROM jobs AS b
      WHERE b.state IN ('leased', 'retry')
        AND b.destination = j.destination
        AND b.order_key = j.order_key
        AND b.due_at > %(now)s
      -- A fence: probe jobs_blocking once per candidate. As an anti-join, planned while few
      -- jobs are leased, PostgreSQL compares each candidate with every blocking job.
      OFFSET 0
  )
ORDER BY j.id
LIMIT %(limit)s;

-- name: remember_messages
-- The dedupe check of a claim (queue/base.py): remember each job's window unless it overlaps
-- the entry already there (then the job is a duplicate and its row is not returned); an
-- entry that ends later is kept. Rows come in key order, so that two claimers never
-- deadlock within it. A concurrent claim of the same messageId waits for ours (the conflict),
-- then re-evaluates the condition against our committed entry: exactly one is delivered.
-- Rows not updated because of the condition are locked all the same.
INSERT INTO seen AS s (source, destination, message_id, seen_at, expires_at)
SELECT * FROM unnest(%(sources)s::text[], %(destinations)s::text[], %(message_ids)s::text[],
                     %(froms)s::float8[], %(untils)s::float8[]) AS t(src, dst, mid, f, u)
ORDER BY src, dst, mid
ON CONFLICT (source, destination, message_id) DO UPDATE
SET seen_at = CASE WHEN excluded.expires_at > s.expires_at THEN excluded.seen_at
                   ELSE s.seen_at END,
    expires_at = greatest(s.expires_at, excluded.expires_at)
WHERE NOT (s.expires_at > excluded.seen_at AND s.seen_at < excluded.expires_at)
RETURNING source, destination, message_id, seen_at, expires_at;

-- name: seen_entries
-- Entries of these messageIds (locked by remember_messages above, so they hold still).
SELECT s.source, s.destination, s.message_id, s.seen_at, s.expires_at FROM seen AS s
JOIN unnest(%(sources)s::text[], %(destinations)s::text[], %(message_ids)s::text[])
  AS t(source, destination, message_id) USING (source, destination, message_id);

-- name: set_entries
-- Entries changed later in the same claim (their rows are ours already).
INSERT INTO seen (source, destination, message_id, seen_at, expires_at)
SELECT * FROM unnest(%(sources)s::text[], %(destinations)s::text[], %(message_ids)s::text[],
                     %(froms)s::float8[], %(untils)s::float8[])
ON CONFLICT (source, destination, message_id) DO UPDATE
SET seen_at = excluded.seen_at, expires_at = excluded.expires_at;

-- name: skip_duplicates
UPDATE jobs SET state = 'skipped', reason = %(reason)s, detail = %(detail)s,
       finished_at = %(now)s, dedupe_until = NULL
WHERE id = ANY(%(ids)s::bigint[]);

-- name: lease
-- Their dedupe check is done (by this claim).
UPDATE jobs SET state = 'leased', worker = %(worker)s, due_at = %(due_at)s,
       leases = jobs.leases + 1, dedupe_until = NULL
WHERE id = ANY(%(ids)s::bigint[])
RETURNING id, source, destination, message_id, order_key, payload, received_at, attempts,
          first_attempt_at, leases;

-- name: renew
-- Jobs still leased by that claim get a new lease end (queue/base.py, "Renewing"); their rows
-- were locked in id order first (lock_outcome_rows).
UPDATE jobs SET due_at = %(due_at)s
FROM unnest(%(ids)s::bigint[], %(leases)s::int[]) AS r(id, lease)
WHERE jobs.id = r.id AND jobs.state = 'leased' AND jobs.worker = %(worker)s::text
  AND jobs.leases = r.lease
RETURNING jobs.id;

-- name: delivered
-- Outcomes (delivered … release) apply only to the current lease: the job is leased, to
-- %(worker)s when given, with the outcome's lease token when given (queue/base.py, "Lease
-- ownership"). Under READ COMMITTED a row re-leased meanwhile is re-checked after its lock.
UPDATE jobs SET state = 'delivered', answer = o.answer, attempts = attempts + 1,
       first_attempt_at = coalesce(first_attempt_at, %(now)s), finished_at = %(now)s,
       due_at = NULL, worker = NULL
FROM unnest(%(ids)s::bigint[], %(leases)s::int[], %(answers)s::text[]) AS o(id, lease, answer)
WHERE jobs.id = o.id AND jobs.state = 'leased'
  AND (%(worker)s::text IS NULL OR jobs.worker = %(worker)s::text)
  AND (o.lease IS NULL OR jobs.leases = o.lease);

-- name: retry_at
UPDATE jobs SET state = 'retry', due_at = o.at, reason = o.reason, answer = o.answer,
       attempts = attempts + 1, first_attempt_at = coalesce(first_attempt_at, %(now)s),
       worker = NULL
FROM unnest(%(ids)s::bigint[], %(leases)s::int[], %(ats)s::float8[], %(reasons)s::text[],
            %(answers)s::text[]) AS o(id, lease, at, reason, answer)
WHERE jobs.id = o.id AND jobs.state = 'leased'
  AND (%(worker)s::text IS NULL OR jobs.worker = %(worker)s::text)
  AND (o.lease IS NULL OR jobs.leases = o.lease)
RETURNING jobs.id, jobs.destination;

-- name: dead
UPDATE jobs SET state = 'dead', reason = o.reason, detail = o.detail, answer = o.answer,
       attempts = attempts + 1, first_attempt_at = coalesce(first_attempt_at, %(now)s),
       finished_at = %(now)s, due_at = NULL, worker = NULL
FROM unnest(%(ids)s::bigint[], %(leases)s::int[], %(reasons)s::text[], %(details)s::text[],
            %(answers)s::text[]) AS o(id, lease, reason, detail, answer)
WHERE jobs.id = o.id AND jobs.state = 'leased'
  AND (%(worker)s::text IS NULL OR jobs.worker = %(worker)s::text)
  AND (o.lease IS NULL OR jobs.leases = o.lease)
RETURNING jobs.id, jobs.destination;

-- name: skipped
UPDATE jobs SET state = 'skipped', reason = o.reason, detail = o.detail,
       finished_at = %(now)s, due_at = NULL, worker = NULL
FROM unnest(%(ids)s::bigint[], %(leases)s::int[], %(reasons)s::text[], %(details)s::text[])
     AS o(id, lease, reason, detail)
WHERE jobs.id = o.id AND jobs.state = 'leased'
  AND (%(worker)s::text IS NULL OR jobs.worker = %(worker)s::text)
  AND (o.lease IS NULL OR jobs.leases = o.lease);

-- name: release
UPDATE jobs SET state = 'pending', due_at = NULL, worker = NULL
FROM unnest(%(ids)s::bigint[], %(leases)s::int[]) AS o(id, lease)
WHERE jobs.id = o.id AND jobs.state = 'leased'
  AND (%(worker)s::text IS NULL OR jobs.worker = %(worker)s::text)
  AND (o.lease IS NULL OR jobs.leases = o.lease);

-- name: lock_outcome_rows
-- Completing locks rows in id order, as claims do, so the two never deadlock.
SELECT id FROM jobs WHERE id = ANY(%(ids)s::bigint[]) AND state = 'leased' ORDER BY id
FOR UPDATE;

-- name: counts
-- The maintained counts (migration 0006): the sum of their delta rows.
SELECT kind, destination, state, reason, sum(n)::bigint FROM job_counts
GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0;

-- name: compact_counts
-- One row per count instead of one per statement since the last compaction. Rows added by
-- transactions not committed yet are not seen, so not deleted: they stay and still count.
WITH gone AS (DELETE FROM job_counts RETURNING kind, destination, state, reason, n)
INSERT INTO job_counts (kind, destination, state, reason, n)
SELECT kind, destination, state, reason, sum(n) FROM gone
GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0;

-- name: try_compact_lock
SELECT pg_try_advisory_xact_lock(hashtextextended(%(name)s, 0));

-- name: oldest_unfinished
-- The unfinished job appended first (jobs_open: one index step, whatever the backlog).
SELECT received_at FROM jobs WHERE state IN ('pending', 'leased', 'retry') ORDER BY id LIMIT 1;

-- name: add_errors
INSERT INTO errors (at, destination, state, reason, answer, jobs, job_id)
SELECT %(at)s, * FROM unnest(%(destinations)s::text[], %(states)s::text[],
                             %(reasons)s::text[], %(answers)s::text[], %(counts)s::int[],
                             %(job_ids)s::bigint[]);

-- name: trim_errors
DELETE FROM errors WHERE id <= (SELECT max(id) FROM errors) - %(keep)s;

-- name: recent_errors
SELECT id, at, destination, state, reason, answer, jobs, job_id FROM errors
ORDER BY id DESC LIMIT %(limit)s;

-- name: job
SELECT id, source, destination, message_id, order_key, payload, received_at, state, attempts,
       job_counts_reason(state, reason),
       CASE WHEN state IN ('skipped', 'dead', 'retry') THEN detail ELSE '' END,
       answer, finished_at, CASE WHEN state IN ('leased', 'retry') THEN due_at END
FROM jobs WHERE id = %(id)s;

-- name: jobs
SELECT id, source, destination, message_id, order_key, payload, received_at, state, attempts,
       job_counts_reason(state, reason),
       CASE WHEN state IN ('skipped', 'dead', 'retry') THEN detail ELSE '' END,
       answer, finished_at, CASE WHEN state IN ('leased', 'retry') THEN due_at END
FROM jobs WHERE id < %(before)s ORDER BY id DESC LIMIT %(limit)s;

-- name: search
SELECT j.id, j.source, j.destination, j.message_id, j.order_key, j.payload, j.received_at,
       j.state, j.attempts, job_counts_reason(j.state, j.reason),
       CASE WHEN j.state IN ('skipped', 'dead', 'retry') THEN j.detail ELSE '' END,
       j.answer, j.finished_at, CASE WHEN j.state IN ('leased', 'retry') THEN j.due_at END
FROM search AS s JOIN jobs AS j ON j.id = s.job_id
WHERE s.key = %(key)s ORDER BY s.job_id DESC LIMIT %(limit)s;

-- name: lock_search_cursor
-- One indexer at a time; the others find nothing to do (SKIP LOCKED).
SELECT next_id FROM search_cursor WHERE one = 1 FOR UPDATE SKIP LOCKED;

-- name: to_index
SELECT id, payload FROM jobs WHERE id >= %(next)s ORDER BY id LIMIT %(limit)s;

-- name: gaps_to_index
SELECT id, payload FROM jobs WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id;

-- name: add_search
INSERT INTO search (key, job_id)
SELECT * FROM unnest(%(keys)s::text[], %(ids)s::bigint[]);

-- name: set_search_next
UPDATE search_cursor SET next_id = %(next)s WHERE one = 1;

-- name: unsearch_finished
DELETE FROM search WHERE job_id IN (
    SELECT id FROM jobs WHERE state IN ('delivered', 'skipped') AND finished_at < %(before)s
);

-- name: unsearch_dead
DELETE FROM search WHERE job_id IN (
    SELECT id FROM jobs
    WHERE state = 'dead' AND (%(all)s OR id = ANY(%(ids)s::bigint[]))
      AND (%(destination)s::text IS NULL OR destination = %(destination)s::text)
);

-- name: dead_letters
SELECT id, source, destination, message_id, payload, reason, detail, answer, attempts,
       received_at, finished_at
FROM jobs
WHERE state = 'dead' AND (%(destination)s::text IS NULL OR destination = %(destination)s::text)
ORDER BY id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: dead_letter
SELECT id, source, destination, message_id, payload, reason, detail, answer, attempts,
       received_at, finished_at
FROM jobs WHERE state = 'dead' AND id = %(id)s;

-- name: replay
UPDATE jobs SET state = 'pending', attempts = 0, first_attempt_at = NULL, reason = NULL,
       detail = '', answer = '', finished_at = NULL, due_at = NULL
WHERE state = 'dead' AND (%(all)s OR id = ANY(%(ids)s::bigint[]))
  AND (%(destination)s::text IS NULL OR destination = %(destination)s::text);

-- name: purge
DELETE FROM jobs WHERE state = 'dead' AND (%(all)s OR id = ANY(%(ids)s::bigint[]))
  AND (%(destination)s::text IS NULL OR destination = %(destination)s::text);

-- name: prune_finished
DELETE FROM jobs WHERE state IN ('delivered', 'skipped') AND finished_at < %(before)s;

-- name: prune_seen
DELETE FROM seen WHERE expires_at < %(before)s;

-- name: prune_keys
-- Forget keys with no unfinished job, unless a claimer owns one right now (it would re-create
-- it anyway: claims insert the keys they look at).
DELETE FROM order_keys AS o
USING (
    SELECT destination, order_key FROM order_keys AS x
    WHERE NOT EXISTS (
        SELECT 1 FROM jobs AS j
        WHERE j.state IN ('pending', 'leased', 'retry')
          AND j.destination = x.destination AND j.order_key = x.order_key
    )
    FOR UPDATE SKIP LOCKED
) AS gone
WHERE o.destination = gone.destination AND o.order_key = gone.order_key;

-- name: notify
SELECT pg_notify(%(channel)s, '');

-- name: heartbeat
INSERT INTO workers (name, seen_at) VALUES (%(name)s, %(now)s)
ON CONFLICT (name) DO UPDATE SET seen_at = greatest(workers.seen_at, excluded.seen_at);

-- name: forget_workers
DELETE FROM workers WHERE seen_at < %(before)s;

-- name: count_workers
SELECT count(*) FROM workers WHERE seen_at >= %(since)s;

-- name: leave
DELETE FROM workers WHERE name = %(name)s;

-- name: insert_jobs_range
-- insert_jobs, answering the smallest and largest id it gave (AudienceRecord).
WITH added AS (
    INSERT INTO jobs (source, destination, message_id, order_key, payload, received_at,
                      dedupe_from, dedupe_until)
    SELECT s, d, m, k, p, r, f, u
    FROM unnest(%(sources)s::text[], %(destinations)s::text[], %(message_ids)s::text[],
                %(keys)s::text[], %(payloads)s::bytea[], %(received)s::float8[],
                %(froms)s::float8[], %(untils)s::float8[])
         WITH ORDINALITY AS t(s, d, m, k, p, r, f, u, n)
    ORDER BY n
    RETURNING id
)
SELECT min(id), max(id) FROM added;

-- name: audience
SELECT name, key, source, created_at, last_sync_at, syncs, members, last_entered, last_left,
       last_jobs, first_job, last_job, message_prefix, kind
FROM audiences WHERE name = %(name)s;

-- name: lock_audience
SELECT name, key, source, created_at, last_sync_at, syncs, members, last_entered, last_left,
       last_jobs, first_job, last_job, message_prefix, kind
FROM audiences WHERE name = %(name)s FOR UPDATE;

-- name: audiences
SELECT name, key, source, created_at, last_sync_at, syncs, members, last_entered, last_left,
       last_jobs, first_job, last_job, message_prefix, kind
FROM audiences ORDER BY name;

-- name: audience_with_key
SELECT name FROM audiences WHERE source = %(source)s AND key = %(key)s AND name <> %(name)s;

-- name: audience_members
SELECT user_id FROM audience_members WHERE audience = %(name)s;

-- name: add_audience_members
INSERT INTO audience_members (audience, user_id, value)
SELECT %(name)s, u, v FROM unnest(%(users)s::text[], %(values)s::float8[]) AS t(u, v);

-- name: set_audience_values
UPDATE audience_members AS m SET value = t.v
FROM unnest(%(users)s::text[], %(values)s::float8[]) AS t(u, v)
WHERE m.audience = %(name)s AND m.user_id = t.u;

-- name: audience_values
SELECT user_id, value FROM audience_members WHERE audience = %(name)s AND value IS NOT NULL;

-- name: remove_audience_members
DELETE FROM audience_members
WHERE audience = %(name)s AND user_id = ANY(%(users)s::text[]);

-- name: save_audience
INSERT INTO audiences (name, key, source, created_at, last_sync_at, syncs, members,
                       last_entered, last_left, last_jobs, first_job, last_job, message_prefix,
                       kind)
VALUES (%(name)s, %(key)s, %(source)s, %(created_at)s, %(last_sync_at)s, %(syncs)s,
        %(members)s, %(last_entered)s, %(last_left)s, %(last_jobs)s, %(first_job)s,
        %(last_job)s, %(message_prefix)s, %(kind)s)
ON CONFLICT (name) DO UPDATE SET
    last_sync_at = excluded.last_sync_at, syncs = excluded.syncs, members = excluded.members,
    last_entered = excluded.last_entered, last_left = excluded.last_left,
    last_jobs = excluded.last_jobs, first_job = excluded.first_job,
    last_job = excluded.last_job, message_prefix = excluded.message_prefix;

-- name: audience_job_states
-- The last sync's jobs: in its id range, of its source, with its messageId prefix.
SELECT destination, state, count(*) FROM jobs
WHERE id BETWEEN %(first)s AND %(last)s AND source = %(source)s
  AND starts_with(message_id, %(prefix)s)
GROUP BY destination, state;
-- name: insert_history
INSERT INTO audience_events (source, event, ts, user_id, message_key, value)
SELECT * FROM unnest(%(sources)s::text[], %(events)s::text[], %(ts)s::float8[],
                     %(users)s::text[], %(message_keys)s::int8[], %(values)s::float8[]);

-- name: ensure_traits
-- Rows in key order (as merge_traits updates them): concurrent appends never deadlock.
INSERT INTO audience_traits (source, user_id, traits, updated_at)
SELECT s, u, '{}'::jsonb, %(now)s
FROM unnest(%(sources)s::text[], %(users)s::text[]) AS t(s, u)
ORDER BY s, u
ON CONFLICT (source, user_id) DO NOTHING;

-- name: merge_traits
-- A later value of a key replaces the earlier one, null removes the key (stored traits are
-- flat, so stripping nulls only removes those).
UPDATE audience_traits AS a
SET traits = jsonb_strip_nulls(a.traits || v.p), updated_at = %(now)s
FROM unnest(%(sources)s::text[], %(users)s::text[], %(patches)s::jsonb[]) AS v(s, u, p)
WHERE a.source = v.s AND a.user_id = v.u;

-- name: history_members
SELECT user_id FROM audience_events
WHERE source = %(source)s AND event = %(event)s AND ts >= %(start)s AND ts <= %(end)s
GROUP BY user_id HAVING count(DISTINCT message_key) >= %(at_least)s;

-- name: audience_members_with_traits
-- jsonb containment: every wanted key with an equal value (numbers by value).
SELECT m.user_id
FROM (SELECT user_id FROM audience_events
      WHERE source = %(source)s AND event = %(event)s AND ts >= %(start)s AND ts <= %(end)s
      GROUP BY user_id HAVING count(DISTINCT message_key) >= %(at_least)s) AS m
JOIN audience_traits AS t ON t.source = %(source)s AND t.user_id = m.user_id
WHERE t.traits @> %(want)s::jsonb;

-- name: history_counts
SELECT user_id, count(DISTINCT message_key) FROM audience_events
WHERE source = %(source)s AND event = %(event)s AND ts >= %(start)s AND ts <= %(end)s
GROUP BY user_id;

-- name: history_sums
-- One value per messageId.
SELECT user_id, sum(v) FROM (
    SELECT user_id, max(value) AS v FROM audience_events
    WHERE source = %(source)s AND event = %(event)s AND ts >= %(start)s AND ts <= %(end)s
      AND value IS NOT NULL
    GROUP BY user_id, message_key
) AS per_message GROUP BY user_id;

-- name: history_names
-- The distinct (source, event) pairs of the history, one index seek each.
WITH RECURSIVE names(source, event) AS (
    (SELECT source, event FROM audience_events ORDER BY source, event LIMIT 1)
    UNION ALL
    SELECT n.source, n.event FROM names AS p, LATERAL (
        SELECT source, event FROM audience_events
        WHERE (source, event) > (p.source, p.event)
        ORDER BY source, event LIMIT 1) AS n
)
SELECT source, event FROM names;

-- name: prune_history
DELETE FROM audience_events
WHERE source = %(source)s AND event = %(event)s AND ts < %(before)s;

-- name: claim_audience_run
INSERT INTO audience_runs (key, ran_at) VALUES (%(key)s, %(now)s)
ON CONFLICT (key) DO UPDATE SET ran_at = EXCLUDED.ran_at
WHERE audience_runs.ran_at <= %(now)s - %(every)s
RETURNING key;
