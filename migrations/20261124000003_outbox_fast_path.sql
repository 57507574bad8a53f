-- Rows the committing process publishes itself right after commit (the fast
-- path). The relay leaves them alone for a grace period and only sweeps them
-- if that process died before publishing.
ALTER TABLE fulfil.outbox ADD COLUMN fast boolean NOT NULL DEFAULT false;
