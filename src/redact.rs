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
    let tail = match tail.split_once('?') {
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
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
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
}
