//! A feature view file: a header of `-- @directive value` comments, then one SQL query.
//!
//! ```sql
//! -- What users did in the last 1/7/30 days before their latest event.
//! -- @entity user_id
//! -- @event_time event_time
//! -- @ttl 30 days
//! -- @materialize offline, online
//! SELECT user_id, max(ts) AS event_time, ... FROM interactions GROUP BY user_id
//! ```
//!
//! The view is named after its file (`user_activity.sql` is `features.user_activity`). The file stays
//! plain SQL: any SQL tool can run the query, and the header is ordinary comments to them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::GenericDialect;

use crate::storage::warehouse::valid_name;

/// The schema materialized feature views live in.
pub const FEATURES_SCHEMA: &str = "features";

const DIRECTIVES: &str = "@entity, @event_time, @ttl, @materialize, @refresh";

/// A parsed feature view definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureView {
    pub name: String,
    /// The file it came from (for messages).
    pub path: PathBuf,
    /// Entity key columns of the query's output: one row per key.
    pub entity: Vec<String>,
    /// The output column with the time the row's features are as of.
    pub event_time: String,
    /// Rows whose event time is older than this are not served.
    pub ttl: Option<Duration>,
    pub offline: bool,
    pub online: bool,
    /// `@refresh full`: recompute everything whenever a source changed (for views where one entity's row depends on
    /// other entities' rows, e.g. a rank over all items).
    pub full_refresh: bool,
    /// The query, from the first line after the header to the end of the file.
    pub sql: String,
    /// 1-based line of the file where `sql` starts.
    pub sql_line: usize,
}

/// Why a file is not a valid feature view: `path:line: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", path.display())]
pub struct DefinitionError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

impl FeatureView {
    /// Parses the text of `path`. The view's name is the file stem.
    pub fn parse(path: &Path, text: &str) -> Result<Self, DefinitionError> {
        let error = |line: usize, message: String| DefinitionError {
            path: path.to_path_buf(),
            line,
            message,
        };
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if !valid_name(&name) {
            return Err(error(
                1,
                format!(
                    "'{name}' is not a valid view name: name the file like a table (letters, digits, _)"
                ),
            ));
        }

        let mut entity: Option<Vec<String>> = None;
        let mut event_time = None;
        let mut ttl = None;
        let mut materialize = None;
        let mut refresh = None;
        let mut sql_line = None;
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let trimmed = line.trim();
            let Some(comment) = trimmed.strip_prefix("--") else {
                if trimmed.is_empty() {
                    continue;
                }
                sql_line = Some(number);
                break;
            };
            let Some(directive) = comment.trim().strip_prefix('@') else {
                continue;
            };
            let (key, value) = directive
                .split_once(char::is_whitespace)
                .map_or((directive, ""), |(k, v)| (k, v.trim()));
            if value.is_empty() {
                return Err(error(number, format!("@{key} needs a value")));
            }
            let duplicate = match key {
                "entity" => entity.replace(columns(value)).is_some(),
                "event_time" => event_time.replace(value.to_string()).is_some(),
                "ttl" => {
                    let parsed = humantime::parse_duration(value).map_err(|e| {
                        error(
                            number,
                            format!(
                                "@ttl '{value}' is not a duration like '30 days' or '12h': {e}"
                            ),
                        )
                    })?;
                    ttl.replace(parsed).is_some()
                }
                "materialize" => {
                    let parsed = parse_materialize(value).map_err(|m| error(number, m))?;
                    materialize.replace(parsed).is_some()
                }
                "refresh" => {
                    let full = match value.to_ascii_lowercase().as_str() {
                        "full" => true,
                        "incremental" => false,
                        other => {
                            return Err(error(
                                number,
                                format!("@refresh takes 'incremental' or 'full', got '{other}'"),
                            ));
                        }
                    };
                    refresh.replace(full).is_some()
                }
                other => {
                    return Err(error(
                        number,
                        format!("unknown directive @{other} (expected one of {DIRECTIVES})"),
                    ));
                }
            };
            if duplicate {
                return Err(error(number, format!("@{key} is given twice")));
            }
        }

