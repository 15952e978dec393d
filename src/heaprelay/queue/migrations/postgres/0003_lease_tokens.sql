-- Lease tokens: how many times each job has been leased (the current claim's Job.lease).
-- Outcomes name the lease they are for, so that a worker whose lease expired and was taken
-- over cannot change the job any more (queue/base.py, "Lease ownership").
ALTER TABLE jobs ADD COLUMN leases integer NOT NULL DEFAULT 0;
