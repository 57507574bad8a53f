-- API tokens (DESIGN.md "Access"): opaque bearer secrets shown once and
-- stored only as their SHA-256, each belonging to a principal
-- `user:<name>` with a team and roles. A revoked or expired row is kept
-- for the record; only live tokens claim their name.

CREATE TABLE fulfil.tokens (
    -- uuid v7, so ids sort by creation.
    id           uuid        PRIMARY KEY,
    name         text        NOT NULL CHECK (name <> '' AND length(name) <= 128),
    team         text        NOT NULL CHECK (team <> '' AND length(team) <= 128),
    roles        text[]      NOT NULL CHECK (
                     cardinality(roles) > 0
                     AND roles <@ ARRAY['viewer', 'requester', 'approver', 'operator', 'author', 'admin']::text[]
                 ),
    -- sha256 of the secret; the secret itself is never stored.
    hash         bytea       NOT NULL UNIQUE CHECK (length(hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text        NOT NULL,
    expires_at   timestamptz,
    revoked_at   timestamptz,
    -- Coarse, written off the hot path (see fulfil_engine::tokens); null
    -- until then.
    last_used_at timestamptz
);

-- A name names one live token; a revoked token's name can be reused.
CREATE UNIQUE INDEX tokens_live_name ON fulfil.tokens (name) WHERE revoked_at IS NULL;
