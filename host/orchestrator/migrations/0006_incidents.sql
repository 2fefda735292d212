-- Incidents: one per Alertmanager alert fingerprint (see incidents.rs).
CREATE TABLE incidents (
    id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    alertname TEXT NOT NULL,
    -- open, escalated or resolved
    state TEXT NOT NULL,
    -- firing or resolved: the alert's status in its last notification
    alert_status TEXT NOT NULL,
    target TEXT,
    escalation TEXT,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    starts_ms BIGINT NOT NULL,
    generator_url TEXT NOT NULL,
    notifications BIGINT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    resolved_ms BIGINT,
    receiver TEXT NOT NULL,
    group_key TEXT NOT NULL,
    -- the healing policy that matched it, if any
    policy TEXT,
    -- the invocations Tend submitted for it (JSON array of ids)
    invocations TEXT NOT NULL DEFAULT '[]'
);
