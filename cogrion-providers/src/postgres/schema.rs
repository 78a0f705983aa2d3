//! The schema and its versioned migrations.

/// Migration `n` (from 1) takes the schema from version `n - 1` to `n`; the
/// schema version this build writes is their number.
pub(crate) const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// The schema versions from which workspace records are stored in a new
/// [`RECORD_FORMAT`](cogrion_core::store::RECORD_FORMAT) (2 and 3): a
/// migration past one rewrites every record through
/// [`cogrion_core::store::upgrade`], once, in the same transaction.
pub(crate) const RECORDS_REWRITTEN_AT: &[i64] = &[2, 3];

const V1: &str = r#"
CREATE TABLE workspaces (
    id        TEXT PRIMARY KEY NOT NULL,
    revision  BIGINT NOT NULL,
    tenant    TEXT NOT NULL,
    state     TEXT NOT NULL,
    wake_at   BIGINT,
    record    TEXT NOT NULL
);
CREATE INDEX workspaces_by_tenant ON workspaces (tenant, id);
CREATE INDEX workspaces_by_state ON workspaces (state, id);
CREATE INDEX workspaces_due ON workspaces (wake_at) WHERE wake_at IS NOT NULL;

CREATE TABLE leases (
    workspace  TEXT PRIMARY KEY NOT NULL REFERENCES workspaces (id),
    holder     TEXT NOT NULL,
    fence      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    released   BOOLEAN NOT NULL
);

CREATE TABLE events (
    workspace TEXT NOT NULL REFERENCES workspaces (id),
    seq       BIGINT NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (workspace, seq)
);

CREATE TABLE commands (
    workspace TEXT NOT NULL REFERENCES workspaces (id),
    seq       BIGINT NOT NULL,
    id        TEXT NOT NULL,
    answered  BOOLEAN NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (workspace, seq),
    UNIQUE (workspace, id)
);
CREATE INDEX commands_pending ON commands (workspace, seq) WHERE NOT answered;

CREATE TABLE checkpoints (
    workspace TEXT NOT NULL REFERENCES workspaces (id),
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (workspace, key)
);

CREATE TABLE tokens (
    hash      TEXT PRIMARY KEY NOT NULL,
    workspace TEXT NOT NULL REFERENCES workspaces (id),
    consumed  BOOLEAN NOT NULL,
    body      TEXT NOT NULL
);
CREATE INDEX tokens_open ON tokens (workspace) WHERE NOT consumed;

CREATE TABLE credentials (
    serial    TEXT PRIMARY KEY NOT NULL,
    workspace TEXT NOT NULL REFERENCES workspaces (id),
    body      TEXT NOT NULL
);
CREATE INDEX credentials_by_workspace ON credentials (workspace, serial);
"#;

/// Version 2: records in format 2 (desired and applied specs, built layers,
/// destroy receipts, purges; rewritten after this statement), and an index to
/// find a workspace's tokens, consumed ones included, when it is purged.
const V2: &str = r#"
CREATE INDEX tokens_by_workspace ON tokens (workspace);
"#;

/// Version 3: records in format 3 (labels; rewritten after this statement,
/// which fills the new columns); the workspace's cloud and labels as columns
/// to list by; and every event's place in the feed of all workspaces' events
/// (`Engine::events_since`). Sequence values commit out of order on
/// PostgreSQL, so a position alone could be skipped by a reader; each event
/// also records the id of the transaction that wrote it (`tx`), the feed is
/// ordered by (`tx`, `position`), and a reader reads only below the oldest
/// transaction still running (`pg_snapshot_xmin`): whatever commits later
/// sorts after what it has read. Events stored before have `tx` 0 and
/// positions in the order of their workspace and sequence number.
const V3: &str = r#"
ALTER TABLE workspaces ADD COLUMN cloud TEXT NOT NULL DEFAULT '';
ALTER TABLE workspaces ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
CREATE INDEX workspaces_by_cloud ON workspaces (cloud, id);

CREATE SEQUENCE event_positions;
ALTER TABLE events ADD COLUMN position BIGINT;
ALTER TABLE events ADD COLUMN tx BIGINT NOT NULL DEFAULT 0;
UPDATE events e SET position = o.n
    FROM (SELECT workspace, seq, row_number() OVER (ORDER BY workspace, seq) AS n FROM events) o
    WHERE e.workspace = o.workspace AND e.seq = o.seq;
SELECT setval('event_positions', COALESCE((SELECT MAX(position) FROM events), 0) + 1, false);
ALTER TABLE events ALTER COLUMN position SET DEFAULT nextval('event_positions');
ALTER TABLE events ALTER COLUMN position SET NOT NULL;
ALTER TABLE events ALTER COLUMN tx SET DEFAULT (pg_current_xact_id()::text::bigint);
ALTER SEQUENCE event_positions OWNED BY events.position;
CREATE INDEX events_feed ON events (tx, position);
"#;
