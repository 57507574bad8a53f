-- Every change to a run bumps its version, in the same statement that
-- writes the run's row. A writer that read a run without locking it (the
-- result applier's fast path) stores its changes only if the run is still
-- at the version it read; otherwise the whole statement fails and the
-- writer reads the run again. Writers that hold the row lock bump the
-- version too, so the two kinds of writer exclude each other.
ALTER TABLE fulfil.runs ADD COLUMN version bigint NOT NULL DEFAULT 0;

-- Called by such a statement when fewer runs were at the expected version
-- than it meant to change: aborts the statement with SQLSTATE 40001
-- (serialization_failure), which the engine reads as "read again".
CREATE FUNCTION fulfil.refuse_stale_runs(changed bigint, expected int) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF changed <> expected THEN
        RAISE EXCEPTION USING
            ERRCODE = '40001',
            MESSAGE = format('%s of %s runs changed since they were read', expected - changed, expected);
    END IF;
    RETURN NULL;
END
$$;
