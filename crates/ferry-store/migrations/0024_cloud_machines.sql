-- Machines rented from cloud providers for elastic pools, one row per node asked for. A row is written before its
-- machine is launched (the node's name is the launch's idempotency token), so a server that dies between the launch
-- and its record neither launches twice nor loses the machine: the reconcile loop finds it by its tags.
CREATE TABLE cloud_machines (
    node            TEXT PRIMARY KEY NOT NULL,
    pool            TEXT NOT NULL,
    -- The node's number within its pool: names are <pool>-<seq>, never reused.
    seq             INTEGER NOT NULL,
    provider        TEXT NOT NULL,
    instance_type   TEXT NOT NULL,
    market          TEXT NOT NULL,
    -- What one hour of the machine costs, fixed when it was asked for.
    price_hour      REAL NOT NULL,
    zone            TEXT,
    instance_id     TEXT,
    client_token    TEXT NOT NULL,
    -- The single-use join token in the machine's start-up script (tokens.id); revoked when the machine ends.
    token_id        INTEGER,
    -- requested | launched | joined | terminating | ended
    state           TEXT NOT NULL,
    requested_at_us INTEGER NOT NULL,
    launched_at_us  INTEGER,
    joined_at_us    INTEGER,
    ended_at_us     INTEGER,
    -- Why it ended, or the last thing that went wrong with it.
    detail          TEXT,
    UNIQUE (pool, seq)
);
CREATE INDEX cloud_machines_state ON cloud_machines (state);
CREATE INDEX cloud_machines_token ON cloud_machines (token_id);

-- What the scheduler asked of elastic pools and what came of it, for the dashboard's burst history and `ferry pools`:
-- provision (nodes asked for), release (an idle node given back), abandon (nodes that did not join in time), failed
-- (the provider could not start nodes) and gone (a machine ended, by Ferry or by its provider).
CREATE TABLE cloud_events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at_us  INTEGER NOT NULL,
    pool   TEXT NOT NULL,
    kind   TEXT NOT NULL,
    node   TEXT,
    nodes  INTEGER NOT NULL DEFAULT 0,
    detail TEXT NOT NULL
);
CREATE INDEX cloud_events_pool_at ON cloud_events (pool, at_us);

-- Pools defined at run time (`ferry pool add`), each as the TOML of its [[pool]] table, checked as the configuration
-- file's pools are whenever it is read; the configuration file's own pools are not here.
CREATE TABLE runtime_pools (
    name          TEXT PRIMARY KEY NOT NULL,
    definition    TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    updated_at_us INTEGER NOT NULL
);
