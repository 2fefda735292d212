-- What the person who ended an invocation said (a reject's comment).
ALTER TABLE invocations ADD COLUMN comment TEXT;
