-- Teams and ownership (docs/access.md "Teams and ownership"): the team of
-- the principal who filed a request, so its team (besides the Promise's
-- owner team) may delete, reconcile, cancel and retry it; NULL where the
-- engine filed it (triggers, schedules) or access control was off. And who
-- posted an inbound event over HTTP; NULL for bus events and replays.
-- Forward-only and additive: existing rows keep NULL.

ALTER TABLE fulfil.requests ADD COLUMN team text;
ALTER TABLE fulfil.event_ledger ADD COLUMN received_by text;
