//! Client-supplied text made safe for error messages and logs: truncated and escaped, so a
//! newline or an ANSI escape in a study handle or a model name can neither forge a log line nor
//! grow one without bound.

/// Characters of one client-supplied string kept in a message.
pub const MAX_CLIENT_TEXT: usize = 128;

/// Characters of a whole error message kept in a status or a log line.
pub const MAX_MESSAGE: usize = 2048;

/// The first `max` characters of `s`, each passed through `escape`, then `cut` if `s` was
/// longer.
fn bounded(s: &str, max: usize, escape: impl Fn(char, &mut String), cut: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push_str(cut);
            break;
        }
        escape(c, &mut out);
    }
    out
}

/// `s` as it may appear inside a message: at most [`MAX_CLIENT_TEXT`] characters, every control
/// character, quote and backslash escaped, and the original length noted when cut.
pub fn client_text(s: &str) -> String {
    bounded(
        s,
        MAX_CLIENT_TEXT,
        |c, out| out.extend(c.escape_debug()),
        &format!("…({} bytes in all)", s.len()),
    )
}

/// A whole message made single-line and bounded: control characters escaped (`\n`, `\u{1b}`),
/// at most [`MAX_MESSAGE`] characters.
pub fn one_line(s: &str) -> String {
    bounded(
        s,
        MAX_MESSAGE,
        |c, out| {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        },
        "…",
    )
}

/// Whether `s` has the shape of a study handle (`st_`, the 8 hex digits of the server instance
/// that issued it, `_`, 32 hex digits; lowercase); only such strings are logged as a study.
pub fn is_handle(s: &str) -> bool {
    handle_instance(s).is_some()
}

/// The server instance a study handle names (its 8 hex digits), or `None` when `s` is not a
/// handle's shape.
pub fn handle_instance(s: &str) -> Option<&str> {
    let hex = |t: &str| {
        t.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let rest = s.strip_prefix("st_")?;
    let (instance, random) = rest.split_once('_')?;
    (instance.len() == 8 && random.len() == 32 && hex(instance) && hex(random)).then_some(instance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_text_is_escaped_and_bounded() {
        assert_eq!(client_text("osteo-fused-v1"), "osteo-fused-v1");
        let forged = client_text("x\n2026-01-01T00:00:00Z INFO forged\u{1b}[31m\"");
        assert!(!forged.chars().any(char::is_control), "{forged}");
        assert!(forged.contains("\\n") && forged.contains("\\u{1b}") && forged.contains("\\\""));
        let huge = client_text(&"a".repeat(20 << 20));
        assert!(huge.len() < 200, "{}", huge.len());
        assert!(huge.ends_with(&format!("({} bytes in all)", 20 << 20)));
    }

    #[test]
    fn messages_become_one_bounded_line() {
        let m = one_line("line one\nline two\r\u{1b}[2J");
        assert!(!m.chars().any(char::is_control), "{m}");
        assert!(one_line(&"é".repeat(10_000)).chars().count() <= MAX_MESSAGE + 1);
        assert_eq!(one_line("a \"quoted\" value"), "a \"quoted\" value");
    }

    #[test]
    fn only_well_formed_handles_are_handles() {
        let h = "st_89abcdef_0123456789abcdef0123456789abcdef";
        assert!(is_handle(h));
        assert_eq!(handle_instance(h), Some("89abcdef"));
        assert!(!is_handle("st_89abcdef_0123456789abcdef0123456789abcdeF"));
        assert!(!is_handle("st_89abcdef_0123456789abcdef0123456789abcde\n"));
        assert!(!is_handle("st_0123456789abcdef0123456789abcdef"));
        assert!(!is_handle("st_89abcdef0_123456789abcdef0123456789abcdef"));
        assert!(!is_handle("st_"));
    }
}
