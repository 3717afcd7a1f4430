-- The job queue's claim index (src/pipeline/jobq.c).
--
-- A worker claims one stage at a time (each stage has its own concurrency
-- limit in a process):
--   SELECT id FROM jobs WHERE status = 'queued' AND stage = $3
--      AND run_at <= now() ORDER BY run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED
-- On 001's jobs_claim (run_at) that walks every due job of the other
-- stages first: with 20,000 transcriptions waiting, a document claim read
-- them all (7 ms a claim). Keyed by stage, then in claim order, it reads
-- only the rows it returns. Same name, same partial predicate.
DROP INDEX jobs_claim;
CREATE INDEX jobs_claim ON jobs (stage, run_at, id) WHERE status = 'queued';
