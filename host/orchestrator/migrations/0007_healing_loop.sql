-- The healing loop (heal.rs): where each incident is in it, and what it did.
-- stage: none (no loop), diagnose, diagnosing, repair, repairing, verifying, checking, done
ALTER TABLE incidents ADD COLUMN stage TEXT NOT NULL DEFAULT 'none';
-- healed, resolved (it cleared by itself), escalated or dry_run, once the stage is done
ALTER TABLE incidents ADD COLUMN outcome TEXT;
-- 1 for the first time the alert fired, +1 each time it fires again after it resolved
ALTER TABLE incidents ADD COLUMN episode BIGINT NOT NULL DEFAULT 1;
-- repairs submitted in this episode
ALTER TABLE incidents ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
-- the repair (or, in a dry run, the plan) being waited on
ALTER TABLE incidents ADD COLUMN repair_id TEXT;
-- the diagnose invocations being waited on (JSON array of ids)
ALTER TABLE incidents ADD COLUMN round TEXT NOT NULL DEFAULT '[]';
-- when the loop looks at it next (a verification re-run, a wait for a blast-radius slot)
ALTER TABLE incidents ADD COLUMN due_ms BIGINT;
-- verifying by the alert's resolution: the end of the wait (verify_timeout)
ALTER TABLE incidents ADD COLUMN verify_until_ms BIGINT;
-- what happened, in order (JSON array of {at, step, text, data})
ALTER TABLE incidents ADD COLUMN story TEXT NOT NULL DEFAULT '[]';
-- the token name the alert came with: the requester of what the loop submits
ALTER TABLE incidents ADD COLUMN opened_by TEXT NOT NULL DEFAULT '';
-- the Alertmanager silence Tend made while repairing, until it is expired
ALTER TABLE incidents ADD COLUMN silence_id TEXT;
-- one orchestrator replica at a time moves an incident on
ALTER TABLE incidents ADD COLUMN lease_until_ms BIGINT;
CREATE INDEX incidents_stage ON incidents (stage);

-- Every repair the loop submitted: the cooldown and the circuit breaker count these.
CREATE TABLE healing_repairs (
    invocation_id TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    episode BIGINT NOT NULL,
    policy TEXT NOT NULL,
    target TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX healing_repairs_policy ON healing_repairs (policy, created_ms);

-- The healing policy an invocation was submitted under (not bound; see Invocation.healing).
-- The loop finds a repair it submitted by policy and reason after a lost step.
ALTER TABLE invocations ADD COLUMN healing TEXT;
CREATE INDEX invocations_healing ON invocations (healing, reason);

-- Messages to people about incidents, one per (incident, channel, event), sent with retries.
CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    event TEXT NOT NULL,
    body TEXT NOT NULL,
    -- pending, sent or failed
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_ms BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    sent_ms BIGINT,
    last_error TEXT,
    lease_until_ms BIGINT,
    UNIQUE (incident_id, channel, event)
);
CREATE INDEX notifications_due ON notifications (state, next_ms);

-- Healing policies set through the API (the newest is in force unless a file is given).
CREATE TABLE healing_policies (
    version BIGINT PRIMARY KEY,
    text TEXT NOT NULL,
    source TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
