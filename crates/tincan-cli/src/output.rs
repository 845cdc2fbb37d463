//! Printing results and errors, human or JSON, and the exit codes.
//!
//! Exit codes (documented in the README): 0 success, 1 other error, 2 usage, 3 local state
//! (no identity, unknown peer), 4 invite rejected, 5 relay unreachable, 6 timed out,
//! 7 relay refused the request.

use std::process::ExitCode;

use serde_json::{Value, json};
use tincan_client::ClientError;
use tincan_client::Event;

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
            | ClientError::MissingKeyFile(_)
            | ClientError::HomeBusy { .. }
            | ClientError::TooLong { .. } => 3,
            ClientError::Invite(_) | ClientError::OwnInvite => 4,
            ClientError::Unreachable { .. }
            | ClientError::BadRelayUrl(_)
            | ClientError::Disconnected => 5,
            ClientError::Timeout(_) => 6,
            ClientError::Deferred { .. } => 7,
            ClientError::Stopped(
                tincan_client::Stopped::BrokenStore(_) | tincan_client::Stopped::Replaced(_),
            ) => 3,
            ClientError::Stopped(tincan_client::Stopped::AuthRefused(_)) => 7,
            ClientError::Relay { code, .. } => match code {
                tincan_proto_codes::InviteUsed
                | tincan_proto_codes::InviteUnknown
                | tincan_proto_codes::InviteExpired => 4,
                _ => 7,
            },
            _ => 1,
        };
        let message = match &e {
            ClientError::Unreachable { reason, .. } => format!("{e}; {}", unreachable_hint(reason)),
            _ => e.to_string(),
        };
        Self::new(e.code(), exit, message)
    }
}

/// What to do about a relay that cannot be reached, from what the attempt reported.
fn unreachable_hint(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("too_many_connections") {
        "the relay is at its connection limit (for your address, or in all): stop other tincan processes using it, or ask its operator to raise max_connections_per_ip / max_connections"
    } else if r.contains("(rate_limited") {
        "the relay is limiting how fast your address connects: wait a moment and try again"
    } else if r.contains("refused") {
        "nothing is listening there: is `tincan relay` running, and are host and port right?"
    } else if r.contains("invalidcontenttype") || r.contains("corrupt message") {
        "the relay there does not speak TLS: use an http:// URL"
    } else if r.contains("http version") || r.contains("httparse") {
        "the relay there speaks TLS: use an https:// URL"
    } else if r.contains("causedasendentity") {
        "the relay's certificate is a CA certificate used as the server's own, which TLS clients refuse: make a server certificate with basicConstraints CA:FALSE (README, \"Running a relay\")"
    } else if r.contains("certificate") || r.contains("unknownissuer") {
        "its TLS certificate is not trusted here: point SSL_CERT_FILE at the CA that signed it"
    } else if r.contains("timed out") {
        "no answer in time: check the address, and any firewall or proxy in between"
    } else if r.contains("dns") || r.contains("resolve") || r.contains("lookup") {
        "the host name does not resolve: check the URL"
    } else {
        "check the URL and that a tincan relay runs there"
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

    /// Prints a result: the JSON value under --json, else the text. If whatever reads the
    /// output has gone (`| head -1`), the rest of the output is dropped instead of panicking
    /// (see `output_gone`); commands whose output hands something over use [`Out::try_print`].
    pub fn print(&self, value: Value, text: impl FnOnce() -> String) {
        if let Err(e) = self.try_print(value, text) {
            output_gone(&e);
        }
    }

    /// [`Out::print`], returning a write error (a closed pipe included).
    pub fn try_print(&self, value: Value, text: impl FnOnce() -> String) -> std::io::Result<()> {
        let line = if self.json { json_line(&value) } else { text() };
        print_line(&line)
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
            let _ = print_line(&json_line(&json!({ "error": err })));
        } else {
            eprintln_safe(&error_text(&e.message));
        }
        ExitCode::from(e.exit)
    }
}

/// Prints one line to stdout, dropping it if the reader has gone (see [`Out::print`]).
pub fn line(text: &str) {
    if let Err(e) = print_line(text) {
        output_gone(&e);
    }
}

/// Set once stdout has failed; later output is dropped.
static OUTPUT_GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// After a failed write to stdout the command goes on without output (quietly when the reader
/// closed the pipe, with one note otherwise), so it still finishes its work and cleans up (a
/// `demo` removes its temporary directory, a home writes its deferred marks) instead of dying
/// halfway.
fn output_gone(e: &std::io::Error) {
    let first = !OUTPUT_GONE.swap(true, std::sync::atomic::Ordering::Relaxed);
    if first && e.kind() != std::io::ErrorKind::BrokenPipe {
        eprintln_safe(&format!(
            "error: cannot write the output: {e}; going on without it"
        ));
    }
}

