-- The registry index as the last release before versioned migrations made it. Every
-- statement is `IF NOT EXISTS`: a no-op on an index that release made, the whole schema on a
-- new one. (This schema had no column added after its first release, so nothing else is
-- needed to adopt an older index.)
--
-- Never edit a migration once released (sqlx checks each applied file's checksum): change the
-- schema with a new file, numbered next.

CREATE TABLE IF NOT EXISTS tokens (
    prefix TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'publisher')),
    created_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS skills (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    kind TEXT NOT NULL,
    level INTEGER NOT NULL,
    description TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    publisher TEXT NOT NULL,
    published_by TEXT NOT NULL,
    published_at TEXT NOT NULL,
    log_index INTEGER NOT NULL,
    envelope TEXT NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE IF NOT EXISTS publication_log (
    idx INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    key_id TEXT NOT NULL,
    published_at TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
