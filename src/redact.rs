//! Secrets never reach a log, an error, a metric label or a state table (DESIGN.md
//! invariant 8): every URL shown anywhere goes through [`redact_url`] first.

/// Query parameters that never carry a secret, kept readable in a redacted URL.
const PLAIN_PARAMS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "connect_timeout",
    "application_name",
    "target_session_attrs",
    "schema",
];

/// A URL as it may be shown anywhere: logs, errors, metric labels, state tables, command
/// output. The one function that redacts URLs, for the database and the revalidation
/// endpoints alike, so there is one rule to review:
///
/// - userinfo: a Postgres URL keeps its user name (a role name, which Postgres itself shows
///   everywhere) and its password becomes `***`; any other URL's whole userinfo becomes
///   `***`, because over HTTP a lone user name is often a token;
/// - query: every value becomes `***` except those of [`PLAIN_PARAMS`];
/// - fragment (not Postgres URLs, which have none): dropped.
///
/// A Postgres URL is read the way the worker's connections read it ([`PostgresUrl`]): the
/// userinfo runs to the first `@`, whatever comes before it, so a password with `/`, `?`
/// or `#` in it (`postgresql://app:pa/ss@db/shop` connects) is hidden whole.
///
/// Applying it twice gives the same string, so a redacted URL can serve as a stable key.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".into();
    };
    if let Some(pg) = PostgresUrl::split(url) {
        let authority = match pg.userinfo {
            // A raw `@` in the password: where it ends is anyone's guess, so nothing of
            // the userinfo is shown (the parser refuses such a URL).
            Some(_) if pg.ambiguous => "***@".to_string(),
            Some(userinfo) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@"),
                None => format!("{userinfo}@"),
            },
            None => String::new(),
        };
        let query = pg.query.map(|q| format!("?{}", redact_query(q)));
        return format!(
            "{scheme}://{authority}{}{}",
            pg.host_path,
            query.unwrap_or_default()
        );
    }
    if rest.contains('@') && reqwest::Url::parse(url).is_err() {
        // Not a valid URL, so no rule says where its userinfo ends (a password with a
        // `/`, `?` or `#` in it breaks the URL): show nothing after the scheme.
        return format!("{scheme}://***");
    }
    let rest = rest.split('#').next().unwrap_or_default();
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    format!("{scheme}://{authority}{}", redact_path_query(tail))
}

/// A path with its query string's values replaced by `***`, except those of
/// [`PLAIN_PARAMS`].
fn redact_path_query(path_and_query: &str) -> String {
    match path_and_query.split_once('?') {
        Some((path, q)) => format!("{path}?{}", redact_query(q)),
        None => path_and_query.to_string(),
    }
}

/// The most characters of an endpoint's answer (or a delivery error) that are kept: in
/// logs, in `outbox_failed.response` and in command output. Enough for a status line and
/// the start of an error page; an endpoint that answers with a whole HTML page or a
/// stack trace does not fill the state table.
pub const ANSWER_MAX_CHARS: usize = 500;

