-- Maintained counts (queue/base.py, QueueStats), so that status, the dashboard and the metrics
-- gauges cost the same on any number of jobs. Every statement that inserts, updates or
-- deletes jobs adds its net change as rows of job_counts, in its own transaction (statement
-- triggers with transition tables: one INSERT a statement, not a row). Rows are only ever
-- added (no row is updated, so concurrent appends never wait for each other on a counter);
-- the queue sums them, and compacts them now and then (compact_counts) so that they stay few.
-- kind 'now': jobs per (destination, state, reason) now, reason '' but for skipped / dead /
-- retry; kind 'total': jobs ever received, and times one became delivered / skipped / dead /
-- retry.
CREATE TABLE job_counts (
    kind text NOT NULL,
    destination text NOT NULL,
    state text NOT NULL,
    reason text NOT NULL,
    n bigint NOT NULL
);

CREATE FUNCTION job_counts_reason(state text, reason text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN state IN ('skipped', 'dead', 'retry') THEN coalesce(reason, '') ELSE '' END
$$;

CREATE FUNCTION jobs_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (kind, destination, state, reason, n)
    SELECT 'now', destination, state, job_counts_reason(state, reason), count(*)
    FROM new_rows GROUP BY 2, 3, 4
    UNION ALL
    SELECT 'total', destination, 'received', '', count(*) FROM new_rows GROUP BY 2;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_insert();

CREATE FUNCTION jobs_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (kind, destination, state, reason, n)
    SELECT kind, destination, state, reason, sum(n) FROM (
        -- A row that kept its state and reason adds -1 and +1 to the same count: nothing.
        SELECT 'now' AS kind, destination, state, job_counts_reason(state, reason) AS reason,
               -1 AS n
        FROM old_rows
        UNION ALL
        SELECT 'now', destination, state, job_counts_reason(state, reason), 1 FROM new_rows
        UNION ALL
        SELECT 'total', w.destination, w.state, '', 1
        FROM old_rows AS o JOIN new_rows AS w USING (id)
        WHERE o.state IS DISTINCT FROM w.state
          AND w.state IN ('delivered', 'skipped', 'dead', 'retry')
    ) AS change
    GROUP BY 1, 2, 3, 4
    HAVING sum(n) <> 0;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_count_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_update();

CREATE FUNCTION jobs_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (kind, destination, state, reason, n)
    SELECT 'now', destination, state, job_counts_reason(state, reason), -count(*)
    FROM old_rows GROUP BY 2, 3, 4;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_delete();

-- The jobs already there (totals start from the jobs still kept).
INSERT INTO job_counts (kind, destination, state, reason, n)
SELECT 'now', destination, state, job_counts_reason(state, reason), count(*)
FROM jobs GROUP BY 2, 3, 4
UNION ALL
SELECT 'total', destination, 'received', '', count(*) FROM jobs GROUP BY 2
UNION ALL
SELECT 'total', destination, state, '', count(*) FROM jobs
WHERE state IN ('delivered', 'skipped', 'dead', 'retry') GROUP BY 2, 3;

-- Failed attempts (retries and dead letters) as complete() recorded them; the latest are
-- read, older ones trimmed with the compaction.
CREATE TABLE errors (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at double precision NOT NULL,
    destination text NOT NULL,
    state text NOT NULL,
    reason text NOT NULL,
    answer text NOT NULL,
    jobs integer NOT NULL,
    job_id bigint NOT NULL
);

-- The debugger's search (Queue.search): keys of each job, written by Queue.index in the
-- background (never by appends); next_id: the first job not indexed yet.
CREATE TABLE search (
    key text NOT NULL,
    job_id bigint NOT NULL
);
CREATE INDEX search_key ON search (key, job_id);
CREATE INDEX search_job ON search (job_id);
CREATE TABLE search_cursor (
    one integer PRIMARY KEY CHECK (one = 1),
    next_id bigint NOT NULL
);
INSERT INTO search_cursor VALUES (1, 1);
