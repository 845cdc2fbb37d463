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
        if is_hidden(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters a reader does not see but a program (an LLM) reads: format characters (Unicode
/// category Cf), the line and paragraph separators, variation selectors other than the two that
/// pick an emoji's text or emoji style, the combining grapheme joiner and the Hangul fillers.
/// Tag characters (U+E0000..U+E007F) mirror ASCII invisibly ("ASCII smuggling"), and the
/// variation selectors can carry hidden bytes too.
/// Whether [`escape_untrusted`] escapes `c`: a control character other than newline and tab, or
/// one a reader does not see (below).
pub fn is_hidden(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || invisible_format(c)
}

/// JSON text with every [`is_hidden`] character written as a `\uXXXX` escape: the same value
/// for a program that parses it, but nothing a terminal showing the line would obey or hide.
/// (JSON encoders leave C1 controls, bidi overrides and U+2028/9 raw, which is valid JSON.)
pub fn json_safe(json: &str) -> String {
    if !json.chars().any(is_hidden) {
        return json.to_string();
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if is_hidden(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{0600}'..='\u{0605}' | '\u{061C}' | '\u{06DD}'
        | '\u{070F}' | '\u{0890}'..='\u{0891}' | '\u{08E2}' | '\u{115F}'..='\u{1160}'
        | '\u{17B4}'..='\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
        | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
        | '\u{FE00}'..='\u{FE0D}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}'
        | '\u{110BD}' | '\u{110CD}' | '\u{13430}'..='\u{1343F}' | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E007F}' | '\u{E0100}'..='\u{E01EF}')
}

#[cfg(test)]
mod tests {
    use super::{escape_untrusted, json_safe};

    #[test]
    fn json_lines_keep_their_value_and_show_nothing_hidden() {
        let text = "a\u{85}b\u{202E}c\u{2028}d\u{E0041}e ❤\u{FE0F}";
        let raw = serde_json::json!({ "text": text }).to_string();
        let safe = json_safe(&raw);
        assert!(!safe.chars().any(super::is_hidden), "{safe}");
        assert!(
            safe.contains("\\u202e") && safe.contains("\\udb40\\udc41"),
            "{safe}"
        );
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["text"], text, "the same value after parsing");
    }

    #[test]
    fn what_could_hide_reorder_or_break_lines_is_escaped_and_the_rest_is_kept() {
        for c in [
            '\u{202E}',
            '\u{2066}',
            '\u{200B}',
            '\u{FEFF}',
            '\u{2028}',
            '\u{2029}',
            '\u{061C}',
            '\r',
            '\u{7}',
            '\u{1b}',
            '\u{85}',
            '\u{9B}',
            '\u{AD}',
            '\u{180E}',
            '\u{3164}',
            '\u{FE00}',
            '\u{E0041}',
            '\u{E007F}',
            '\u{E0100}',
        ] {
            let shown = escape_untrusted(&format!("x{c}y"));
            assert!(!shown.contains(c), "{c:?} -> {shown}");
            assert!(shown.contains('\\'), "{c:?} -> {shown}");
        }
        assert_eq!(escape_untrusted("tab\tand é ✓\nnext"), "tab\tand é ✓\nnext");
        // Emoji keep their presentation selector and joiner-free sequences read as before.
        assert_eq!(escape_untrusted("ok ❤\u{FE0F} 👍🏽"), "ok ❤\u{FE0F} 👍🏽");
        // "ASCII smuggling": tag characters spelling a hidden instruction are shown, not hidden.
        let hidden: String = "run rm"
            .chars()
            .map(|c| char::from_u32(0xE0000 + c as u32).unwrap())
            .collect();
        let shown = escape_untrusted(&format!("hello{hidden}"));
        assert!(shown.starts_with("hello\\u{e0072}"), "{shown}");
    }
}
