//! Quiver's SQL extensions on top of DataFusion's dialect, rewritten before planning.
//!
//! - Delta time travel, as in Spark/Databricks: `t VERSION AS OF 3`, `t TIMESTAMP AS OF '2026-01-01'`.
//!   The table name becomes `"t@v3"` / `"t@t<RFC 3339>"`, which the catalog resolves to that snapshot.
//! - `CREATE TABLE ... [USING DELTA] PARTITIONED BY (col, ...)` as in Spark: the partition columns are
//!   taken out and returned; the rest is ordinary DataFusion `CREATE TABLE`.
//! - `?` placeholders (ADBC's DB-API paramstyle) become `$1, $2, ...` in the AST.
//!
//! The first two work on sqlparser tokens (never on raw text, so string literals and comments are
//! safe); the third on the parsed statement.

use std::ops::ControlFlow;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, Statement, TableFactor, Value, VisitMut, VisitorMut,
    visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Word};

use crate::error::{Error, Result};
use crate::storage::catalog::AS_OF_SEPARATOR;

/// The SQL text after the token rewrites, and what they took out of it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rewritten {
    pub sql: String,
    pub partition_by: Vec<String>,
}

pub fn rewrite_extensions(sql: &str) -> Result<Rewritten> {
    let upper = sql.to_ascii_uppercase();
    if !(upper.contains(" OF") || upper.contains("PARTITIONED") || upper.contains("USING")) {
        return Ok(Rewritten {
            sql: sql.to_string(),
            partition_by: Vec::new(),
        });
    }
    // Tokens keep their raw text (quotes still doubled), so joining them back gives the same SQL.
    let mut tokens = Tokenizer::new(&GenericDialect {}, sql)
        .with_unescape(false)
        .tokenize()
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    rewrite_time_travel(&mut tokens)?;
    let partition_by = if is_create_table(&tokens) {
        take_delta_clauses(&mut tokens)?
    } else {
        Vec::new()
    };
    Ok(Rewritten {
        sql: tokens.iter().map(ToString::to_string).collect(),
        partition_by,
    })
}

/// Numbers `?` placeholders as `$1, $2, ...` in order of appearance. Mixing both styles is an error.
pub fn number_placeholders(statement: &mut Statement) -> Result<()> {
    let mut next = 0usize;
    let mut numbered = false;
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Value(v) = expr
            && let Value::Placeholder(p) = &mut v.value
        {
            if p == "?" {
                next += 1;
                *p = format!("${next}");
            } else {
                numbered = true;
            }
        }
        ControlFlow::<()>::Continue(())
    });
    if next > 0 && numbered {
        return Err(Error::InvalidInput(
            "mix of '?' and '$n' placeholders in one statement: use one style".into(),
        ));
    }
    Ok(())
}

/// Replaces the `$n` placeholders in table-function arguments (`FROM recommend('m', $1, 10)`) with
/// their bound values. A table function is called while the statement is planned, before
/// DataFusion's own binding, so its arguments must be literals by then.
pub fn bind_table_function_args(statement: &mut Statement, values: &[ScalarValue]) -> Result<()> {
    let mut failed = None;
    let _ = visit_table_factors_mut(statement, |factor| {
        let args: Vec<&mut FunctionArg> = match factor {
            TableFactor::Table {
                args: Some(args), ..
            } => args.args.iter_mut().collect(),
            TableFactor::Function { args, .. } => args.iter_mut().collect(),
            _ => return ControlFlow::Continue(()),
        };
        for arg in args {
            let expr = match arg {
                FunctionArg::Named { arg, .. }
                | FunctionArg::ExprNamed { arg, .. }
                | FunctionArg::Unnamed(arg) => arg,
            };
            let FunctionArgExpr::Expr(expr) = expr else {
                continue;
            };
            let _ = visit_expressions_mut(expr, |e| {
                if let Expr::Value(v) = e
                    && let Value::Placeholder(p) = &v.value
                {
                    match placeholder_literal(p, values) {
                        Ok(literal) => *e = literal,
                        Err(err) => failed = Some(err),
                    }
                }
                ControlFlow::<()>::Continue(())
            });
        }
        ControlFlow::<()>::Continue(())
    });
    failed.map_or(Ok(()), Err)
}

/// Calls `f` on every table factor of the statement, subqueries included.
fn visit_table_factors_mut<F>(statement: &mut Statement, f: F) -> ControlFlow<()>
where
    F: FnMut(&mut TableFactor) -> ControlFlow<()>,
{
    struct Factors<F>(F);
    impl<F: FnMut(&mut TableFactor) -> ControlFlow<()>> VisitorMut for Factors<F> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
            (self.0)(factor)
        }
    }
    statement.visit(&mut Factors(f))
}

