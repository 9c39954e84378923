//! Credentials inside URLs (`https://user:secret@host/…`) never reach a log, a status, an event or
//! a report: every component shows URLs through [`url`].

use std::borrow::Cow;

/// `text` with the user-info of every URL in it (what precedes `@` in the authority) replaced by
/// `***`. Works on any text, parseable URL or not, so a malformed one is redacted too.
pub fn url(text: &str) -> Cow<'_, str> {
    if !text.contains('@') || !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or whitespace.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(userinfo) => {
                out.push_str("***");
                out.push_str(&authority[userinfo..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn hides_user_info_and_keeps_the_rest() {
        for (given, shown) in [
            ("https://example.com/fw.bin", "https://example.com/fw.bin"),
            (
                "https://user:s3cret@example.com/fw.bin",
                "https://***@example.com/fw.bin",
            ),
            ("http://token@example.com:8080?x=1", "http://***@example.com:8080?x=1"),
            ("https://a:b@c@example.com#f", "https://***@example.com#f"),
            ("http://u:p@h", "http://***@h"),
            (
                "fetching https://u:p@a.example/x: redirected to http://v:q@b.example/y",
                "fetching https://***@a.example/x: redirected to http://***@b.example/y",
            ),
            // An @ in the path or query is not user-info.
            ("https://example.com/a@b?mail=x@y", "https://example.com/a@b?mail=x@y"),
            ("mail me at x@y.example", "mail me at x@y.example"),
            ("ftp://anonymous:pw@ftp.example/pub", "ftp://***@ftp.example/pub"),
        ] {
            assert_eq!(url(given), shown, "{given}");
        }
    }
}
