//! The statements DataFusion's parser does not know, all read here one way: Delta table statements in
//! Databricks/Spark syntax (`OPTIMIZE`, `VACUUM`, `RESTORE TABLE`, `DESCRIBE HISTORY` / `DESCRIBE
//! DETAIL`, `ALTER TABLE ... ADD COLUMNS / SET TBLPROPERTIES`) and Quiver's own `REFRESH FEATURE
//! VIEW[S]`, `RELOAD MODELS`, `RELOAD FEATURE VIEWS`, and the source statements (`CREATE SOURCE`,
//! `SHOW SOURCES`, `ALTER SOURCE`, `DROP SOURCE`).
//!
//! Read with sqlparser's own parser (names, literals and expressions read as in every other
//! statement); [`parse`] answers `None` for anything else, which then goes to DataFusion.

use datafusion::common::TableReference;
use datafusion::sql::sqlparser::ast::{ColumnDef, Expr, Ident, ObjectName, Value};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

use crate::error::{Error, Result};
use crate::query::rewrite::parse_timestamp;
use crate::storage::AsOf;

/// One statement of this module's.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandStatement {
    Table(TableStatement),
    /// `REFRESH FEATURE VIEW <name>` (`Some`) or `REFRESH FEATURE VIEWS` (`None`).
    RefreshFeatureViews {
        name: Option<String>,
    },
    /// `RELOAD MODELS`.
    ReloadModels,
    /// `RELOAD FEATURE VIEWS`.
    ReloadFeatureViews,
    Source(SourceStatement),
}

/// A statement about sources (streams Quiver consumes into tables).
#[derive(Debug, Clone, PartialEq)]
pub enum SourceStatement {
    /// `CREATE SOURCE [IF NOT EXISTS] name FROM KAFKA (key 'value', ...) INTO [schema.]table`.
    Create {
        name: String,
        kind: String,
        options: Vec<(String, String)>,
        into: ObjectName,
        if_not_exists: bool,
    },
    /// `SHOW SOURCES`.
    Show,
    /// `ALTER SOURCE name PAUSE | RESUME`.
    Alter { name: String, pause: bool },
    /// `DROP SOURCE [IF EXISTS] name`.
    Drop { name: String, if_exists: bool },
}

impl SourceStatement {
    pub fn name(&self) -> &'static str {
        match self {
            SourceStatement::Create { .. } => "CREATE SOURCE",
            SourceStatement::Show => "SHOW SOURCES",
            SourceStatement::Alter { .. } => "ALTER SOURCE",
            SourceStatement::Drop { .. } => "DROP SOURCE",
        }
    }
}

impl CommandStatement {
    /// The statement as messages name it.
    fn describe(&self) -> String {
        match self {
            CommandStatement::Table(t) => format!("{} {}", t.operation.name(), t.table),
            CommandStatement::RefreshFeatureViews { name: Some(name) } => {
                format!("REFRESH FEATURE VIEW {name}")
            }
            CommandStatement::RefreshFeatureViews { name: None } => "REFRESH FEATURE VIEWS".into(),
            CommandStatement::ReloadModels => "RELOAD MODELS".into(),
            CommandStatement::ReloadFeatureViews => "RELOAD FEATURE VIEWS".into(),
            CommandStatement::Source(s) => s.name().into(),
        }
    }
}

/// One table statement: the table named and what to do with it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableStatement {
    pub table: ObjectName,
    pub operation: TableOperation,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TableOperation {
    /// `OPTIMIZE t [WHERE <partition predicate>] [ZORDER BY (c, ...)]`.
    Optimize {
        predicate: Option<Box<Expr>>,
        zorder: Vec<Ident>,
    },
    /// `VACUUM t [RETAIN n HOURS] [DRY RUN] [WITHOUT RETENTION CHECK]`: the last clause allows a
    /// retention shorter than the table's (Spark's `retentionDurationCheck.enabled = false`).
    Vacuum {
        retain_hours: Option<f64>,
        dry_run: bool,
        check_retention: bool,
    },
    /// `RESTORE [TABLE] t [TO] VERSION AS OF n | TIMESTAMP AS OF '...'`.
    Restore { to: AsOf },
    /// `DESCRIBE HISTORY t [LIMIT n]`.
    History { limit: Option<u64> },
    /// `DESCRIBE DETAIL t`.
    Detail,
    /// `ALTER TABLE t ADD COLUMN[S] [(] c type [, ...] [)]`.
    AddColumns { columns: Vec<ColumnDef> },
    /// `ALTER TABLE t SET TBLPROPERTIES ('k' = 'v', ...)`.
    SetProperties { properties: Vec<(String, String)> },
}