fn placeholder_literal(placeholder: &str, values: &[ScalarValue]) -> Result<Expr> {
    let value = crate::parameters::index(placeholder)
        .and_then(|i| values.get(i))
        .ok_or_else(|| {
            Error::InvalidInput(format!("no value bound for parameter {placeholder}"))
        })?;
    let sql = match value {
        v if v.is_null() => Value::Null,
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Value::SingleQuotedString(s.clone()),
        v if v.data_type().is_numeric() => Value::Number(v.to_string(), false),
        other => {
            return Err(Error::InvalidInput(format!(
                "parameter {placeholder} of a table function must be a number or a string, got {}",
                other.data_type()
            )));
        }
    };
    Ok(Expr::value(sql))
}

/// Indices of the non-whitespace tokens, so patterns can be matched across spaces and comments.
fn significant(tokens: &[Token]) -> Vec<usize> {
    (0..tokens.len())
        .filter(|&i| !matches!(tokens[i], Token::Whitespace(_)))
        .collect()
}

fn is_keyword(token: &Token, keyword: Keyword) -> bool {
    matches!(token, Token::Word(w) if w.keyword == keyword && w.quote_style.is_none())
}

fn rewrite_time_travel(tokens: &mut Vec<Token>) -> Result<()> {
    loop {
        let sig = significant(tokens);
        let found = sig.windows(5).find_map(|w| {
            let [name, kind, as_, of, value] = [w[0], w[1], w[2], w[3], w[4]];
            let is_name = matches!(&tokens[name], Token::Word(w) if w.keyword == Keyword::NoKeyword || w.quote_style.is_some());
            let is_kind = is_keyword(&tokens[kind], Keyword::VERSION) || is_keyword(&tokens[kind], Keyword::TIMESTAMP);
            (is_name && is_kind && is_keyword(&tokens[as_], Keyword::AS) && is_keyword(&tokens[of], Keyword::OF))
                .then_some((name, kind, value))
        });
        let Some((name, kind, value)) = found else {
            return Ok(());
        };
        // `FROM t AS x VERSION AS OF 3` would put the version on the alias: the clause goes right
        // after the table name, as in Spark (`FROM t VERSION AS OF 3 AS x`).
        let previous = sig.iter().rev().find(|&&i| i < name).map(|&i| &tokens[i]);
        let after_alias = matches!(previous, Some(Token::Word(w)) if w.keyword == Keyword::AS || w.keyword == Keyword::NoKeyword || w.quote_style.is_some());
        if after_alias {
            return Err(Error::InvalidInput(format!(
                "put {} AS OF right after the table name, before any alias: FROM t {} AS OF ... AS alias",
                tokens[kind], tokens[kind]
            )));
        }
        let suffix = if is_keyword(&tokens[kind], Keyword::VERSION) {
            match &tokens[value] {
                Token::Number(n, _) if n.parse::<u64>().is_ok() => format!("v{n}"),
                other => {
                    return Err(Error::InvalidInput(format!(
                        "VERSION AS OF needs a table version number, got '{other}'"
                    )));
                }
            }
        } else {
            match &tokens[value] {
                Token::SingleQuotedString(s) => format!("t{}", parse_timestamp(s)?.to_rfc3339()),
                other => {
                    return Err(Error::InvalidInput(format!(
                        "TIMESTAMP AS OF needs a quoted timestamp such as '2026-01-01 12:00:00', got '{other}'"
                    )));
                }
            }
        };
        let Token::Word(word) = &tokens[name] else {
            return Ok(());
        };
        tokens[name] = Token::Word(Word {
            value: format!("{}{AS_OF_SEPARATOR}{suffix}", word.value),
            quote_style: Some('"'),
            keyword: Keyword::NoKeyword,
        });
        tokens.drain(name + 1..=value);
    }
}

/// Accepts RFC 3339, `YYYY-MM-DD HH:MM:SS[.f]` (UTC) and `YYYY-MM-DD` (midnight UTC).
pub(crate) fn parse_timestamp(s: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc());
    }
    Err(Error::InvalidInput(format!(
        "cannot read '{s}' as a timestamp: use RFC 3339 or 'YYYY-MM-DD[ HH:MM:SS]' (UTC)"
    )))
}

fn is_create_table(tokens: &[Token]) -> bool {
    let sig = significant(tokens);
    let words: Vec<&Token> = sig.iter().take(4).map(|&i| &tokens[i]).collect();
    let create = words
        .first()
        .is_some_and(|t| is_keyword(t, Keyword::CREATE));
    create
        && words
            .iter()
            .skip(1)
            .take(3)
            .any(|t| is_keyword(t, Keyword::TABLE))
}

