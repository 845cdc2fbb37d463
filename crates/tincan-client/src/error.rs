//! The client's error type.

use thiserror::Error;
use tincan_proto::frame::ErrorCode;
use tincan_proto::invite::InviteError;
use tincan_proto::session::SessionError;

/// Everything that can go wrong in the client.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The home directory has no identity yet.
    #[error("no identity in this home; run `tincan setup` first")]
    NoIdentity,
    /// The local database failed.
    #[error("local store error: {0}")]
    Store(#[from] rusqlite::Error),
    /// A file in the home could not be read or written.
    #[error("home directory error: {0}")]
    Io(#[from] std::io::Error),
    /// The identity key file and the database do not match.
    #[error("stored identity cannot be decrypted: the key file does not match the database")]
    BadKeyFile,
    /// The key file is missing while the database holds an identity it encrypted.
    #[error(
        "{0} is missing, and this home's tincan.db holds an identity only that key opens: restore identity.key from your backup (a new key cannot open it), or start over in a new home"
    )]
    MissingKeyFile(String),
    /// No peer matches the given name.
    #[error(
        "no peer matches '{0}'; run `tincan peers` to list them (an agent that just accepted your invite is listed once its join has been received: run `tincan listen` or `tincan serve` first)"
    )]
    UnknownPeer(String),
    /// More than one peer matches a prefix.
    #[error("'{0}' matches more than one peer; use more characters or an alias")]
    AmbiguousPeer(String),
    /// An alias is taken or malformed.
    #[error("invalid alias: {0}")]
    BadAlias(String),
    /// The invite could not be parsed or verified.
    #[error(transparent)]
    Invite(#[from] InviteError),
    /// The invite is this agent's own.
    #[error("this is your own invite; give it to the other agent")]
    OwnInvite,
    /// Encryption or decryption failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The message is too long.
    #[error("message is {len} bytes; the limit is {max}")]
    TooLong {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The relay could not be reached.
    #[error("cannot reach relay at {url}: {reason}")]
    Unreachable {
        /// The relay URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The relay URL is not usable.
    #[error(
        "invalid relay URL '{0}': expected http://host:port, https://host (a TLS relay), ws:// or wss://"
    )]
    BadRelayUrl(String),
    /// The relay refused a request.
    #[error("relay refused: {message} ({code})")]
    Relay {
        /// Stable code.
        code: ErrorCode,
        /// The relay's explanation.
        message: String,
    },
    /// The relay deferred the message because of a limit; it stays in the outbox and is sent
    /// again automatically.
    #[error(
        "relay deferred the message: {message} ({code}); it stays queued and is retried in {retry_after_ms} ms"
    )]
    Deferred {
        /// Stable code of the limit.
        code: ErrorCode,
        /// The relay's explanation.
        message: String,
        /// When the client retries.
        retry_after_ms: u32,
    },
    /// The connection dropped before the relay answered.
    #[error("connection to the relay was lost before it answered; try again")]
    Disconnected,
    /// Waiting took too long.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The client has shut down.
    #[error("client is closed")]
    Closed,
    /// Another process already receives for this home (`receiving.lock`).
    #[error(
        "another process{} is already receiving for this home on this relay (a `listen`, a `serve` or a room's serve, or an MCP server); a second receiver would take its messages: stop that one first (`tincan room stop` for a room)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    HomeBusy {
        /// The holder's process id, if it wrote one.
        pid: Option<u32>,
    },
    /// The client stopped for good: the relay refused this identity, or the home cannot store.
    #[error(transparent)]
    Stopped(crate::Stopped),
}

impl ClientError {
    /// Whether this is the home's database failing in a way that waiting will not cure: the
    /// file is corrupt, is not a database, or cannot be opened or written. (Busy, locked or full
    /// databases are worth another try.)
    pub fn is_broken_store(&self) -> bool {
        use rusqlite::ErrorCode as C;
        matches!(
            self,
            Self::Store(rusqlite::Error::SqliteFailure(f, _))
                if matches!(
                    f.code,
                    C::DatabaseCorrupt | C::NotADatabase | C::CannotOpen | C::ReadOnly | C::PermissionDenied
                )
        )
    }
}

impl ClientError {
    /// A stable snake_case code for JSON output.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoIdentity => "no_identity",
            Self::Store(_) | Self::Io(_) => "local_store",
            Self::BadKeyFile => "bad_key_file",
            Self::MissingKeyFile(_) => "missing_key_file",
            Self::UnknownPeer(_) => "unknown_peer",
            Self::AmbiguousPeer(_) => "ambiguous_peer",
            Self::BadAlias(_) => "bad_alias",
            Self::Invite(e) => match e {
                InviteError::Foreign => "invite_foreign",
                InviteError::UnsupportedVersion(_) => "invite_version",
                InviteError::Malformed(_) => "invite_malformed",
                InviteError::Tampered => "invite_tampered",
                InviteError::Expired { .. } => "invite_expired",
            },
            Self::OwnInvite => "invite_own",
            Self::Session(_) => "crypto",
            Self::TooLong { .. } => "too_long",
            Self::Unreachable { .. } => "relay_unreachable",
            Self::BadRelayUrl(_) => "bad_relay_url",
            Self::Relay { code, .. } | Self::Deferred { code, .. } => code.as_str(),
            Self::Disconnected => "disconnected",
            Self::Timeout(_) => "timeout",
            Self::Closed => "closed",
            Self::HomeBusy { .. } => "home_busy",
            Self::Stopped(crate::Stopped::AuthRefused(_)) => "auth_failed",
            Self::Stopped(crate::Stopped::BrokenStore(_)) => "home_unusable",
            Self::Stopped(crate::Stopped::Replaced(_)) => "replaced",
        }
    }
}