impl TableOperation {
    /// The statement's name, for messages and permissions.
    pub fn name(&self) -> &'static str {
        match self {
            TableOperation::Optimize { .. } => "OPTIMIZE",
            TableOperation::Vacuum { .. } => "VACUUM",
            TableOperation::Restore { .. } => "RESTORE",
            TableOperation::History { .. } => "DESCRIBE HISTORY",
            TableOperation::Detail => "DESCRIBE DETAIL",
            TableOperation::AddColumns { .. } => "ALTER TABLE ADD COLUMNS",
            TableOperation::SetProperties { .. } => "ALTER TABLE SET TBLPROPERTIES",
        }
    }

    /// Whether the statement changes the table (a new commit or removed files).
    pub fn writes(&self) -> bool {
        !matches!(
            self,
            TableOperation::History { .. } | TableOperation::Detail
        ) && !matches!(self, TableOperation::Vacuum { dry_run: true, .. })
    }
}

/// The statement in `sql` when it is one of this module's; `None` for any other statement.
pub fn parse(sql: &str) -> Result<Option<CommandStatement>> {
    let dialect = GenericDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(sql)
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let statement = if let Some(statement) = source_statement(sql, &mut parser)? {
        CommandStatement::Source(statement)
    } else if word(&mut parser, "REFRESH") {
        refresh(&mut parser).map_err(|e| usage(REFRESH_USAGE, sql, e))?
    } else if word(&mut parser, "RELOAD") {
        reload(&mut parser).map_err(|e| usage(RELOAD_USAGE, sql, e))?
    } else {
        match table_statement(&mut parser) {
            Ok(Some(statement)) => CommandStatement::Table(statement),
            Ok(None) => return Ok(None),
            Err(e) => return Err(Error::InvalidInput(e.to_string())),
        }
    };
    while parser.consume_token(&Token::SemiColon) {}
    let rest = parser.peek_token();
    if rest.token != Token::EOF {
        return Err(Error::InvalidInput(format!(
            "unexpected '{}' after {}",
            rest.token,
            statement.describe()
        )));
    }
    Ok(Some(statement))
}

const SOURCE_USAGE: &str = "expected CREATE SOURCE [IF NOT EXISTS] <name> FROM KAFKA (brokers \
     '...', topic '...', ...) INTO <table>, SHOW SOURCES, ALTER SOURCE <name> PAUSE | RESUME or \
     DROP SOURCE [IF EXISTS] <name>";

/// A source statement (its first two words decide), `None` for any other statement.
fn source_statement(sql: &str, parser: &mut Parser) -> Result<Option<SourceStatement>> {
    let mut words = sql.split_whitespace().map(str::to_ascii_uppercase);
    let first = words.next().unwrap_or_default();
    let second = words.next().unwrap_or_default();
    let second = second.trim_end_matches(';');
    let ours = matches!(
        (first.as_str(), second),
        ("CREATE" | "ALTER" | "DROP", "SOURCE") | ("SHOW", "SOURCES")
    );
    if !ours {
        return Ok(None);
    }
    source(parser)
        .map(Some)
        .map_err(|e| usage(SOURCE_USAGE, sql, e))
}

