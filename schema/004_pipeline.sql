-- The pipeline's chunks (src/pipeline/pipeline.c, src/search/search.c).
--
-- A chunk's public id (search matches, chat references) is a UUID: the
-- identity column would leak how many chunks exist, and the in-memory
-- index keys chunks by 16-byte ids. A re-embedded recording gets new
-- chunk ids, like new rows.
ALTER TABLE transcript_chunks ADD COLUMN uid uuid NOT NULL DEFAULT gen_random_uuid();
CREATE UNIQUE INDEX transcript_chunks_uid ON transcript_chunks (uid);

-- The index loads an organization's chunks a recording at a time, in
-- (recording_id, idx) order, with keyset paging.
DROP INDEX transcript_chunks_org;
CREATE INDEX transcript_chunks_org ON transcript_chunks (org_id, recording_id, idx);
