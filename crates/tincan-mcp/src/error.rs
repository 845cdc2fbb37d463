//! Errors of the MCP server and of `mcp install`.

use thiserror::Error;
use tincan_client::ClientError;

/// Why the server could not start or stopped.
#[derive(Debug, Error)]
pub enum McpError {
    /// The home or the relay connection failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The MCP transport failed.
    #[error("MCP transport error: {0}")]
    Transport(String),
    /// A socket or file failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP address is not usable or not allowed.
    #[error("{0}")]
    BadAddress(String),
}

/// Why a client configuration could not be written.
#[derive(Debug, Error)]
pub enum InstallError {
    /// Reading or writing the file failed.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The existing file is not valid JSON or TOML; it is left untouched.
    #[error(
        "{path} is not valid {format} ({reason}); fix or move it, then run this again. It was not changed"
    )]
    Unparsable {
        /// The file.
        path: String,
        /// JSON or TOML.
        format: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// The existing file has an unexpected shape where the entry goes.
    #[error("{path}: '{key}' is not a table/object; fix it by hand. It was not changed")]
    Shape {
        /// The file.
        path: String,
        /// The key.
        key: String,
    },
}
