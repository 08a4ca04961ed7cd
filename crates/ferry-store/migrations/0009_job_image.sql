-- The container image a job runs in (`localhost/busybox:ferry`, `ghcr.io/org/train:1.2`); unset when its command
-- runs directly on the node.
ALTER TABLE jobs ADD COLUMN image TEXT;
