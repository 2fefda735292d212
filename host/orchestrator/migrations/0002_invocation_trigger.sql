-- What started an invocation: api, cli, webhook, console, mcp or schedule.
ALTER TABLE invocations ADD COLUMN trigger TEXT NOT NULL DEFAULT 'api';
