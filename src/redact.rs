//! Secrets out of what orch writes: every URL, rendered command and error orch logs or records
//! passes through [`secrets`] first.
//!
//! It knows the shapes secrets take in the text orch handles: the password of a URL
//! (`postgres://orch:PASSWORD@db/orch`), a `key=value` or `key: value` whose key names a secret
//! (`?password=`, `token=`, `AWS_SECRET_ACCESS_KEY=`, `"client_secret": "..."`), and an
//! `Authorization: Bearer` token. It is a net under the rule, not the rule: secrets belong in
//! the environment of the process that needs them, not in templates.

use std::borrow::Cow;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Words that make a key's value a secret, matched case-insensitively anywhere in the key.
const SECRET_KEYS: [&str; 10] = [
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "access_key",
    "private_key",
    "signature",
];

/// `text` with every secret it shows replaced by [`MASK`].
pub fn secrets(text: &str) -> Cow<'_, str> {
    let masked = bearer_tokens(&key_values(&url_passwords(text)));
    if masked == text {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(masked)
    }
}

/// `scheme://user:password@host` → `scheme://user:***@host`, wherever a URL appears.
fn url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first `/`, `?`, `#` or space; its userinfo at the last `@`.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => match authority[..at].split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                    out.push_str(&authority[at..]);
                }
                None => out.push_str(authority),
            },
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The value after `KEY=`, `KEY: ` or `"KEY": "` of a key naming a secret, up to the end of
/// the value (`&`, a space, a quote, `,`, `;`).
fn key_values(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let separator = bytes[i];
        if separator != b'=' && separator != b':' {
            i += 1;
            continue;
        }
        // The key: the word before the separator, maybe in quotes.
        let key_end = if i > 0 && bytes[i - 1] == b'"' {
            i - 1
        } else {
            i
        };
        let key_start = text[..key_end]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
            .map_or(0, |p| p + 1);
        let key = text[key_start..key_end].to_ascii_lowercase();
        let is_secret = !key.is_empty() && SECRET_KEYS.iter().any(|word| key.contains(word));
        // A `:` that begins `://` is a URL, handled above.
        if !is_secret || text[i..].starts_with("://") {
            i += 1;
            continue;
        }
        let mut start = i + 1;
        while start < bytes.len() && bytes[start] == b' ' {
            start += 1;
        }
        // A quoted value runs to its closing quote, spaces and all.
        let quote = bytes
            .get(start)
            .copied()
            .filter(|b| matches!(b, b'"' | b'\''));
        if quote.is_some() {
            start += 1;
        }
        let end = match quote {
            Some(q) => text[start..].find(char::from(q)),
            None => text[start..]
                .find(|c: char| c.is_whitespace() || matches!(c, '&' | '"' | '\'' | ',' | ';')),
        }
        .map_or(bytes.len(), |p| start + p);
        if end > start && &text[start..end] != MASK {
            out.push_str(&text[copied..start]);
            out.push_str(MASK);
            copied = end;
        }
        i = end.max(i + 1);
    }
    out.push_str(&text[copied..]);
    out
}

/// `Bearer TOKEN` → `Bearer ***`, and `Basic CREDENTIALS` likewise.
fn bearer_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((at, scheme)) = ["Bearer ", "Basic "]
        .iter()
        .filter_map(|scheme| rest.find(scheme).map(|at| (at, scheme)))
        .min()
    {
        let (head, tail) = rest.split_at(at + scheme.len());
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        if end > 0 {
            out.push_str(MASK);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_masked_wherever_they_appear() {
        assert_eq!(
            secrets("cannot open postgres://orch:s3cr3t@db:5432/orch: refused"),
            "cannot open postgres://orch:***@db:5432/orch: refused"
        );
        assert_eq!(
            secrets("a https://u:p@h/x and s3://k:v@bucket/p"),
            "a https://u:***@h/x and s3://k:***@bucket/p"
        );
        // A password holding `@` or `:` is masked whole.
        assert_eq!(
            secrets("postgres://orch:p@ss:w0rd@db/orch"),
            "postgres://orch:***@db/orch"
        );
    }

    #[test]
    fn secret_keys_and_bearer_tokens_are_masked() {
        assert_eq!(
            secrets("GET /x?user=a&password=hunter2&limit=5"),
            "GET /x?user=a&password=***&limit=5"
        );
        assert_eq!(
            secrets("AWS_SECRET_ACCESS_KEY=abc123 aws s3 ls"),
            "AWS_SECRET_ACCESS_KEY=*** aws s3 ls"
        );
        assert_eq!(
            secrets(r#"{"client_secret": "xyz", "token":"t0k"}"#),
            r#"{"client_secret": "***", "token":"***"}"#
        );
        assert_eq!(
            secrets("curl -H 'Authorization: Bearer eyJhbGciOi.x.y' https://api"),
            "curl -H 'Authorization: Bearer ***' https://api"
        );
        assert_eq!(
            secrets("Authorization: Basic dXNlcjpwYXNz"),
            "Authorization: Basic ***"
        );
        // As a shell-quoted template writes it.
        assert_eq!(
            secrets("PGPASSWORD='hunter 2' psql"),
            "PGPASSWORD='***' psql"
        );
        assert_eq!(
            secrets("PGPASSWORD='hunter2' psql"),
            "PGPASSWORD='***' psql"
        );
        assert_eq!(
            secrets("sqlite:///tmp/orch.db?mode=rwc"),
            "sqlite:///tmp/orch.db?mode=rwc"
        );
    }

    #[test]
    fn text_without_secrets_is_left_alone() {
        for text in [
            "echo hello 2026-11-22",
            "trades_btcusdt: 1000 rows",
            "key=value symbol=BTCUSDT",
            "https://api.binance.com/api/v3/historicalTrades?symbol=BTCUSDT&fromId=1",
        ] {
            assert!(matches!(secrets(text), Cow::Borrowed(_)), "{text}");
        }
        assert_eq!(secrets("password=***"), "password=***", "masked once");
    }
}