fn source(parser: &mut Parser) -> std::result::Result<SourceStatement, ParserError> {
    if word(parser, "SHOW") {
        expect_word(parser, "SOURCES")?;
        return Ok(SourceStatement::Show);
    }
    if word(parser, "DROP") {
        expect_word(parser, "SOURCE")?;
        let if_exists = word(parser, "IF") && {
            expect_word(parser, "EXISTS")?;
            true
        };
        let name = parser.parse_identifier()?.value;
        return Ok(SourceStatement::Drop { name, if_exists });
    }
    if word(parser, "ALTER") {
        expect_word(parser, "SOURCE")?;
        let name = parser.parse_identifier()?.value;
        let pause = if word(parser, "PAUSE") {
            true
        } else {
            expect_word(parser, "RESUME")?;
            false
        };
        return Ok(SourceStatement::Alter { name, pause });
    }
    expect_word(parser, "CREATE")?;
    expect_word(parser, "SOURCE")?;
    let if_not_exists = word(parser, "IF") && {
        expect_word(parser, "NOT")?;
        expect_word(parser, "EXISTS")?;
        true
    };
    let name = parser.parse_identifier()?.value;
    expect_word(parser, "FROM")?;
    expect_word(parser, "KAFKA")?;
    parser.expect_token(&Token::LParen)?;
    let mut options = Vec::new();
    loop {
        let key = property_text(parser)?.to_ascii_lowercase();
        let _ = parser.consume_token(&Token::Eq);
        let value = property_text(parser)?;
        options.push((key, value));
        if parser.consume_token(&Token::Comma) {
            continue;
        }
        parser.expect_token(&Token::RParen)?;
        break;
    }
    expect_word(parser, "INTO")?;
    let into = parser.parse_object_name(false)?;
    Ok(SourceStatement::Create {
        name,
        kind: "kafka".into(),
        options,
        into,
        if_not_exists,
    })
}

const REFRESH_USAGE: &str = "expected REFRESH FEATURE VIEW <name> or REFRESH FEATURE VIEWS";
const RELOAD_USAGE: &str = "expected RELOAD MODELS or RELOAD FEATURE VIEWS";

fn usage(usage: &str, sql: &str, e: ParserError) -> Error {
    let detail = match e {
        ParserError::ParserError(detail) | ParserError::TokenizerError(detail) => detail,
        other => other.to_string(),
    };
    Error::InvalidInput(format!("{usage}, got {} ({detail})", sql.trim()))
}

/// After `REFRESH`: `FEATURE VIEWS` or `FEATURE VIEW [features.]<name>`.
fn refresh(parser: &mut Parser) -> std::result::Result<CommandStatement, ParserError> {
    expect_word(parser, "FEATURE")?;
    if word(parser, "VIEWS") {
        return Ok(CommandStatement::RefreshFeatureViews { name: None });
    }
    expect_word(parser, "VIEW")?;
    let name = parser.parse_object_name(false)?;
    let name = match object_name_reference(&name) {
        TableReference::Bare { table } => table.to_string(),
        TableReference::Partial { schema, table }
            if *schema == *crate::features::FEATURES_SCHEMA =>
        {
            table.to_string()
        }
        _ => {
            return Err(ParserError::ParserError(format!(
                "'{name}' is not a feature view name"
            )));
        }
    };
    Ok(CommandStatement::RefreshFeatureViews { name: Some(name) })
}

/// After `RELOAD`: `MODELS` or `FEATURE VIEWS`.
fn reload(parser: &mut Parser) -> std::result::Result<CommandStatement, ParserError> {
    if word(parser, "MODELS") {
        return Ok(CommandStatement::ReloadModels);
    }
    expect_word(parser, "FEATURE")?;
    expect_word(parser, "VIEWS")?;
    Ok(CommandStatement::ReloadFeatureViews)
}

/// A parsed table name as DataFusion reads one: unquoted parts lower-cased.
pub fn object_name_reference(name: &ObjectName) -> TableReference {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| match part.as_ident() {
            Some(ident) if ident.quote_style.is_some() => ident.value.clone(),
            Some(ident) => ident.value.to_lowercase(),
            None => part.to_string(),
        })
        .collect();
    match parts.as_slice() {
        [table] => TableReference::bare(table.as_str()),
        [schema, table] => TableReference::partial(schema.as_str(), table.as_str()),
        [catalog, schema, table] => {
            TableReference::full(catalog.as_str(), schema.as_str(), table.as_str())
        }
        _ => TableReference::bare(name.to_string()),
    }
}