/// An endpoint's answer (or an error about it) as it may be stored and shown: every URL
/// in it through [`redact_url`], every query string in it (`/api/revalidate?token=...`)
/// with its values replaced, every one of `secrets` (the shared secret) replaced by
/// `***`, control characters as spaces, and at most [`ANSWER_MAX_CHARS`] characters,
/// saying how many more there were. Redacted before it is cut, so a cut never leaves
/// half a URL to escape the rules.
pub fn redact_answer(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_string();
    for secret in secrets {
        // A secret of a few characters would blank unrelated words; such a secret is no
        // secret anyway.
        if secret.len() >= 4 {
            text = text.replace(secret, "***");
        }
    }
    let mut out = String::with_capacity(text.len().min(4 * ANSWER_MAX_CHARS));
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains("://") {
            // Keep what precedes the scheme (`url=`, `(`) as it is.
            let at = word.find("://").unwrap_or_default();
            let start = word[..at]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
                .map_or(0, |i| i + 1);
            out.push_str(&word[..start]);
            out.push_str(&redact_url(&word[start..]));
        } else if word.contains('?') {
            out.push_str(&redact_path_query(word));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() || "\"'<>`".contains(c) {
            flush(&mut word, &mut out);
            out.push(if c.is_control() && c != ' ' { ' ' } else { c });
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    let total = out.chars().count();
    if total <= ANSWER_MAX_CHARS {
        return out;
    }
    // The note counts into the limit; its length depends on the count only slightly.
    let keep = ANSWER_MAX_CHARS - format!("... ({total} more characters)").len();
    let mut cut: String = out.chars().take(keep).collect();
    cut.push_str(&format!("... ({} more characters)", total - keep));
    cut
}

/// A query string with every value but those of [`PLAIN_PARAMS`] as `***`.
fn redact_query(q: &str) -> String {
    q.split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if PLAIN_PARAMS.contains(&k) => p.to_string(),
            Some((k, _)) => format!("{k}=***"),
            None if p.is_empty() => String::new(),
            // A bare `?token` is as secret as a value.
            None => "***".to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The parts of a `postgres://` or `postgresql://` URL, split the way tokio-postgres (the
/// worker's query connections) reads one: the userinfo is everything before the first
/// `@` (a password may hold `/`, `?` and `#`, which a WHATWG URL parser would take for
/// the end of the authority), then the host and path up to the first `?`, then the query.
/// `pg::connect` parses with this split and redaction shows with it, so what is hidden
/// is exactly what is sent as the password.
#[derive(Debug, PartialEq, Eq)]
pub struct PostgresUrl<'a> {
    /// `postgres` or `postgresql`, as written.
    pub scheme: &'a str,
    /// `user[:password]`, still percent-encoded.
    pub userinfo: Option<&'a str>,
    /// Another `@` follows the first one before the query: a raw `@` in the user name or
    /// password (the userinfo then runs to the last one, so nothing of it is shown), which
    /// has to be written `%40` for the URL to mean what it says.
    pub ambiguous: bool,
    /// `host[:port][/database]`.
    pub host_path: &'a str,
    /// What follows the first `?` after the userinfo.
    pub query: Option<&'a str>,
}

impl<'a> PostgresUrl<'a> {
    /// `None` when `url` is not a Postgres URL.
    pub fn split(url: &'a str) -> Option<PostgresUrl<'a>> {
        let (scheme, rest) = url.split_once("://")?;
        if !matches!(
            scheme.to_ascii_lowercase().as_str(),
            "postgres" | "postgresql"
        ) {
            return None;
        }
        let (mut userinfo, mut after) = match rest.split_once('@') {
            Some((u, a)) => (Some(u), a),
            None => (None, rest),
        };
        let mut ambiguous = false;
        if userinfo.is_some() {
            let before_query = after.split('?').next().unwrap_or_default();
            if let Some(i) = before_query.rfind('@') {
                ambiguous = true;
                let end = rest.len() - after.len() + i;
                userinfo = Some(&rest[..end]);
                after = &rest[end + 1..];
            }
        }
        let (host_path, query) = match after.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (after, None),
        };
        Some(PostgresUrl {
            scheme,
            userinfo,
            ambiguous,
            host_path,
            query,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_everywhere() {
        assert_eq!(
            redact_url("postgresql://a:b@h:1/d?password=x&sslmode=require"),
            "postgresql://a:***@h:1/d?password=***&sslmode=require"
        );
        assert_eq!(redact_url("postgres://h/d"), "postgres://h/d");
    }

    /// Issue 18: `postgresql://app:pa/ss@db/shop` connects (the userinfo runs to the first
    /// `@`), and was shown whole; with `?` or `#` the part before it was shown.
    #[test]
    fn a_password_with_url_delimiters_is_hidden_whole() {
        for c in ['/', '?', '#', ':', '%', '&', '='] {
            let url = format!("postgresql://app:Zq{c}Xv9@db:5432/shop?sslmode=require");
            let shown = redact_url(&url);
            assert_eq!(
                shown, "postgresql://app:***@db:5432/shop?sslmode=require",
                "{c:?}"
            );
            assert_eq!(redact_url(&shown), shown, "stable for {c:?}");
            // Without a query, and with a secret query value after it.
            let shown = redact_url(&format!("postgres://app:Zq{c}Xv9@db/shop"));
            assert_eq!(shown, "postgres://app:***@db/shop", "{c:?}");
            let shown = redact_url(&format!(
                "postgres://app:Zq{c}Xv9@db/shop?password=Zq{c}Xv9"
            ));
            assert!(
                !shown.contains("Zq") && !shown.contains("Xv9"),
                "{c:?}: {shown}"
            );
        }
        // A raw `@` in the password: nothing of the userinfo is shown.
        let shown = redact_url("postgresql://app:Zq@Xv9@db/shop");
        assert_eq!(shown, "postgresql://***@db/shop");
        // An `@` in a query value is not taken for the end of a userinfo.
        assert_eq!(
            redact_url("postgresql://app:pw@db/shop?application_name=a@b"),
            "postgresql://app:***@db/shop?application_name=a@b"
        );
    }

    #[test]
    fn splits_postgres_urls_as_tokio_postgres_does() {
        let p =
            PostgresUrl::split("postgresql://app:pa/s?s#@db:5/shop?sslmode=require&a=b").unwrap();
        assert_eq!(
            (p.userinfo, p.ambiguous, p.host_path, p.query),
            (
                Some("app:pa/s?s#"),
                false,
                "db:5/shop",
                Some("sslmode=require&a=b")
            )
        );
        let p = PostgresUrl::split("postgres://db/shop?x=1").unwrap();
        assert_eq!(
            (p.userinfo, p.host_path, p.query),
            (None, "db/shop", Some("x=1"))
        );
        let p = PostgresUrl::split("postgres://u:p@ss/x@db/shop?y=a@b").unwrap();
        assert_eq!(
            (p.userinfo, p.ambiguous, p.host_path),
            (Some("u:p@ss/x"), true, "db/shop")
        );
        assert!(PostgresUrl::split("http://u:p@h/").is_none());
    }

    #[test]
    fn an_endpoint_that_is_no_url_shows_no_userinfo() {
        // A `#` or `/` in an HTTP password breaks the URL; its error shows nothing of it.
        for c in ['/', '?', '#'] {
            let shown = redact_url(&format!("http://user:Zq{c}Xv9@shop/api/revalidate"));
            assert!(
                !shown.contains("Zq") && !shown.contains("Xv9"),
                "{c:?}: {shown}"
            );
        }
    }

    #[test]
    fn redacts_userinfo_query_and_fragment_of_endpoints() {
        let shown =
            redact_url("http://user:s3cretpass@127.0.0.1:9/api/revalidate?token=t0psecret&x#frag");
        assert_eq!(shown, "http://***@127.0.0.1:9/api/revalidate?token=***&***");
        // A lone HTTP user name is often a token.
        assert_eq!(redact_url("https://ghp_abc@h/r"), "https://***@h/r");
        assert_eq!(
            redact_url("https://h/api/revalidate"),
            "https://h/api/revalidate"
        );
        // Stable: redacting a redacted URL changes nothing (it is used as a key).
        assert_eq!(redact_url(&shown), shown);
    }

    #[test]
    fn answers_are_redacted_then_capped() {
        let answer =
            "<h1>Error</h1> upstream http://admin:hunter2@internal:8080/x?token=t0psecret \
                      failed; Cannot POST /api/revalidate?token=abc&sslmode=require\r\n\
                      signed with s3cret-value (\"url\":\"https://k3y@h/r\")";
        let shown = redact_answer(answer, &["s3cret-value", ""]);
        for leak in ["hunter2", "t0psecret", "abc", "s3cret-value", "k3y"] {
            assert!(!shown.contains(leak), "{leak} in {shown}");
        }
        assert!(
            shown.contains("http://***@internal:8080/x?token=***"),
            "{shown}"
        );
        assert!(
            shown.contains("/api/revalidate?token=***&sslmode=require"),
            "{shown}"
        );
        assert!(shown.contains("(\"url\":\"https://***@h/r\")"), "{shown}");
        assert!(!shown.contains('\r') && !shown.contains('\n'), "{shown}");

        let long = format!("{} http://u:pw@h/ {}", "x".repeat(460), "y".repeat(10_000));
        let shown = redact_answer(&long, &[]);
        assert!(shown.starts_with(&"x".repeat(460)), "{shown}");
        assert!(!shown.contains("pw"), "{shown}");
        assert!(shown.ends_with("more characters)"), "{shown}");
        assert!(shown.chars().count() <= ANSWER_MAX_CHARS, "{}", shown.len());
        // Short answers stay as they are.
        assert_eq!(
            redact_answer("Unauthorized", &["topsecret"]),
            "Unauthorized"
        );
    }
}