/// Removes `USING DELTA` and a Spark-style `PARTITIONED BY (a, b)` (names only) at the top level of a
/// CREATE TABLE; returns the partition columns.
fn take_delta_clauses(tokens: &mut Vec<Token>) -> Result<Vec<String>> {
    let sig = significant(tokens);
    let mut depth = 0i32;
    let mut using: Option<(usize, usize)> = None;
    let mut partitioned: Option<(usize, usize, Vec<String>)> = None;
    for (pos, &i) in sig.iter().enumerate() {
        match &tokens[i] {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        if depth != 0 {
            continue;
        }
        let next = |k: usize| sig.get(pos + k).map(|&j| &tokens[j]);
        if is_keyword(&tokens[i], Keyword::USING) {
            match next(1) {
                Some(Token::Word(w)) if w.value.eq_ignore_ascii_case("delta") => {
                    using = Some((i, sig[pos + 1]))
                }
                // JOIN ... USING (col): not a storage clause.
                Some(Token::LParen) => {}
                Some(other) => {
                    return Err(Error::Unsupported(format!(
                        "CREATE TABLE ... USING {other}: warehouse tables are Delta tables (USING DELTA or nothing)"
                    )));
                }
                None => {}
            }
        }
        if is_keyword(&tokens[i], Keyword::PARTITIONED)
            && next(1).is_some_and(|t| is_keyword(t, Keyword::BY))
            && matches!(next(2), Some(Token::LParen))
        {
            let mut names = Vec::new();
            let mut k = 3;
            loop {
                match (next(k), next(k + 1)) {
                    (Some(Token::Word(w)), Some(Token::Comma)) => names.push(w.value.clone()),
                    (Some(Token::Word(w)), Some(Token::RParen)) => {
                        names.push(w.value.clone());
                        partitioned = Some((i, sig[pos + k + 1], names));
                        break;
                    }
                    // Hive's `PARTITIONED BY (col TYPE)` is left to the parser (and rejected there).
                    _ => break,
                }
                k += 2;
            }
        }
    }
    let mut partition_by = Vec::new();
    // Remove the later span first so the earlier indices stay valid.
    let mut spans: Vec<(usize, usize)> = using.into_iter().collect();
    if let Some((start, end, names)) = partitioned {
        spans.push((start, end));
        partition_by = names;
    }
    spans.sort_by_key(|span| std::cmp::Reverse(span.0));
    for (start, end) in spans {
        tokens.drain(start..=end);
    }
    Ok(partition_by)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::{DFParser, Statement as DFStatement};

    #[test]
    fn time_travel_becomes_suffixed_name() {
        let r = rewrite_extensions("SELECT * FROM s.t VERSION AS OF 3 WHERE x = 'VERSION AS OF 9'")
            .expect("ok");
        assert_eq!(
            r.sql,
            "SELECT * FROM s.\"t@v3\" WHERE x = 'VERSION AS OF 9'"
        );
        let r =
            rewrite_extensions("select * from t timestamp as of '2026-01-02' as x").expect("ok");
        assert_eq!(r.sql, "select * from \"t@t2026-01-02T00:00:00+00:00\" as x");
    }

    #[test]
    fn casts_are_not_time_travel() {
        let sql = "SELECT CAST(a AS TIMESTAMP) AS of_col FROM t";
        assert_eq!(rewrite_extensions(sql).expect("ok").sql, sql);
    }

    #[test]
    fn partitioned_by_names_is_taken_out() {
        let r = rewrite_extensions("CREATE TABLE e (a INT, d DATE) USING DELTA PARTITIONED BY (d)")
            .expect("ok");
        assert_eq!(r.partition_by, vec!["d"]);
        assert_eq!(r.sql.trim_end(), "CREATE TABLE e (a INT, d DATE)");
        let r = rewrite_extensions("CREATE TABLE e PARTITIONED BY (a, b) AS SELECT 1 AS a, 2 AS b")
            .expect("ok");
        assert_eq!(r.partition_by, vec!["a", "b"]);
    }

    #[test]
    fn question_marks_are_numbered() {
        let mut stmts = DFParser::parse_sql("SELECT ? + ?, x FROM t WHERE y = ?").expect("parse");
        let Some(DFStatement::Statement(stmt)) = stmts.pop_front() else {
            panic!("not a statement");
        };
        let mut stmt = *stmt;
        number_placeholders(&mut stmt).expect("number");
        assert_eq!(stmt.to_string(), "SELECT $1 + $2, x FROM t WHERE y = $3");
    }
}
