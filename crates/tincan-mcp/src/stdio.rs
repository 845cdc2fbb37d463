//! The stdio transport, with JSON-RPC parse errors answered.
//!
//! rmcp reads one JSON-RPC message per line and answers a line that is JSON but not a valid
//! request (-32600), but it skips a line that is not JSON at all without a word, so a client that
//! sent one waits for an answer that never comes. JSON-RPC 2.0 answers it with -32700 (id null).
//! Here every stdin line is checked first: JSON goes on to rmcp through an in-memory pipe,
//! anything else is answered with a parse error. One task writes stdout, taking whole lines from
//! rmcp and from the check, so the two never interleave inside a line.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Longest line taken: rmcp's own limit; a longer one is answered as a parse error.
pub(crate) const MAX_LINE: usize = rmcp::transport::async_rw::DEFAULT_MAX_LINE_LENGTH;
/// In-memory pipe buffers between this layer and rmcp.
const PIPE: usize = 64 * 1024;

/// The pipes rmcp is served on, and the task that writes `output`: await it after rmcp has
/// finished, so its last answers are written before the process exits.
pub(crate) struct Stdio {
    /// What rmcp reads: the lines that are JSON.
    pub reader: tokio::io::DuplexStream,
    /// What rmcp writes: passed on to the output line by line.
    pub writer: tokio::io::DuplexStream,
    /// The task writing the output.
    pub output: JoinHandle<()>,
}

/// Sets up the checked transport over `input` and `output` (stdin and stdout in the server).
pub(crate) fn checked<I, O>(input: I, output: O) -> Stdio
where
    I: AsyncRead + Unpin + Send + 'static,
    O: AsyncWrite + Unpin + Send + 'static,
{
    let (reader, feed) = tokio::io::duplex(PIPE);
    let (writer, drain) = tokio::io::duplex(PIPE);
    let (errors_tx, errors_rx) = mpsc::unbounded_channel();
    tokio::spawn(check_lines(BufReader::new(input), feed, errors_tx));
    let output = tokio::spawn(write_lines(BufReader::new(drain), errors_rx, output));
    Stdio {
        reader,
        writer,
        output,
    }
}

/// Forwards each JSON line of `input` to `feed`; answers each other line through `errors`.
/// Ends at the end of `input` (closing `feed`, which rmcp takes as the client leaving).
async fn check_lines<I, F>(mut input: I, mut feed: F, errors: mpsc::UnboundedSender<Vec<u8>>)
where
    I: AsyncBufRead + Unpin,
    F: AsyncWrite + Unpin,
{
    let mut line = Vec::new();
    loop {
        line.clear();
        let complete = match read_line(&mut input, &mut line).await {
            Ok(Some(complete)) => complete,
            Ok(None) | Err(_) => break,
        };
        if !complete {
            let _ = errors.send(parse_error(&format!("line longer than {MAX_LINE} bytes")));
            continue;
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(text) {
            let _ = errors.send(parse_error(&e.to_string()));
            continue;
        }
        line.push(b'\n');
        if feed.write_all(&line).await.is_err() {
            break; // rmcp has stopped
        }
    }
    let _ = feed.shutdown().await;
}

/// Reads one line (without its newline) into `line`: `Some(true)` for a line, `Some(false)` for
/// one longer than [`MAX_LINE`] (skipped to its end, `line` left empty), `None` at the end.
async fn read_line<I: AsyncBufRead + Unpin>(
    input: &mut I,
    line: &mut Vec<u8>,
) -> std::io::Result<Option<bool>> {
    let mut oversized = false;
    let mut any = false;
    loop {
        let buf = input.fill_buf().await?;
        if buf.is_empty() {
            // The end: a last line without a newline is still a line.
            return Ok(any.then_some(!oversized));
        }
        any = true;
        let (chunk, found) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !oversized {
            if line.len() + chunk.len() > MAX_LINE {
                oversized = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = found.unwrap_or(buf.len());
        input.consume(used);
        if found.is_some() {
            return Ok(Some(!oversized));
        }
    }
}

/// A JSON-RPC parse error answer, one line.
fn parse_error(detail: &str) -> Vec<u8> {
    let mut out = serde_json::to_vec(&serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": -32700, "message": format!("Parse error: {detail}")},
    }))
    .unwrap_or_default();
    out.push(b'\n');
    out
}

/// Writes whole lines from rmcp (`drain`) and parse errors to `output`, until rmcp's side closes.
async fn write_lines<D, O>(
    mut drain: D,
    mut errors: mpsc::UnboundedReceiver<Vec<u8>>,
    mut output: O,
) where
    D: AsyncBufRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let mut line = Vec::new();
    let mut errors_open = true;
    loop {
        tokio::select! {
            read = drain.read_until(b'\n', &mut line) => {
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
                            return;
                        }
                        line.clear();
                    }
                }
            }
            error = errors.recv(), if errors_open => match error {
                Some(e) => {
                    if output.write_all(&e).await.is_err() || output.flush().await.is_err() {
                        return;
                    }
                }
                None => errors_open = false,
            },
        }
    }
    // rmcp has finished; answers to lines checked after it are not owed, but parse errors
    // already made are written.
    while let Ok(e) = errors.try_recv() {
        let _ = output.write_all(&e).await;
    }
    let _ = output.flush().await;
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    use super::*;

    #[tokio::test]
    async fn json_lines_reach_rmcp_and_other_lines_get_a_parse_error() {
        let (mut client_in, input) = tokio::io::duplex(1024);
        let (output, client_out) = tokio::io::duplex(1024);
        let Stdio {
            mut reader,
            mut writer,
            output: out_task,
        } = checked(input, output);
        client_in
            .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\nthis is not json\n\n  {\"a\":[1,2]}")
            .await
            .unwrap();
        client_in.shutdown().await.unwrap();
        // rmcp's side gets the two JSON lines (the last had no newline) and then the end.
        let mut got = String::new();
        reader.read_to_string(&mut got).await.unwrap();
        assert_eq!(
            got,
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n  {\"a\":[1,2]}\n"
        );
        // The garbage line was answered; rmcp's own line passes through whole.
        writer
            .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n")
            .await
            .unwrap();
        drop(writer);
        out_task.await.unwrap();
        let mut lines = BufReader::new(client_out).lines();
        let mut seen = Vec::new();
        while let Some(l) = lines.next_line().await.unwrap() {
            seen.push(serde_json::from_str::<serde_json::Value>(&l).unwrap());
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        let error = seen.iter().find(|v| v.get("error").is_some()).unwrap();
        assert_eq!(error["error"]["code"], -32700);
        assert_eq!(error["id"], serde_json::Value::Null);
        assert!(seen.iter().any(|v| v["result"].is_object()));
    }

    #[tokio::test]
    async fn a_line_over_the_limit_is_answered_and_the_next_one_still_goes_through() {
        let mut input: &[u8] = &[];
        let mut line = Vec::new();
        assert_eq!(read_line(&mut input, &mut line).await.unwrap(), None);
        let mut long = vec![b'x'; MAX_LINE + 1];
        long.extend_from_slice(b"\n{}\n");
        let mut input = BufReader::new(&long[..]);
        assert_eq!(read_line(&mut input, &mut line).await.unwrap(), Some(false));
        assert!(line.is_empty());
        assert_eq!(read_line(&mut input, &mut line).await.unwrap(), Some(true));
        assert_eq!(line, b"{}");
    }
}
