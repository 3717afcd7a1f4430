-- The job queue's own claim-and-complete SQL as a pgbench script: the
-- database's ceiling for reeld's queue (bench/run pipeline compares
-- reeld's jobs/s with it). One transaction = one job's life in the queue:
-- claim one due job (jobq "claim", limit 1), then, in one transaction,
-- its conditional completion (jobq "done") and the enqueue of the job
-- that follows it (jobq "enqueue"; the pipeline writes the next stage's
-- job in the completion transaction). Here the follower is the same stage
-- of the same recording, so the backlog stays constant and any -T works.
--
-- The statements are jobq_sql("claim"), ("done") and ("enqueue") of
-- src/pipeline/jobq.c with $n written as :variables, character for
-- character (tests/unit/test_jobq.c checks it); each "jobq:" line below
-- gives the mapping. They need pgbench's extended protocol (-M prepared,
-- as reeld prepares them): the simple protocol would paste the values
-- unquoted.
--
-- Seed once (psql), then run:
--   INSERT INTO organizations (name, slug) VALUES ('bench', 'bench');
--   INSERT INTO recordings (org_id, title)
--     SELECT o.id, 'r' || g FROM organizations o, generate_series(1, 1000) g
--      WHERE o.slug = 'bench';
--   INSERT INTO jobs (org_id, recording_id, stage)
--     SELECT org_id, id, 'transcription' FROM recordings;
--   pgbench -n -M prepared -D stage=transcription -f bench/queue_claim.sql \
--           -c N -j N -T 10 DB
-- -D stage is required (pgbench's \set takes numbers only); the worker id
-- is pgbench's client_id. Keep the backlog well above N: a claim that
-- finds every due job locked by the other clients returns no row, and
-- that transaction only claims. Transactions/s = jobs/s.

\set lease_ms 30000
\set n 1
\set delay 0
\set id 0
-- jobq:claim $1=client_id $2=lease_ms $3=stage $4=n
WITH next AS (SELECT id FROM jobs WHERE status = 'queued' AND stage = :stage AND run_at <= now() ORDER BY run_at, id LIMIT :n FOR UPDATE SKIP LOCKED) UPDATE jobs j SET status = 'running', attempts = j.attempts + 1, leased_by = :client_id, lease_expires_at = now() + :lease_ms::integer * interval '1 millisecond', started_at = coalesce(j.started_at, now()), finished_at = NULL FROM next WHERE j.id = next.id RETURNING j.id, j.org_id, j.recording_id, j.stage, j.attempts, j.max_attempts, j.payload::text AS payload, j.provider, j.provider_job_id
\aset
\if :id > 0
BEGIN;
-- jobq:done $1=id $2=client_id
UPDATE jobs SET status = 'done', lease_expires_at = NULL, finished_at = now(), last_error = NULL WHERE id = :id AND leased_by = :client_id AND status = 'running';
-- jobq:enqueue $1=org_id $2=recording_id $3=stage $4=payload $5=delay $6=max_attempts
INSERT INTO jobs (org_id, recording_id, stage, payload, run_at, max_attempts) VALUES (:org_id, :recording_id, :stage, coalesce(:payload::jsonb, '{}'), now() + :delay::bigint * interval '1 millisecond', :max_attempts) ON CONFLICT (recording_id, stage) WHERE status IN ('queued', 'running') DO NOTHING RETURNING id;
COMMIT;
\endif
