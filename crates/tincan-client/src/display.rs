//! Showing a peer's text: it is untrusted, and some characters change how the text around them
//! is shown without being visible themselves. One definition for every place that shows peer
//! text (the CLI's `listen` and `serve` output, the MCP server's frames).

/// `text` with every character that could rewrite a terminal or hide or reorder text shown
/// escaped (`\u{202e}`, `\u{1b}`): control characters other than newline and tab,
/// bidirectional overrides and isolates, zero-width characters, the byte-order mark, and the
/// Unicode line and paragraph separators (which some renderers break lines on, so a peer could
/// start a line that looks like someone else's).
pub fn escape_untrusted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if (c.is_control() && c != '\n' && c != '\t') || invisible_format(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn invisible_format(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}'
        | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::escape_untrusted;

    #[test]
    fn what_could_hide_reorder_or_break_lines_is_escaped_and_the_rest_is_kept() {
        for c in [
            '\u{202E}', '\u{2066}', '\u{200B}', '\u{FEFF}', '\u{2028}', '\u{2029}', '\u{061C}',
            '\r', '\u{7}', '\u{1b}', '\u{85}',
        ] {
            let shown = escape_untrusted(&format!("x{c}y"));
            assert!(!shown.contains(c), "{c:?} -> {shown}");
            assert!(shown.contains('\\'), "{c:?} -> {shown}");
        }
        assert_eq!(escape_untrusted("tab\tand é ✓\nnext"), "tab\tand é ✓\nnext");
    }
}
