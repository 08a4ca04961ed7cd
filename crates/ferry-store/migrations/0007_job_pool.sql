-- The pool a job is pinned to (`ferry run --pool`); unset when the scheduler chooses.
ALTER TABLE jobs ADD COLUMN pool TEXT;
