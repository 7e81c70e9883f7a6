//! Text fit for an error message, a log line, a table cell or a header: every busbar
//! process quotes untrusted or long text through these, so a huge or multi-line value
//! never floods a message or breaks a format.

/// `text` cut to its first `max` characters, saying how long it was: `abc... (3000 bytes)`.
pub fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], text.len()),
        None => text.to_owned(),
    }
}

/// `text` on one line (whitespace runs become one space) and at most `max` characters,
/// ending in `…` when cut.
pub fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        format!("{}…", flat.chars().take(max.saturating_sub(1)).collect::<String>())
    }
}

/// `text` without line breaks (each becomes a space) and at most `max_bytes` bytes (plus
/// `…` when cut), for places that count bytes, such as NATS headers.
pub fn one_line_bytes(text: &str, max_bytes: usize) -> String {
    let mut out: String = text.chars().map(|c| if c == '\r' || c == '\n' { ' ' } else { c }).collect();
    if out.len() > max_bytes {
        let mut cut = max_bytes;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// A long message kept to its first and last `keep` characters: a parser's message may
/// quote a huge value, while its start and end say what went wrong and where.
pub fn head_and_tail(msg: &str, keep: usize) -> String {
    let n = msg.chars().count();
    if n <= 3 * keep {
        return msg.to_owned();
    }
    let head: String = msg.chars().take(keep).collect();
    let tail: String = msg.chars().skip(n - keep).collect();
    format!("{head} ... {tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_and_says_so() {
        assert_eq!(shorten("abcdef", 3), "abc... (6 bytes)");
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(one_line("boom\nline  two", 100), "boom line two");
        assert_eq!(one_line("abcdef", 4), "abc…");
        assert_eq!(one_line_bytes("a\r\nb", 10), "a  b");
        let cut = one_line_bytes(&"é".repeat(10), 5);
        assert!(cut.len() <= 5 + '…'.len_utf8() && cut.ends_with('…'), "{cut}");
        assert_eq!(head_and_tail(&"x".repeat(10), 5), "x".repeat(10));
        assert_eq!(head_and_tail(&format!("{}{}", "a".repeat(20), "b".repeat(20)), 5), "aaaaa ... bbbbb");
    }
}
