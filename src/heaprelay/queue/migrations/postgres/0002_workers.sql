-- Worker processes and when each was last seen (heartbeats), to share Heap's rate budget.
CREATE TABLE workers (
    name text PRIMARY KEY,
    seen_at double precision NOT NULL
);