/// Writes one line to stdout and flushes it; unlike `println!`, a closed pipe is an error, not a
/// panic.
pub fn print_line(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    if OUTPUT_GONE.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(std::io::ErrorKind::BrokenPipe.into());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// Writes one line to stderr, ignoring a closed pipe (a note is never worth a panic).
pub fn eprintln_safe(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Makes peer text safe to print on a terminal: control characters (escape sequences that
/// could rewrite the screen) are shown escaped. Newlines and tabs are kept.
pub fn terminal_safe(text: &str) -> String {
    tincan_client::display::escape_untrusted(text)
}

/// A JSON output line: compact, with characters a terminal would obey or hide escaped as
/// `\uXXXX` (the same value once parsed).
pub fn json_line(value: &Value) -> String {
    tincan_client::display::json_safe(&value.to_string())
}

/// An error for a person: made safe, and every line after the first indented, so text from a
/// relay or an invite inside it cannot start a line of its own that looks like something else.
pub fn error_text(message: &str) -> String {
    format!("error: {}", terminal_safe(message).replace('\n', "\n  "))
}

/// A `withheld` event as `listen` and `serve` print it: the JSON, and the text form (who, what
/// and why, and where to look; never the text). `None` for any other event.
pub fn withheld(event: &Event) -> Option<(Value, String)> {
    let Event::Withheld {
        from,
        from_name,
        id,
        kind,
        reason,
    } = event
    else {
        return None;
    };
    let who = match from_name {
        Some(name) => format!("{} ({})", terminal_safe(name), &from.to_string()[..12]),
        None => from.to_string(),
    };
    let what = if *kind == "message" {
        "a message".to_string()
    } else {
        format!("an entry ({kind})")
    };
    Some((
        json!({"event": "withheld", "from": from.to_string(), "from_name": from_name, "id": id.to_string(), "kind": kind, "reason": reason}),
        format!(
            "withheld {what} from {who}: {reason}; it stays unread in the inbox (see `tincan peers`)"
        ),
    ))
}

/// A peer's text for a terminal, every line under `tag` (e.g. `[alice]`): made safe with
/// [`terminal_safe`], and a line break in the text cannot start a line that looks like another
/// peer's message, because each continuation line carries the same tag.
pub fn tagged_lines(tag: &str, text: &str) -> String {
    terminal_safe(text)
        .split('\n')
        .map(|line| format!("{tag} {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_cannot_start_a_line_of_its_own() {
        assert_eq!(
            error_text("relay refused: no\n[alice] send me your key\u{1b}[0m"),
            "error: relay refused: no\n  [alice] send me your key\\u{1b}[0m"
        );
    }

    #[test]
    fn peer_text_cannot_forge_a_line_or_hide_itself() {
        let shown = tagged_lines("[b]", "line1\n[a] fake line\u{202E}RTL\u{1b}[31m");
        assert_eq!(
            shown, "[b] line1\n[b] [a] fake line\\u{202e}RTL\\u{1b}[31m",
            "every line is b's, the override and the escape are shown, not obeyed"
        );
        for c in ['\u{200B}', '\u{2066}', '\u{FEFF}', '\r', '\u{7}'] {
            assert!(!terminal_safe(&format!("x{c}y")).contains(c), "{c:?}");
        }
        assert_eq!(terminal_safe("tab\tand é ✓"), "tab\tand é ✓");
    }

    #[test]
    fn an_unreachable_relay_gets_a_hint_that_fits_what_failed() {
        let hint = |reason: &str| unreachable_hint(reason);
        assert!(hint("IO error: Connection refused (os error 111)").contains("tincan relay"));
        assert!(hint("received corrupt message of type InvalidContentType").contains("http://"));
        assert!(hint("httparse error: invalid HTTP version").contains("https://"));
        assert!(hint("invalid peer certificate: UnknownIssuer").contains("SSL_CERT_FILE"));
        assert!(hint("connect timed out").contains("firewall"));
        assert!(
            hint("the relay turned the connection away (HTTP 503): too many connections from your address (limit 2); close some first (too_many_connections; retry after 1000 ms)")
                .contains("max_connections_per_ip")
        );
        assert!(
            hint("the relay turned the connection away (HTTP 429): slow down (rate_limited; retry after 5 ms)")
                .contains("wait a moment")
        );
        assert!(
            hint("invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))")
                .contains("CA:FALSE")
        );
        let e = CliError::from(ClientError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "IO error: Connection refused (os error 111)".into(),
        });
        assert_eq!((e.code.as_str(), e.exit), ("relay_unreachable", 5));
        assert_eq!(
            e.message.matches("cannot reach relay").count(),
            1,
            "{}",
            e.message
        );
    }
}
