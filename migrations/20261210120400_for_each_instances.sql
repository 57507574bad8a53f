-- Instances of for_each steps (docs/promises.md "for_each"): one step row
-- each, `<step>[<index>]`, beside the row of the step they belong to, with
-- their own attempts, timers and compensation like any step. These columns
-- say which step and which item an instance runs; NULL on every other row.
-- They are written once, when the instance row is inserted: the step
-- update of the result path never touches them.
ALTER TABLE fulfil.steps
    ADD COLUMN instance_of text,
    ADD COLUMN instance_index int,
    ADD COLUMN item jsonb;