/// A Delta table statement, `None` for any other statement.
fn table_statement(parser: &mut Parser) -> Parsed {
    if word(parser, "OPTIMIZE") {
        optimize(parser)
    } else if word(parser, "VACUUM") {
        vacuum(parser)
    } else if word(parser, "RESTORE") {
        restore(parser)
    } else if word(parser, "DESCRIBE") || word(parser, "DESC") {
        describe(parser)
    } else if word(parser, "ALTER") && word(parser, "TABLE") {
        alter(parser)
    } else {
        Ok(None)
    }
}

type Parsed = std::result::Result<Option<TableStatement>, ParserError>;

/// Consumes the next token when it is the unquoted word `w` (any case).
fn word(parser: &mut Parser, w: &str) -> bool {
    let is = matches!(
        &parser.peek_token().token,
        Token::Word(word) if word.quote_style.is_none() && word.value.eq_ignore_ascii_case(w)
    );
    if is {
        parser.next_token();
    }
    is
}

fn expect_word(parser: &mut Parser, w: &str) -> std::result::Result<(), ParserError> {
    if word(parser, w) {
        return Ok(());
    }
    parser.expected(w, parser.peek_token())
}

fn optimize(parser: &mut Parser) -> Parsed {
    word(parser, "TABLE");
    let table = parser.parse_object_name(false)?;
    let predicate = if word(parser, "WHERE") {
        Some(Box::new(parser.parse_expr()?))
    } else {
        None
    };
    let zorder = if word(parser, "ZORDER") {
        expect_word(parser, "BY")?;
        let parenthesized = parser.consume_token(&Token::LParen);
        let columns = parser.parse_comma_separated(|p| p.parse_identifier())?;
        if parenthesized {
            parser.expect_token(&Token::RParen)?;
        }
        columns
    } else {
        Vec::new()
    };
    Ok(Some(TableStatement {
        table,
        operation: TableOperation::Optimize { predicate, zorder },
    }))
}

fn vacuum(parser: &mut Parser) -> Parsed {
    word(parser, "TABLE");
    let table = parser.parse_object_name(false)?;
    let retain_hours = if word(parser, "RETAIN") {
        let token = parser.next_token();
        let hours = match &token.token {
            Token::Number(n, _) => n.parse::<f64>().ok().filter(|h| *h >= 0.0),
            _ => None,
        };
        let Some(hours) = hours else {
            return parser.expected("a number of hours after RETAIN", token);
        };
        expect_word(parser, "HOURS")?;
        Some(hours)
    } else {
        None
    };
    let (mut dry_run, mut check_retention) = (false, true);
    loop {
        if word(parser, "DRY") {
            expect_word(parser, "RUN")?;
            dry_run = true;
        } else if word(parser, "WITHOUT") {
            expect_word(parser, "RETENTION")?;
            expect_word(parser, "CHECK")?;
            check_retention = false;
        } else {
            break;
        }
    }
    Ok(Some(TableStatement {
        table,
        operation: TableOperation::Vacuum {
            retain_hours,
            dry_run,
            check_retention,
        },
    }))
}

fn restore(parser: &mut Parser) -> Parsed {
    word(parser, "TABLE");
    let table = parser.parse_object_name(false)?;
    word(parser, "TO");
    let to = if word(parser, "VERSION") {
        expect_word(parser, "AS")?;
        expect_word(parser, "OF")?;
        AsOf::Version(parser.parse_literal_uint()?)
    } else if word(parser, "TIMESTAMP") {
        expect_word(parser, "AS")?;
        expect_word(parser, "OF")?;
        let text = parser.parse_literal_string()?;
        let at = parse_timestamp(&text).map_err(|e| ParserError::ParserError(e.to_string()))?;
        AsOf::Timestamp(at.to_rfc3339())
    } else {
        return parser.expected("VERSION AS OF or TIMESTAMP AS OF", parser.peek_token());
    };
    Ok(Some(TableStatement {
        table,
        operation: TableOperation::Restore { to },
    }))
}

fn describe(parser: &mut Parser) -> Parsed {
    // `DESCRIBE history` describes a table named history: HISTORY and DETAIL are words here only
    // when a table name follows.
    let history = word(parser, "HISTORY");
    if !history && !word(parser, "DETAIL") {
        return Ok(None);
    }
    if parser.peek_token().token == Token::EOF || parser.peek_token().token == Token::SemiColon {
        return Ok(None);
    }
    let table = parser.parse_object_name(false)?;
    let operation = if history {
        let limit = if word(parser, "LIMIT") {
            Some(parser.parse_literal_uint()?)
        } else {
            None
        };
        TableOperation::History { limit }
    } else {
        TableOperation::Detail
    };
    Ok(Some(TableStatement { table, operation }))
}

