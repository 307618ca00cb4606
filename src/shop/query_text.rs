//! The summary query as text: a small scanner that knows where SQL's literals, quoted
//! identifiers, comments and parameters are, so the query can be normalized for its
//! fingerprint ([`normalize`]) and its `$n` parameters replaced for a dependency check
//! ([`bind_params`]) without touching what is inside a string.
//!
//! Only what Postgres's lexer does to these pieces matters here: `'...'` (with `''`, and
//! backslash escapes after `E`), `"..."`, dollar quotes `$tag$...$tag$`, `--` and nested
//! `/* */` comments, and `$n` parameters (a `$` that does not continue an identifier).

/// What a piece of the query text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Code outside every quote and comment (keywords, names, operators), one character.
    Code,
    /// Whitespace or a comment: both only separate tokens.
    Space,
    /// A string literal, quoted identifier or dollar-quoted string.
    Quoted,
    /// `$n`.
    Param,
}

/// One piece: its kind and its byte range in the text.
type Piece = (Kind, std::ops::Range<usize>);

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// Where the quote or comment starting at `i` ends (exclusive). An unterminated one runs
/// to the end of the text (Postgres refuses such a query before it gets here).
fn quoted_end(sql: &str, i: usize, escapes: bool) -> usize {
    let b = sql.as_bytes();
    let close = b[i];
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' if escapes => j += 2,
            c if c == close && b.get(j + 1) == Some(&close) => j += 2,
            c if c == close => return j + 1,
            _ => j += 1,
        }
    }
    b.len()
}

fn comment_end(sql: &str, i: usize) -> usize {
    let (mut depth, mut j) = (0usize, i);
    while j < sql.len() {
        if sql[j..].starts_with("/*") {
            depth += 1;
            j += 2;
        } else if sql[j..].starts_with("*/") {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return j;
            }
        } else {
            j += 1;
        }
    }
    sql.len()
}

