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
    revision  INTEGER NOT NULL,
    tenant    TEXT NOT NULL,
    state     TEXT NOT NULL,
    wake_at   INTEGER,
    record    TEXT NOT NULL
);
CREATE INDEX workspaces_by_tenant ON workspaces (tenant, id);
CREATE INDEX workspaces_by_state ON workspaces (state, id);
CREATE INDEX workspaces_due ON workspaces (wake_at) WHERE wake_at IS NOT NULL;

CREATE TABLE leases (
    workspace  TEXT PRIMARY KEY NOT NULL REFERENCES workspaces (id),
    holder     TEXT NOT NULL,
    fence      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    released   INTEGER NOT NULL
);

CREATE TABLE events (
    workspace TEXT NOT NULL REFERENCES workspaces (id),
    seq       INTEGER NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (workspace, seq)
) WITHOUT ROWID;

CREATE TABLE commands (
    workspace TEXT NOT NULL REFERENCES workspaces (id),
    seq       INTEGER NOT NULL,
    id        TEXT NOT NULL,
    answered  INTEGER NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (workspace, seq),
    UNIQUE (workspace, id)
) WITHOUT ROWID;
CREATE INDEX commands_pending ON commands (workspace, seq) WHERE answered = 0;

CREATE TABLE checkpoints (
    workspace TEXT NOT NULL REFERENCES workspaces (id),
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (workspace, key)
) WITHOUT ROWID;

CREATE TABLE tokens (
    hash      TEXT PRIMARY KEY NOT NULL,
    workspace TEXT NOT NULL REFERENCES workspaces (id),
    consumed  INTEGER NOT NULL,
    body      TEXT NOT NULL
);
CREATE INDEX tokens_open ON tokens (workspace) WHERE consumed = 0;

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
/// to list by; and every event's position in the feed of all workspaces'
/// events (`Engine::events_since`): an `AUTOINCREMENT` key, so a position
/// is never reused, even after the newest events are purged, and, with one
/// writer, positions commit in order. Events stored before get positions in
/// the order of their workspace and sequence number.
const V3: &str = r#"
ALTER TABLE workspaces ADD COLUMN cloud TEXT NOT NULL DEFAULT '';
ALTER TABLE workspaces ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
CREATE INDEX workspaces_by_cloud ON workspaces (cloud, id);

CREATE TABLE events_v3 (
    position  INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace TEXT NOT NULL REFERENCES workspaces (id),
    seq       INTEGER NOT NULL,
    body      TEXT NOT NULL,
    UNIQUE (workspace, seq)
);
INSERT INTO events_v3 (workspace, seq, body)
    SELECT workspace, seq, body FROM events ORDER BY workspace, seq;
DROP TABLE events;
ALTER TABLE events_v3 RENAME TO events;
"#;