fn alter(parser: &mut Parser) -> Parsed {
    let table = parser.parse_object_name(false)?;
    if word(parser, "ADD") {
        if !word(parser, "COLUMNS") && !word(parser, "COLUMN") {
            // ADD CONSTRAINT and the like: DataFusion's answer.
            return Ok(None);
        }
        let parenthesized = parser.consume_token(&Token::LParen);
        let columns = parser.parse_comma_separated(|p| p.parse_column_def())?;
        if parenthesized {
            parser.expect_token(&Token::RParen)?;
        }
        return Ok(Some(TableStatement {
            table,
            operation: TableOperation::AddColumns { columns },
        }));
    }
    if word(parser, "SET") && word(parser, "TBLPROPERTIES") {
        parser.expect_token(&Token::LParen)?;
        let properties = parser.parse_comma_separated(|p| {
            let key = property_text(p)?;
            p.expect_token(&Token::Eq)?;
            let value = property_text(p)?;
            Ok((key, value))
        })?;
        parser.expect_token(&Token::RParen)?;
        return Ok(Some(TableStatement {
            table,
            operation: TableOperation::SetProperties { properties },
        }));
    }
    Ok(None)
}

/// A property key or value: a quoted string, a number, `true`/`false`, or a dotted name
/// (`delta.checkpointInterval`).
fn property_text(parser: &mut Parser) -> std::result::Result<String, ParserError> {
    if let Token::Word(_) = parser.peek_token().token {
        let name = parser.parse_object_name(false)?;
        return Ok(name.to_string());
    }
    let value = parser.parse_value()?;
    Ok(match value.value {
        Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s,
        Value::Number(n, _) => n.to_string(),
        Value::Boolean(b) => b.to_string(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(sql: &str) -> TableOperation {
        match parse(sql).unwrap().unwrap() {
            CommandStatement::Table(statement) => statement.operation,
            other => panic!("not a table statement: {other:?}"),
        }
    }

    #[test]
    fn databricks_maintenance_statements_parse() {
        assert_eq!(
            op("OPTIMIZE events WHERE day = '2026-01-01' ZORDER BY (user_id, item_id)"),
            TableOperation::Optimize {
                predicate: Parser::new(&GenericDialect {})
                    .try_with_sql("day = '2026-01-01'")
                    .and_then(|mut p| p.parse_expr())
                    .ok()
                    .map(Box::new),
                zorder: vec![Ident::new("user_id"), Ident::new("item_id")],
            }
        );
        assert_eq!(
            op("vacuum s.t retain 0 hours dry run without retention check;"),
            TableOperation::Vacuum {
                retain_hours: Some(0.0),
                dry_run: true,
                check_retention: false,
            }
        );
        assert_eq!(
            op("RESTORE TABLE t TO VERSION AS OF 3"),
            TableOperation::Restore {
                to: AsOf::Version(3)
            }
        );
        assert_eq!(
            op("DESCRIBE HISTORY t LIMIT 5"),
            TableOperation::History { limit: Some(5) }
        );
        assert_eq!(op("DESC DETAIL t"), TableOperation::Detail);
        assert_eq!(
            op(
                "ALTER TABLE t SET TBLPROPERTIES ('delta.checkpointInterval' = '5', delta.appendOnly = false)"
            ),
            TableOperation::SetProperties {
                properties: vec![
                    ("delta.checkpointInterval".into(), "5".into()),
                    ("delta.appendOnly".into(), "false".into())
                ]
            }
        );
        let TableOperation::AddColumns { columns } =
            op("ALTER TABLE t ADD COLUMNS (a INT, b VARCHAR)")
        else {
            panic!("not ADD COLUMNS");
        };
        assert_eq!(columns.len(), 2);
    }

    #[test]
    fn refresh_and_reload_parse() {
        let refresh = |name: Option<&str>| CommandStatement::RefreshFeatureViews {
            name: name.map(str::to_string),
        };
        for (sql, expected) in [
            ("REFRESH FEATURE VIEWS", refresh(None)),
            (
                "refresh feature view User_Activity;",
                refresh(Some("user_activity")),
            ),
            (
                "REFRESH FEATURE VIEW features.\"Mixed\"",
                refresh(Some("Mixed")),
            ),
            ("  RELOAD   models ; ", CommandStatement::ReloadModels),
            ("reload feature views", CommandStatement::ReloadFeatureViews),
        ] {
            assert_eq!(parse(sql).unwrap(), Some(expected), "{sql}");
        }
    }

    #[test]
    fn source_statements_parse() {
        let created = parse(
            "create source IF NOT EXISTS clicks_in from kafka (brokers 'k:9092', topic = 'clicks', \
             'security.protocol' 'SASL_SSL', max_messages 5000) into events.clicks",
        )
        .expect("parsed");
        let Some(CommandStatement::Source(SourceStatement::Create {
            name,
            options,
            into,
            if_not_exists,
            ..
        })) = created
        else {
            panic!("{created:?}")
        };
        assert_eq!(name, "clicks_in");
        assert!(if_not_exists);
        assert_eq!(into.to_string(), "events.clicks");
        assert_eq!(
            options,
            vec![
                ("brokers".to_string(), "k:9092".to_string()),
                ("topic".into(), "clicks".into()),
                ("security.protocol".into(), "SASL_SSL".into()),
                ("max_messages".into(), "5000".into()),
            ]
        );
        assert_eq!(
            parse("SHOW SOURCES").expect("show"),
            Some(CommandStatement::Source(SourceStatement::Show))
        );
        assert_eq!(
            parse("alter source s PAUSE").expect("pause"),
            Some(CommandStatement::Source(SourceStatement::Alter {
                name: "s".into(),
                pause: true
            }))
        );
        assert_eq!(
            parse("DROP SOURCE IF EXISTS s;").expect("drop"),
            Some(CommandStatement::Source(SourceStatement::Drop {
                name: "s".into(),
                if_exists: true
            }))
        );
        let err = parse("CREATE SOURCE s FROM KAFKA (brokers 'b') ").unwrap_err();
        assert!(err.to_string().contains("expected CREATE SOURCE"), "{err}");
        let err = parse("ALTER SOURCE s STOP").unwrap_err();
        assert!(err.to_string().contains("RESUME"), "{err}");
        // Tables and views are still DataFusion's.
        assert_eq!(parse("CREATE TABLE source (a INT)").expect("table"), None);
    }

    #[test]
    fn other_statements_are_left_to_datafusion() {
        for sql in [
            "SELECT 1",
            "DESCRIBE t",
            "DESCRIBE history",
            "ALTER TABLE t RENAME TO u",
            "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0)",
        ] {
            assert_eq!(parse(sql).unwrap(), None, "{sql}");
        }
    }

    #[test]
    fn mistakes_are_named() {
        for (sql, expected) in [
            ("VACUUM t RETAIN x HOURS", "a number of hours"),
            ("OPTIMIZE t ZORDER (a)", "Expected: BY"),
            ("RESTORE t TO 3", "VERSION AS OF"),
            ("VACUUM t DRY", "Expected: RUN"),
            ("OPTIMIZE t extra", "unexpected 'extra' after OPTIMIZE t"),
            (
                "REFRESH FEATURE x",
                "expected REFRESH FEATURE VIEW <name> or REFRESH",
            ),
            (
                "REFRESH FEATURE VIEW a.b.c",
                "'a.b.c' is not a feature view name",
            ),
            (
                "REFRESH FEATURE VIEWS now",
                "unexpected 'now' after REFRESH FEATURE VIEWS",
            ),
            (
                "RELOAD FEATURE VIEW",
                "expected RELOAD MODELS or RELOAD FEATURE VIEWS, got RELOAD FEATURE VIEW",
            ),
            ("RELOAD", "expected RELOAD MODELS or RELOAD FEATURE VIEWS"),
        ] {
            let e = parse(sql).unwrap_err().to_string();
            assert!(e.contains(expected), "{sql}: {e}");
        }
    }
}
