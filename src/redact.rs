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
/// - fragment: dropped.
///
/// Applying it twice gives the same string, so a redacted URL can serve as a stable key.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".into();
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let postgres = matches!(
        scheme.to_ascii_lowercase().as_str(),
        "postgres" | "postgresql"
    );
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) if postgres => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{user}:***@{host}")
            } else {
                format!("{user}@{host}")
            }
        }
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    format!("{scheme}://{authority}{}", redact_query(tail))
}

/// A path with its query string's values replaced by `***`, except those of
/// [`PLAIN_PARAMS`].
fn redact_query(path_and_query: &str) -> String {
    match path_and_query.split_once('?') {
        Some((path, q)) => {
            let q: Vec<String> = q
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if PLAIN_PARAMS.contains(&k) => p.to_string(),
                    Some((k, _)) => format!("{k}=***"),
                    None if p.is_empty() => String::new(),
                    // A bare `?token` is as secret as a value.
                    None => "***".to_string(),
                })
                .collect();
            format!("{path}?{}", q.join("&"))
        }
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
            out.push_str(&redact_query(word));
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
