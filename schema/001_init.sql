-- reeld data model, version 1 (PostgreSQL 15, core features only).
--
-- Applied by src/db/migrate.c inside one transaction: no BEGIN/COMMIT here.
-- Conventions:
--   - ids are uuid (gen_random_uuid(), core since PostgreSQL 13) where they
--     reach clients, so they neither leak counts nor can be guessed; queue
--     and log tables use bigint identities (compact, ordered).
--   - every time is timestamptz; created_at/updated_at default to now().
--   - updated_at is kept by a BEFORE UPDATE trigger (reeld_touch) rather
--     than by each UPDATE statement: nobody can forget it, and RETURNING
--     sees the new value.
--   - enumerations are text + CHECK rather than CREATE TYPE ... AS ENUM: a
--     CHECK can be replaced in a later migration inside a transaction,
--     while removing an enum value cannot be done at all.
--   - a child row of a recording carries the recording's org_id for
--     tenant-scoped queries, and a composite foreign key (recording_id,
--     org_id) -> recordings(id, org_id) guarantees the two agree: a chunk
--     can never be found under another organization.

CREATE FUNCTION reeld_touch() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

-- ---------------------------------------------------------------- plans

-- Quotas per plan. NULL means unlimited. Operators (and tests) adjust the
-- numbers with plain UPDATEs; organizations.plan references id.
CREATE TABLE plans (
    id text PRIMARY KEY CHECK (id ~ '^[a-z][a-z0-9_]*$'),
    name text NOT NULL,
    transcription_minutes_month integer CHECK (transcription_minutes_month >= 0),
    chat_queries_day integer CHECK (chat_queries_day >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER plans_touch BEFORE UPDATE ON plans
    FOR EACH ROW EXECUTE FUNCTION reeld_touch();

INSERT INTO plans (id, name, transcription_minutes_month, chat_queries_day) VALUES
    ('free', 'Free', 120, 50),
    ('pro', 'Pro', 1200, 1000),
    ('team', 'Team', 6000, 5000),
    ('enterprise', 'Enterprise', NULL, NULL);

-- Which Stripe price buys which plan (a plan may have a monthly and a
-- yearly price). The Stripe webhook maps a subscription's price here.
CREATE TABLE plan_prices (
    stripe_price_id text PRIMARY KEY,
    plan text NOT NULL REFERENCES plans (id) ON UPDATE CASCADE ON DELETE CASCADE
);

-- ---------------------------------------------------------------- tenants

CREATE TABLE organizations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Clerk's organization id ("org_..."); NULL for organizations created
    -- through POST /api/organizations. UNIQUE allows many NULLs.
    external_id text UNIQUE,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    slug text NOT NULL CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$' AND length(slug) <= 64),
    plan text NOT NULL DEFAULT 'free' REFERENCES plans (id) ON UPDATE CASCADE,
    -- 'none' before any subscription, else Stripe's subscription status.
    billing_status text NOT NULL DEFAULT 'none' CHECK (billing_status IN (
        'none', 'trialing', 'active', 'past_due', 'canceled', 'unpaid',
        'incomplete', 'incomplete_expired', 'paused')),
    stripe_customer_id text UNIQUE,
    stripe_subscription_id text UNIQUE,
    current_period_end timestamptz,
    -- Stripe does not deliver events in order: the webhook applies an
    -- event only when its `created` time is not older than this one.
    billing_event_at timestamptz,
    -- e.g. {"auto_publish": true}
    settings jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- Set when Clerk deletes the organization: its stored files must be
    -- removed before its rows go (a row delete cascades everything).
    deleted_at timestamptz
);
-- A slug is unique among live organizations; a deleted one frees it.
CREATE UNIQUE INDEX organizations_slug_live ON organizations (slug) WHERE deleted_at IS NULL;
CREATE TRIGGER organizations_touch BEFORE UPDATE ON organizations
    FOR EACH ROW EXECUTE FUNCTION reeld_touch();

CREATE TABLE users (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- The JWT `sub` (Clerk's "user_..." or a dev subject).
    external_id text NOT NULL UNIQUE CHECK (length(external_id) BETWEEN 1 AND 255),
    email text,
    name text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- Soft delete (Clerk user.deleted): recordings and chat history keep
    -- their author for the organization.
    deleted_at timestamptz
);
-- Invites are addressed by email; matching is case-insensitive.
CREATE INDEX users_email ON users (lower(email)) WHERE email IS NOT NULL;
CREATE TRIGGER users_touch BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION reeld_touch();

-- "Removing the last admin" is refused by the API inside the deleting
-- transaction (it locks the organization row), not by a constraint here:
-- a user or organization delete must still be able to cascade.
CREATE TABLE memberships (
    org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('admin', 'member')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);
CREATE TRIGGER memberships_touch BEFORE UPDATE ON memberships
    FOR EACH ROW EXECUTE FUNCTION reeld_touch();

-- The invite token itself is never stored, only its SHA-256 (hex): a
-- leaked table yields no usable accept link.
CREATE TABLE invites (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email text NOT NULL CHECK (length(email) BETWEEN 3 AND 320),
    role text NOT NULL CHECK (role IN ('admin', 'member')),
    token_hash text NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    invited_by uuid REFERENCES users (id) ON DELETE SET NULL,
    expires_at timestamptz NOT NULL DEFAULT now() + interval '7 days',
    accepted_at timestamptz,
    accepted_by uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Serves the "10 invites per hour per organization" count.
CREATE INDEX invites_org_created ON invites (org_id, created_at);

-- ---------------------------------------------------------------- recordings

CREATE TABLE recordings (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    -- SET NULL: a recording belongs to its organization and outlives a
    -- removed author.
    user_id uuid REFERENCES users (id) ON DELETE SET NULL,
    title text NOT NULL CHECK (length(title) BETWEEN 1 AND 500),
    description text CHECK (length(description) <= 10000),
    status text NOT NULL DEFAULT 'uploading' CHECK (status IN (
        'uploading', 'uploaded', 'transcribing', 'transcribed',
        'doc_generating', 'embedding', 'completed', 'error')),
    -- error_stage may be set while the status is not yet 'error': a failed
    -- document still lets embedding run, and the recording ends 'error'.
    error_stage text CHECK (error_stage IN (
        'upload', 'transcription', 'document', 'embedding', 'publication')),
    error_message text,
    content_type text,
    filename text,
    -- NULL until known (tus creation-defer-length).
    size_bytes bigint CHECK (size_bytes >= 0),
    -- Bytes durably stored; tus Upload-Offset.
    upload_offset bigint NOT NULL DEFAULT 0 CHECK (upload_offset >= 0),
    upload_expires_at timestamptz,
    -- Decoded tus Upload-Metadata (filename, filetype, title, ...).
    upload_metadata jsonb CHECK (jsonb_typeof(upload_metadata) = 'object'),
    -- Lease on the upload for one PATCH at a time across processes: a
    -- second PATCH finds it held (423); an expired lease (a dead process)
    -- can be taken over.
    upload_lease_owner text,
    upload_lease_expires_at timestamptz,
    -- org-<org_id>/recordings/<id>.<ext>
    storage_key text,
    -- S3 multipart UploadId while an upload is in progress on S3.
    storage_upload_id text,
    duration_ms bigint CHECK (duration_ms >= 0),
    thumbnail_key text,
    published boolean NOT NULL DEFAULT false,
    share_id text UNIQUE CHECK (share_id ~ '^[A-Za-z0-9_-]{8,64}$'),
    share_include_video boolean NOT NULL DEFAULT false,
    published_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    -- Set by DELETE before the stored file is removed and the row deleted;
    -- a deleted recording is never listed nor processed.
    deleted_at timestamptz,
    CHECK (status <> 'error' OR error_stage IS NOT NULL),
    CHECK (size_bytes IS NULL OR upload_offset <= size_bytes),
    CHECK (NOT published OR share_id IS NOT NULL),
    -- Target of the children's composite foreign keys (see top).
    UNIQUE (id, org_id)
);
-- The list, newest first (id breaks ties so paging is stable).
CREATE INDEX recordings_org_created ON recordings (org_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX recordings_org_user ON recordings (org_id, user_id, created_at DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX recordings_org_status ON recordings (org_id, status, created_at DESC)
    WHERE deleted_at IS NULL;
-- Sweeper of abandoned uploads (tus expiration).
CREATE INDEX recordings_upload_expiry ON recordings (upload_expires_at)
    WHERE status = 'uploading';
CREATE INDEX recordings_user ON recordings (user_id);
CREATE TRIGGER recordings_touch BEFORE UPDATE ON recordings
    FOR EACH ROW EXECUTE FUNCTION reeld_touch();

-- Parts of an S3 multipart upload already stored, so an offset is durable
-- (and the upload can be completed) whichever process took the part.
CREATE TABLE upload_parts (
    recording_id uuid NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    part_number integer NOT NULL CHECK (part_number BETWEEN 1 AND 10000),
    etag text NOT NULL,
    size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (recording_id, part_number)
);

CREATE TABLE transcripts (
    recording_id uuid PRIMARY KEY,
    org_id uuid NOT NULL,
    text text NOT NULL,
    language text,
    -- [{"w": "...", "start_ms": 0, "end_ms": 0}, ...]
    words jsonb CHECK (jsonb_typeof(words) = 'array'),
    provider text NOT NULL,
    provider_job_id text,
    transcribed_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (recording_id, org_id) REFERENCES recordings (id, org_id) ON DELETE CASCADE
);

CREATE TABLE documents (
    recording_id uuid PRIMARY KEY,
    org_id uuid NOT NULL,
    content text NOT NULL,
    summary text,
    model text NOT NULL,
    prompt_tokens integer CHECK (prompt_tokens >= 0),
    completion_tokens integer CHECK (completion_tokens >= 0),
    generation_ms integer CHECK (generation_ms >= 0),
    -- Suspiciously short for its transcript (the generator flags it).
    flagged_short boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (recording_id, org_id) REFERENCES recordings (id, org_id) ON DELETE CASCADE
);
CREATE TRIGGER documents_touch BEFORE UPDATE ON documents
    FOR EACH ROW EXECUTE FUNCTION reeld_touch();

-- No pgvector: the vector is float32 little-endian in bytea, dim floats
-- long, searched in memory by reeld. model names the embedder so vectors of
-- different models are never compared.
CREATE TABLE transcript_chunks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recording_id uuid NOT NULL,
    org_id uuid NOT NULL,
    idx integer NOT NULL CHECK (idx >= 0),
    text text NOT NULL,
    start_ms bigint NOT NULL CHECK (start_ms >= 0),
    end_ms bigint NOT NULL,
    embedding bytea NOT NULL,
    dim integer NOT NULL CHECK (dim BETWEEN 1 AND 16384),
    model text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (end_ms >= start_ms),
    CHECK (octet_length(embedding) = 4 * dim),
    -- A retried embedding step replaces rows instead of adding them.
    UNIQUE (recording_id, idx),
    FOREIGN KEY (recording_id, org_id) REFERENCES recordings (id, org_id) ON DELETE CASCADE
);
-- Loading an organization's vectors into memory.
CREATE INDEX transcript_chunks_org ON transcript_chunks (org_id, id);

-- ---------------------------------------------------------------- pipeline

-- The job queue. A worker claims with
--   SELECT ... WHERE status = 'queued' AND run_at <= now()
--   ORDER BY run_at FOR UPDATE SKIP LOCKED LIMIT n
-- and sets status 'running', leased_by, lease_expires_at; a running job
-- whose lease expired belongs to a dead process and is claimed again.
-- Rows stay after they finish: they are the per-stage history the
-- recording detail shows (see recording_stages below).
CREATE TABLE jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id uuid NOT NULL,
    recording_id uuid NOT NULL,
    stage text NOT NULL CHECK (stage IN ('transcription', 'document', 'embedding', 'publication')),
    status text NOT NULL DEFAULT 'queued' CHECK (status IN (
        'queued', 'running', 'done', 'failed', 'cancelled')),
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    run_at timestamptz NOT NULL DEFAULT now(),
    leased_by text,
    lease_expires_at timestamptz,
    last_error text,
    -- Set while an asynchronous provider holds the work (AssemblyAI,
    -- Deepgram): its webhook finds the job by (provider, provider_job_id).
    provider text,
    provider_job_id text,
    -- Stage options, e.g. {"model": "..."} for a regenerated document.
    payload jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(payload) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    CHECK (status <> 'running' OR lease_expires_at IS NOT NULL),
    FOREIGN KEY (recording_id, org_id) REFERENCES recordings (id, org_id) ON DELETE CASCADE
);
CREATE INDEX jobs_claim ON jobs (run_at) WHERE status = 'queued';
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE status = 'running';
-- A recording has at most one live job per stage: a doubled "start the
-- stage" (a retried webhook, two processes) fails with a unique violation
-- (23505) instead of running the stage twice.
CREATE UNIQUE INDEX jobs_one_active ON jobs (recording_id, stage)
    WHERE status IN ('queued', 'running');
CREATE UNIQUE INDEX jobs_provider_job ON jobs (provider, provider_job_id)
    WHERE provider_job_id IS NOT NULL;
CREATE INDEX jobs_recording ON jobs (recording_id, stage, id);
CREATE TRIGGER jobs_touch BEFORE UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION reeld_touch();

-- Wake workers: NOTIFY reeld_jobs '<stage>' when a job becomes queued.
-- Sent at commit, so a woken worker sees the row. Identical payloads in
-- one transaction are folded into one notification by PostgreSQL.
CREATE FUNCTION reeld_jobs_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'queued' AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'queued'
                                  OR OLD.run_at IS DISTINCT FROM NEW.run_at) THEN
        PERFORM pg_notify('reeld_jobs', NEW.stage);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE OF status, run_at ON jobs
    FOR EACH ROW EXECUTE FUNCTION reeld_jobs_notify();

-- Per-stage timings of a recording: the latest job of each stage.
CREATE VIEW recording_stages AS
SELECT DISTINCT ON (recording_id, stage)
       recording_id, org_id, stage, status, attempts, started_at, finished_at,
       last_error AS error
  FROM jobs
 ORDER BY recording_id, stage, id DESC;

-- Status changes, streamed by GET /api/events; id is the SSE event id.
-- recording_id has no foreign key on purpose: the event that a recording
-- was deleted must outlive the recording, or a resuming client misses it.
CREATE SEQUENCE events_id_seq AS bigint;
CREATE TABLE events (
    id bigint PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    recording_id uuid,
    type text NOT NULL CHECK (type ~ '^[a-z_]+(\.[a-z_]+)+$'),
    data jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE events_id_seq OWNED BY events.id;
CREATE INDEX events_org ON events (org_id, id);
-- Pruning old events.
CREATE INDEX events_created ON events (created_at);

-- Last-Event-ID resumption needs ids that become visible in increasing
-- order within an organization; a plain sequence does not give that (a
-- transaction holding id 10 can commit after one holding 11, and a reader
-- that saw 11 would skip 10 forever). So the id is drawn only after taking
-- a per-organization transaction lock, held until commit: the next insert
-- for the same organization waits, then draws a larger id. Consequence:
-- insert events last in a transaction and commit promptly.
-- (The two-int4 advisory key space does not overlap migrate.c's bigint key.)
CREATE FUNCTION reeld_events_before() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1701147236, hashtext(NEW.org_id::text));
    NEW.id := nextval('events_id_seq');
    RETURN NEW;
END
$$;
CREATE TRIGGER events_id BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION reeld_events_before();

-- NOTIFY reeld_events '<org_id> <id>' at commit, for the SSE streams of
-- every process.
CREATE FUNCTION reeld_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('reeld_events', NEW.org_id::text || ' ' || NEW.id::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION reeld_events_notify();

-- NOTIFY reeld_chunks '<org_id> <recording_id>' when a recording's chunks
-- change (insert, delete, cascade from a recording delete), so each
-- process's in-memory vector index reloads that recording.
CREATE FUNCTION reeld_chunks_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r transcript_chunks;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    PERFORM pg_notify('reeld_chunks', r.org_id::text || ' ' || r.recording_id::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER transcript_chunks_notify AFTER INSERT OR UPDATE OR DELETE ON transcript_chunks
    FOR EACH ROW EXECUTE FUNCTION reeld_chunks_notify();

-- ---------------------------------------------------------------- assistant

CREATE TABLE chat_messages (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id uuid REFERENCES users (id) ON DELETE SET NULL,
    query text NOT NULL,
    answer text,
    -- [{recording_id, title, chunk_id, snippet, start_ms, score}]; named
    -- refs because REFERENCES is a reserved word that would need quoting
    -- in every statement.
    refs jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(refs) = 'array'),
    -- answered: model answered; no_context: no relevant chunk, no model
    -- call; error: provider failed; cancelled: the client went away.
    outcome text NOT NULL DEFAULT 'answered' CHECK (outcome IN (
        'answered', 'no_context', 'error', 'cancelled')),
    model text,
    latency_ms integer CHECK (latency_ms >= 0),
    prompt_tokens integer CHECK (prompt_tokens >= 0),
    completion_tokens integer CHECK (completion_tokens >= 0),
    -- "all" or "recording:<uuid>"
    scope text NOT NULL DEFAULT 'all' CHECK (scope = 'all' OR scope ~ '^recording:[0-9a-f-]{36}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chat_messages_org_user ON chat_messages (org_id, user_id, created_at DESC);

CREATE TABLE chat_feedback (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id uuid REFERENCES users (id) ON DELETE SET NULL,
    -- Feedback may come without a stored message (the client sends the
    -- query and answer itself), so the message is optional.
    message_id uuid REFERENCES chat_messages (id) ON DELETE SET NULL,
    query text,
    answer text,
    feedback text NOT NULL CHECK (feedback IN ('up', 'down')),
    comment text CHECK (length(comment) <= 10000),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chat_feedback_org ON chat_feedback (org_id, created_at DESC);
CREATE INDEX chat_feedback_message ON chat_feedback (message_id) WHERE message_id IS NOT NULL;

-- ---------------------------------------------------------------- webhooks, quotas

-- Idempotency of webhooks: INSERT ... ON CONFLICT DO NOTHING in the same
-- transaction as the event's effect; no row inserted means already done.
-- source is open ('stripe', 'clerk', 'transcription:<provider>', ...) so a
-- new caller needs no migration.
CREATE TABLE processed_webhook_events (
    source text NOT NULL CHECK (length(source) BETWEEN 1 AND 64),
    event_id text NOT NULL CHECK (length(event_id) BETWEEN 1 AND 255),
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, event_id)
);
-- Pruning rows older than any sender's retry window.
CREATE INDEX processed_webhook_events_received ON processed_webhook_events (received_at);

-- Usage per organization, metric and period: period_start is the first
-- day of the month for transcription_seconds and the day for
-- chat_queries. One row per (org, metric, period) makes the quota check
-- and the increment one atomic statement:
--   INSERT INTO usage_counters (org_id, metric, period_start, amount)
--   VALUES ($1, $2, $3, $4)
--   ON CONFLICT (org_id, metric, period_start) DO UPDATE
--      SET amount = usage_counters.amount + excluded.amount
--    WHERE usage_counters.amount + excluded.amount <= $5
--   RETURNING amount;            -- no row: over quota (402)
-- (a first insert beyond the limit is checked by the caller: $4 <= $5).
CREATE TABLE usage_counters (
    org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    metric text NOT NULL CHECK (metric IN ('transcription_seconds', 'chat_queries')),
    period_start date NOT NULL,
    amount bigint NOT NULL DEFAULT 0 CHECK (amount >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, metric, period_start)
);
CREATE TRIGGER usage_counters_touch BEFORE UPDATE ON usage_counters
    FOR EACH ROW EXECUTE FUNCTION reeld_touch();