        let Some(sql_line) = sql_line else {
            return Err(error(1, "no SQL query after the header".into()));
        };
        let Some(entity) = entity.filter(|e| !e.is_empty()) else {
            return Err(error(
                1,
                "missing '-- @entity <column>[, <column>...]': a view needs its entity key".into(),
            ));
        };
        let Some(event_time) = event_time else {
            return Err(error(
                1,
                "missing '-- @event_time <column>': a view needs the time its features are as of"
                    .into(),
            ));
        };
        let (offline, online) = materialize.unwrap_or((true, false));
        let sql = text
            .lines()
            .skip(sql_line - 1)
            .collect::<Vec<_>>()
            .join("\n");
        check_query(&sql).map_err(|(line, message)| error(sql_line + line - 1, message))?;
        Ok(Self {
            name,
            path: path.to_path_buf(),
            entity,
            event_time,
            ttl,
            offline,
            online,
            full_refresh: refresh.unwrap_or(false),
            sql,
            sql_line,
        })
    }

    /// A stable fingerprint of what the view computes: a change to it makes the next refresh a full
    /// one. MurmurHash3 (32-bit, seed 0) of the definition, the same on every platform and release.
    pub fn fingerprint(&self) -> i64 {
        let definition = format!(
            "{}\n{}\n{}\n{}",
            self.entity.join(","),
            self.event_time,
            self.ttl.map(|t| t.as_secs()).unwrap_or_default(),
            self.sql
        );
        quiver_udfs::feature_hash::murmur3(definition.as_bytes())
            .map(i64::from)
            .unwrap_or_default()
    }
}

fn columns(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect()
}

/// `offline`, `online` or both (comma separated): (offline, online).
fn parse_materialize(value: &str) -> Result<(bool, bool), String> {
    let (mut offline, mut online) = (false, false);
    for target in columns(value) {
        match target.to_ascii_lowercase().as_str() {
            "offline" => offline = true,
            "online" => online = true,
            other => {
                return Err(format!(
                    "@materialize takes 'offline' and/or 'online', got '{other}'"
                ));
            }
        }
    }
    if online && !offline {
        // The online index is rebuilt from the offline Delta table at startup.
        return Err("@materialize online needs offline too: the online index is loaded from the offline table".into());
    }
    Ok((offline, online))
}

/// The body must be exactly one query. Errors carry the 1-based line within `sql`.
fn check_query(sql: &str) -> Result<(), (usize, String)> {
    let mut statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})
        .map_err(|e| (error_line(&e.to_string()).unwrap_or(1), e.to_string()))?;
    match (statements.pop_front(), statements.len()) {
        (Some(DFStatement::Statement(statement)), 0)
            if matches!(statement.as_ref(), SqlStatement::Query(_)) =>
        {
            Ok(())
        }
        (Some(_), 0) => Err((
            1,
            "a feature view is one SELECT (or WITH ... SELECT) query".into(),
        )),
        (None, _) => Err((1, "no SQL query after the header".into())),
        (Some(_), more) => Err((
            1,
            format!("a feature view is one query, found {}", more + 1),
        )),
    }
}

/// sqlparser reports positions as "at Line: 3, Column: 7".
fn error_line(message: &str) -> Option<usize> {
    let (_, rest) = message.split_once("Line: ")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FeatureView, DefinitionError> {
        FeatureView::parse(Path::new("sql/features/user_activity.sql"), text)
    }

    #[test]
    fn header_and_query_parse() {
        let view = parse(
            "-- Activity.\n-- @entity user_id\n-- @event_time ts\n-- @ttl 30 days\n\
             -- @materialize offline, online\n\nSELECT user_id, max(ts) AS ts\nFROM e GROUP BY user_id\n",
        )
        .expect("valid");
        assert_eq!(view.name, "user_activity");
        assert_eq!(view.entity, vec!["user_id"]);
        assert_eq!(view.event_time, "ts");
        assert_eq!(view.ttl, Some(Duration::from_secs(30 * 86400)));
        assert!(view.offline && view.online);
        assert_eq!(view.sql_line, 7);
        assert!(view.sql.starts_with("SELECT user_id"));
    }

    #[test]
    fn errors_name_the_line() {
        let e =
            parse("-- @entity u\n-- @event_time t\n-- @tll 3 days\nSELECT 1").expect_err("typo");
        assert_eq!(e.line, 3);
        assert!(
            e.to_string()
                .starts_with("sql/features/user_activity.sql:3: unknown directive @tll"),
            "{e}"
        );

        let e = parse("-- @entity u\n-- @event_time t\n-- @ttl soon\nSELECT 1").expect_err("ttl");
        assert_eq!(e.line, 3);

        let e = parse("-- @event_time t\nSELECT 1").expect_err("entity");
        assert!(e.message.contains("@entity"), "{e}");

        let e = parse("-- @entity u\n-- @event_time t\n\nSELECT u,\n  t\nFROM x WHERE )")
            .expect_err("sql");
        assert_eq!(e.line, 6, "{e}");

        let e = parse("-- @entity u\n-- @event_time t\nDROP TABLE x").expect_err("not a query");
        assert!(e.message.contains("one SELECT"), "{e}");

        let e = parse("-- @entity u\n-- @event_time t\n-- @materialize online\nSELECT 1")
            .expect_err("online only");
        assert!(e.message.contains("needs offline"), "{e}");
    }

    #[test]
    fn fingerprint_follows_the_definition() {
        let a = parse("-- @entity u\n-- @event_time t\nSELECT 1 AS u, now() AS t").expect("a");
        let b = parse("-- @entity u\n-- @event_time t\nSELECT 2 AS u, now() AS t").expect("b");
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
