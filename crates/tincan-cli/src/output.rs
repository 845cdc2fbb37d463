//! Printing results and errors, human or JSON, and the exit codes.
//!
//! Exit codes (documented in the README): 0 success, 1 other error, 2 usage, 3 local state
//! (no identity, unknown peer), 4 invite rejected, 5 relay unreachable, 6 timed out,
//! 7 relay refused the request.

use std::process::ExitCode;

use serde_json::{Value, json};
use tincan_client::ClientError;

/// An error with a stable code, a message saying what to do, and an exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: String,
    pub message: String,
    pub exit: u8,
    pub extra: Option<Value>,
}

impl CliError {
    pub fn new(code: &str, exit: u8, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            exit,
            extra: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("internal", 1, message)
    }

    pub fn with(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        let exit = match &e {
            ClientError::NoIdentity
            | ClientError::UnknownPeer(_)
            | ClientError::AmbiguousPeer(_)
            | ClientError::BadAlias(_)
            | ClientError::BadKeyFile
            | ClientError::TooLong { .. } => 3,
            ClientError::Invite(_) | ClientError::OwnInvite => 4,
            ClientError::Unreachable { .. }
            | ClientError::BadRelayUrl(_)
            | ClientError::Disconnected => 5,
            ClientError::Timeout(_) => 6,
            ClientError::Deferred { .. } => 7,
            ClientError::Relay { code, .. } => match code {
                tincan_proto_codes::InviteUsed
                | tincan_proto_codes::InviteUnknown
                | tincan_proto_codes::InviteExpired => 4,
                _ => 7,
            },
            _ => 1,
        };
        Self::new(e.code(), exit, e.to_string())
    }
}

use tincan_client::tincan_proto::frame::ErrorCode as tincan_proto_codes;

/// Where results go.
pub struct Out {
    pub json: bool,
}

impl Out {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// Prints a result: the JSON value under --json, else the text.
    pub fn print(&self, value: Value, text: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else {
            println!("{}", text());
        }
    }

    /// Prints an error and returns its exit code.
    pub fn fail(&self, e: &CliError) -> ExitCode {
        if self.json {
            let mut err = json!({"code": e.code, "message": e.message});
            if let (Some(Value::Object(extra)), Some(obj)) = (&e.extra, err.as_object_mut()) {
                for (k, v) in extra {
                    obj.insert(k.clone(), v.clone());
                }
            }
            println!("{}", json!({ "error": err }));
        } else {
            eprintln!("error: {}", terminal_safe(&e.message));
        }
        ExitCode::from(e.exit)
    }
}

/// Makes peer text safe to print on a terminal: control characters (escape sequences that
/// could rewrite the screen) are shown escaped. Newlines and tabs are kept.
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
