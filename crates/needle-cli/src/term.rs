//! Text from model files (tensor names, template `raise_exception` messages, token texts,
//! generated text, triggers) made safe for a terminal: control characters and bidirectional
//! overrides are shown as visible escapes instead of moving the cursor, recolouring or
//! reordering what the user reads.

use std::borrow::Cow;
use std::io::IsTerminal;

/// Whether `c` must never reach a terminal raw: C0 controls, DEL, C1 controls (CSI among them)
/// and the Unicode bidirectional controls (embeddings, overrides, isolates, marks).
fn unsafe_char(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{61c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

/// `text` with every unsafe character written as `\xHH` (ASCII) or `\u{HHHH}`; with
/// `keep_lines`, newlines and tabs stay as they are (multi-line output), else they are escaped
/// too (a one-line message).
pub fn escape(text: &str, keep_lines: bool) -> Cow<'_, str> {
    let bad = |c: char| unsafe_char(c) && !(keep_lines && (c == '\n' || c == '\t'));
    if !text.chars().any(bad) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !bad(c) {
            out.push(c);
        } else if c.is_ascii() {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// Serialized JSON with the unsafe characters serde_json leaves raw inside strings (DEL, C1,
/// bidi controls) written as `\uXXXX`: the same JSON value, safe on a terminal.
pub fn json(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        // Outside strings JSON has only whitespace (kept); inside, serde_json has escaped C0.
        if unsafe_char(c) && !matches!(c, '\n' | '\t' | '\r' | ' ') {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// At most `max` characters of `s` on one line (whitespace runs made one space), an ellipsis
/// marking a cut.
pub fn clip(s: &str, max: usize) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= max {
        one
    } else {
        format!("{}…", one.chars().take(max).collect::<String>())
    }
}

/// Text for stdout: escaped (lines kept) when stdout is a terminal, raw when it is a pipe or
/// file, as `cat` users of `needle generate` expect.
pub fn for_stdout(text: &str) -> Cow<'_, str> {
    if std::io::stdout().is_terminal() {
        escape(text, true)
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_are_made_visible() {
        assert_eq!(escape("plain 'text' ünï", false), "plain 'text' ünï");
        assert_eq!(
            escape("a\u{1b}[31mred\u{7}\u{9b}2J\u{7f}", true),
            "a\\x1b[31mred\\x07\\u{9b}2J\\x7f"
        );
        assert_eq!(
            escape("x\u{202e}cod.exe\u{2066}\u{200f}", true),
            "x\\u{202e}cod.exe\\u{2066}\\u{200f}"
        );
        assert_eq!(escape("two\nlines\tand\r", true), "two\nlines\tand\\x0d");
        assert_eq!(escape("two\nlines", false), "two\\x0alines");
    }

    #[test]
    fn json_stays_json() {
        let doc = serde_json::json!({"t": "a\u{1b}b\u{202e}c\u{85}d\u{7f}"});
        let text = serde_json::to_string_pretty(&doc).unwrap();
        let safe = json(&text);
        assert!(!safe.chars().any(|c| unsafe_char(c) && c != '\n'), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, doc);
    }
}
