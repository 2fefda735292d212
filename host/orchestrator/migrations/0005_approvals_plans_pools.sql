-- Approvals are signatures by approvers' own keys over the invocation digest.
ALTER TABLE approvals ADD COLUMN public_key TEXT;
ALTER TABLE approvals ADD COLUMN signature TEXT;

-- The approver keys an admin registered: the orchestrator accepts an approval from `name` only
-- when it verifies against this key. (Agents count it only when their own trust policy lists
-- the key too.)
CREATE TABLE approver_keys (
    name TEXT PRIMARY KEY,
    public_key TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

-- Everything the invocation digest binds is stored with the invocation, so anyone can
-- recompute it from what the invocation shows. Rows from before this have none of it (NULL).
ALTER TABLE invocations ADD COLUMN manifest_digest TEXT;
ALTER TABLE invocations ADD COLUMN publisher TEXT;
ALTER TABLE invocations ADD COLUMN publisher_key TEXT;
ALTER TABLE invocations ADD COLUMN hosts TEXT;
ALTER TABLE invocations ADD COLUMN narrowing TEXT;
ALTER TABLE invocations ADD COLUMN grants TEXT;
ALTER TABLE invocations ADD COLUMN limits TEXT;
ALTER TABLE invocations ADD COLUMN plan TEXT;

-- A repair that needs approval runs its `plan` export first, as a plan job of its own:
-- `export` is `run` or `plan`, and a plan job names the repair it plans in `plan_for`.
ALTER TABLE invocations ADD COLUMN export TEXT NOT NULL DEFAULT 'run';
ALTER TABLE invocations ADD COLUMN plan_for TEXT;

-- A run across a pool (`all:pool:NAME`) is one invocation (decided and approved once, its
-- host list bound into its digest) with one part per host: each part names it in `part_of`.
ALTER TABLE invocations ADD COLUMN part_of TEXT;
