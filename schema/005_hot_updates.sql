-- Write amplification of the pipeline (src/pipeline/pipeline.c).
--
-- A recording's status changes six times on its way (uploaded,
-- transcribing, transcribed, doc_generating, embedding, completed). An
-- UPDATE that changes no indexed column, and finds room on the row's page,
-- is a HOT update: no index entry is written. `status` was in two indexes
-- (recordings_org_status, and the predicate of recordings_upload_expiry),
-- so every status change wrote an entry into each of the table's indexes.
--
-- The list's status filter (GET /api/recordings?status=) now reads the
-- organization's recordings newest first through recordings_org_created
-- and filters them, a page at a time.
DROP INDEX recordings_org_status;
-- The sweeper of abandoned uploads reads `status = 'uploading' AND
-- upload_expires_at < now()`; upload_expires_at is cleared when an upload
-- completes, so the index still holds only uploads in progress.
DROP INDEX recordings_upload_expiry;
CREATE INDEX recordings_upload_expiry ON recordings (upload_expires_at)
    WHERE upload_expires_at IS NOT NULL;
-- Room on each page for the new row versions of HOT updates.
ALTER TABLE recordings SET (fillfactor = 70);

-- Embeddings are float32 vectors, which pglz cannot shrink: keep them in
-- the row (a 1536-dim vector and its chunk's text fit in a page) rather
-- than in the TOAST table, which costs a second heap and index insert per
-- chunk and a second lookup per chunk when the search index loads.
-- Larger rows still move out of line.
ALTER TABLE transcript_chunks ALTER COLUMN embedding SET STORAGE MAIN;
