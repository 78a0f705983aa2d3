//! The schema and its versioned migrations.

/// Migration `n` (from 1) takes the schema from version `n - 1` to `n`; the
/// schema version this build writes is their number.
pub(crate) const MIGRATIONS: &[&str] = &[V1, V2];

/// The schema version from which workspace records are stored in
/// [`RECORD_FORMAT`](cogrion_core::RECORD_FORMAT) 2: migrating to it rewrites
/// every record through [`cogrion_core::upgrade`], in the same transaction.
pub(crate) const RECORDS_REWRITTEN_AT: i64 = 2;

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