/// Splits `sql` into pieces, in order, covering the whole text.
fn scan(sql: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < sql.len() {
        let rest = &sql[i..];
        let c = rest.chars().next().expect("i is on a char boundary");
        let before = sql[..i].chars().next_back();
        let (kind, end) = if rest.starts_with("--") {
            (Kind::Space, rest.find('\n').map_or(sql.len(), |n| i + n))
        } else if rest.starts_with("/*") {
            (Kind::Space, comment_end(sql, i))
        } else if c == '\'' {
            // An E'...' string takes backslash escapes (E itself not part of a name).
            let escapes = matches!(before, Some('e' | 'E'))
                && !sql[..i - 1].chars().next_back().is_some_and(is_ident_char);
            (Kind::Quoted, quoted_end(sql, i, escapes))
        } else if c == '"' {
            (Kind::Quoted, quoted_end(sql, i, false))
        } else if c == '$' && !before.is_some_and(is_ident_char) {
            let digits = rest[1..].bytes().take_while(u8::is_ascii_digit).count();
            let tag_len = rest[1..]
                .find(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
                .unwrap_or(rest.len() - 1);
            if digits > 0 {
                (Kind::Param, i + 1 + digits)
            } else if rest[1 + tag_len..].starts_with('$') {
                // $tag$ ... $tag$ (the tag may be empty: $$ ... $$).
                let tag = &rest[..tag_len + 2];
                let body = i + tag.len();
                let end = sql[body..]
                    .find(tag)
                    .map_or(sql.len(), |n| body + n + tag.len());
                (Kind::Quoted, end)
            } else {
                (Kind::Code, i + 1)
            }
        } else if c.is_whitespace() {
            (Kind::Space, i + c.len_utf8())
        } else {
            (Kind::Code, i + c.len_utf8())
        };
        out.push((kind, i..end));
        i = end;
    }
    out
}

/// The query as its fingerprint sees it: comments dropped, whitespace runs one space (none
/// next to `(`, `)` and `,`), code outside quotes lowercased (Postgres folds unquoted
/// names and keywords), trailing `;` dropped. Literals and quoted names stay as written,
/// so two texts that differ only in layout, comments or case give the same string, and
/// any difference Postgres would see gives another.
pub fn normalize(sql: &str) -> String {
    let tight = |c: char| matches!(c, '(' | ')' | ',');
    let mut out = String::with_capacity(sql.len());
    let mut space = false;
    for (kind, range) in scan(sql) {
        let text = &sql[range];
        if kind == Kind::Space {
            space = true;
            continue;
        }
        let first = text.chars().next().unwrap_or(' ');
        let tight_here = kind == Kind::Code && tight(first);
        if space && !out.is_empty() && !tight_here && !out.ends_with(tight) {
            out.push(' ');
        }
        space = false;
        match kind {
            Kind::Code => out.push_str(&text.to_lowercase()),
            _ => out.push_str(text),
        }
    }
    while out.ends_with(';') || out.ends_with(' ') {
        out.pop();
    }
    out
}

/// The query as the worker's statements embed it (`FROM (<query>) s`): up to its last
/// token, without a final `;` and what follows it in a file. A `;` there would end the
/// statement, and a line comment at the end (`... = $1 -- USD only`) would comment out
/// the rest of it. A `;` between two statements stays (Postgres then refuses the query).
pub fn embeddable(sql: &str) -> &str {
    let mut end = 0;
    for (kind, range) in scan(sql) {
        match kind {
            Kind::Space => {}
            Kind::Code if &sql[range.clone()] == ";" => {}
            _ => end = range.end,
        }
    }
    &sql[..end]
}

/// `sql` with every parameter `$n` replaced by `value(n)`; everything else verbatim.
pub fn bind_params(sql: &str, value: impl Fn(u32) -> String) -> String {
    let mut out = String::with_capacity(sql.len());
    for (kind, range) in scan(sql) {
        let text = &sql[range];
        match kind {
            Kind::Param => out.push_str(&value(text[1..].parse().unwrap_or(u32::MAX))),
            _ => out.push_str(text),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_comments_and_case_do_not_matter() {
        let a = "SELECT p.id AS product_id,\n  upper(p.title) AS title -- shown\nFROM \"Product\" p\nWHERE p.currency = $1;\n";
        let b = "select p.id as product_id, UPPER( p.title ) as title /* a /* nested */ one */ from \"Product\" p where p.currency = $1";
        assert_eq!(normalize(a), normalize(b));
        assert_eq!(
            normalize(a),
            "select p.id as product_id,upper(p.title)as title from \"Product\" p where p.currency = $1"
        );
    }

    #[test]
    fn literals_and_quoted_names_keep_their_text() {
        let base = normalize("SELECT 'a  b' AS t FROM \"Product\"");
        assert_ne!(base, normalize("SELECT 'a b' AS t FROM \"Product\""));
        assert_ne!(base, normalize("SELECT 'A  B' AS t FROM \"Product\""));
        assert_ne!(base, normalize("SELECT 'a  b' AS t FROM \"product\""));
        // A comment marker inside a literal is part of the literal.
        assert_eq!(
            normalize("SELECT '-- not a comment' AS t"),
            "select '-- not a comment' as t"
        );
        assert_eq!(normalize("SELECT $x$ A  B $x$"), "select $x$ A  B $x$");
        assert_eq!(
            normalize("SELECT E'it\\'s  ' AS t"),
            "select e'it\\'s  ' as t"
        );
        assert_eq!(normalize("SELECT 'it''s  x'"), "select 'it''s  x'");
    }

    #[test]
    fn an_expression_change_changes_the_text() {
        assert_ne!(
            normalize("SELECT amount AS price FROM \"Price\""),
            normalize("SELECT amount * 2 AS price FROM \"Price\"")
        );
    }

    #[test]
    fn embeddable_ends_at_the_last_token() {
        assert_eq!(embeddable("SELECT 1;\n-- the end\n"), "SELECT 1");
        assert_eq!(embeddable("SELECT 1 -- USD only"), "SELECT 1");
        assert_eq!(embeddable("SELECT 1 /* a */ ; ;\n"), "SELECT 1");
        assert_eq!(embeddable("SELECT ';' AS s;"), "SELECT ';' AS s");
        assert_eq!(embeddable("SELECT 1; SELECT 2;"), "SELECT 1; SELECT 2");
        assert_eq!(embeddable("SELECT $1\n"), "SELECT $1");
    }

    #[test]
    fn params_are_bound_outside_literals_only() {
        let sql = "SELECT '$1' AS a, $1 AS b, x$1 AS c, $$ $1 $$ AS d, $12 AS e -- $1\nFROM t";
        assert_eq!(
            bind_params(sql, |n| format!("(NULL::text /* {n} */)")),
            "SELECT '$1' AS a, (NULL::text /* 1 */) AS b, x$1 AS c, $$ $1 $$ AS d, (NULL::text /* 12 */) AS e -- $1\nFROM t"
        );
        assert_eq!(
            bind_params("WHERE c = $1", |_| "'USD'".into()),
            "WHERE c = 'USD'"
        );
    }

    #[test]
    fn the_shipped_queries_normalize_and_bind() {
        for q in [
            include_str!("../../sql/summary_query.sql"),
            include_str!("../../config/examples/snake_case/summary_query.sql"),
            include_str!("../../config/examples/prisma/summary_query.sql"),
        ] {
            let n = normalize(q);
            assert!(n.starts_with("select") || n.starts_with("with"), "{n}");
            assert!(!n.contains("--"), "{n}");
            // Comments keep their text; the code has no parameter left.
            let bound = normalize(&bind_params(q, |_| "(NULL::text)".into()));
            assert!(
                !bound.contains("$1") && bound.contains("(null::text)"),
                "{bound}"
            );
        }
    }
}
