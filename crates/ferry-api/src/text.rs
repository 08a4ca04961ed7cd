//! Text that came from outside (users, jobs, agents) and ends up in a path, a header, a log line or a report: the
//! one rule for what is refused and the one way to bound what is shown.

/// Whether `name` is an environment variable name every shell and engine accepts: ASCII letters, digits and `_`,
/// not starting with a digit.
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Why a piece of text was refused, as a sentence naming the field.
pub fn check_plain(field: &str, value: &str) -> Result<(), String> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => {
            Err(format!("{field} holds the control character {}; use printable characters only", c.escape_unicode()))
        }
        None => Ok(()),
    }
}

/// `text` with control characters escaped (`\n`, `\u{0}`), cut at `max` characters with a mark saying so. For a
/// message that goes into a log line or a report as it is, whatever caused it.
pub fn bounded(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = 0usize;
    for c in text.chars() {
        let start = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        chars += out[start..].chars().count();
        if chars > max {
            out.truncate(start);
            out.push_str("… (cut)");
            return out;
        }
    }
    out
}

/// `text` cut at `max` characters with a mark saying so, keeping line breaks and tabs: for a run's end message,
/// which may span lines, before it is stored or sent.
pub fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((at, _)) => format!("{}… (cut at {max} characters)", &text[..at]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_refused_and_named() {
        assert!(check_plain("name", "train-1 ünïcode").is_ok());
        let error = check_plain("the experiment name", "a\0b").unwrap_err();
        assert_eq!(error, "the experiment name holds the control character \\u{0}; use printable characters only");
        assert!(check_plain("x", "a\nb").is_err());
        assert!(check_plain("x", "a\u{7f}").is_err());
    }

    #[test]
    fn shown_text_is_bounded_and_escaped() {
        assert_eq!(bounded("plain", 10), "plain");
        assert_eq!(bounded("a\nb\u{0}", 20), "a\\nb\\u{0}");
        assert_eq!(bounded(&"x".repeat(30), 10), "xxxxxxxxxx… (cut)");
        assert_eq!(cut("ab\ncd", 10), "ab\ncd");
        assert_eq!(cut("äbcdef", 3), "äbc… (cut at 3 characters)");
    }
}
