//! The home database schema.

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS peers (
    id TEXT PRIMARY KEY,
    curve25519 BLOB NOT NULL,
    alias TEXT UNIQUE,
    relay_url TEXT NOT NULL,
    session TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen INTEGER
);
CREATE TABLE IF NOT EXISTS invites (
    id TEXT PRIMARY KEY,
    one_time_key BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    relay_url TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    used_by TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    peer TEXT NOT NULL,
    msg_id TEXT NOT NULL UNIQUE,
    relay_url TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    failed_code TEXT,
    failed_message TEXT
);
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    peer TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    text TEXT,
    sent_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    consumed INTEGER NOT NULL DEFAULT 0,
    UNIQUE (peer, msg_id)
);
CREATE TABLE IF NOT EXISTS outbox_deferred (
    msg_id TEXT PRIMARY KEY,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    retry_after_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sent (
    msg_id TEXT PRIMARY KEY,
    peer TEXT NOT NULL,
    relay_seq INTEGER NOT NULL,
    acked_at INTEGER NOT NULL
) WITHOUT ROWID;
";
