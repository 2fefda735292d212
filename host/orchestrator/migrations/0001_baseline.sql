-- The schema of the last release before versioned migrations. Every statement is
-- `IF NOT EXISTS`: on a database that release made this is a no-op (columns that older
-- releases lacked were added by the orchestrator just before, see `db::adopt_unversioned`),
-- on a new database it creates everything. Portable SQL: the same file runs on SQLite and
-- PostgreSQL (TEXT and BIGINT only).
--
-- Never edit a migration once released (sqlx checks each applied file's checksum): change the
-- schema with a new file, numbered next.

CREATE TABLE IF NOT EXISTS tokens (
    prefix TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS invocations (
    id TEXT PRIMARY KEY,
    skill TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    target TEXT NOT NULL,
    input TEXT NOT NULL,
    reason TEXT NOT NULL,
    requester TEXT NOT NULL,
    level BIGINT NOT NULL,
    approvals_required BIGINT NOT NULL,
    invocation_digest TEXT NOT NULL,
    verdict TEXT NOT NULL,
    state TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    queued_ms BIGINT,
    started_ms BIGINT,
    finished_ms BIGINT,
    lease_owner TEXT,
    lease_until_ms BIGINT,
    result TEXT,
    kind TEXT NOT NULL DEFAULT 'diagnose',
    assigned_agent TEXT,
    run_started_ms BIGINT
);

CREATE INDEX IF NOT EXISTS invocations_state ON invocations (state, created_ms);

CREATE TABLE IF NOT EXISTS approvals (
    invocation_id TEXT NOT NULL,
    approver TEXT NOT NULL,
    invocation_digest TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (invocation_id, approver)
);

-- `v`: the canonical form each event was hashed with (rows from before v2 are v1).
CREATE TABLE IF NOT EXISTS audit (
    idx BIGINT PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    v BIGINT NOT NULL DEFAULT 1
);

CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hostname TEXT NOT NULL,
    os TEXT NOT NULL,
    arch TEXT NOT NULL,
    labels TEXT NOT NULL,
    pools TEXT NOT NULL,
    public_key TEXT NOT NULL,
    ceiling TEXT NOT NULL,
    enrolled_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    heartbeat_ms BIGINT NOT NULL,
    running BIGINT NOT NULL,
    capacity BIGINT NOT NULL,
    jobs_ok BIGINT NOT NULL,
    jobs_failed BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS enroll_tokens (
    prefix TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    uses_left BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    pools TEXT NOT NULL DEFAULT '[]',
    labels TEXT NOT NULL DEFAULT '{}',
    max_level BIGINT NOT NULL DEFAULT 0
);

-- Agent names are identities in targets (`agent:NAME`): never two of the same.
CREATE UNIQUE INDEX IF NOT EXISTS agents_name ON agents (name);

-- Nonces of signed agent requests, kept until their timestamp is too old to be accepted.
CREATE TABLE IF NOT EXISTS agent_nonces (
    nonce TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);

-- One row: the chain's head. Updating it inside each append's transaction serialises
-- appends across orchestrator replicas (a row lock on PostgreSQL, the writer lock on SQLite).
CREATE TABLE IF NOT EXISTS audit_head (
    id BIGINT PRIMARY KEY,
    idx BIGINT NOT NULL,
    hash TEXT NOT NULL
);
