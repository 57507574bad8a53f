-- Rows that are updated after they are written (a run on every step, a
-- step twice, an attempt and a request once) are packed into full pages by
-- the batched inserts, so their updates found no room on the page: the new
-- version went to another page and every index of the table got a new
-- entry. Leaving room makes those updates HOT (heap-only: no index entry).
ALTER TABLE fulfil.runs SET (fillfactor = 50);
ALTER TABLE fulfil.steps SET (fillfactor = 70);
ALTER TABLE fulfil.attempts SET (fillfactor = 70);
ALTER TABLE fulfil.requests SET (fillfactor = 80);
