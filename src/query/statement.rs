//! One SQL statement from text to a plan (no side effects) and from a plan to a stream of batches.
//!
//! Planning never writes: DDL and the warehouse commands become [`Command`]s that run only in
//! [`execute`]. Queries and DML (`INSERT`, `DELETE`, `UPDATE`) stay DataFusion logical plans.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{ParamValues, ScalarValue, TableReference};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{
    DdlStatement, LogicalPlan, LogicalPlanBuilder, Statement as PlanStatement,
};
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    ShowStatementFilter, Statement as SqlStatement, Value as SqlValue,
};
use datafusion::sql::sqlparser::dialect::dialect_from_str;

use crate::error::{Error, Result};
use crate::planning::asof::nest_asof_joins;
use crate::query::command_sql::{
    self, CommandStatement, SourceStatement, TableOperation, object_name_reference,
};
use crate::query::conform::{conform_batch, conform_stream};
use crate::query::one_batch;
use crate::query::rewrite::{bind_table_function_args, number_placeholders, rewrite_extensions};
use crate::query::{ddl, dml};
use crate::session::QuiverSession;
use crate::storage::{CATALOG, DEFAULT_SCHEMA};

/// A planned statement: what it returns is known, nothing has run yet.
#[derive(Debug, Clone)]
pub enum Planned {
    Query(LogicalPlan),
    Command(Command),
}

/// Statements that change the warehouse itself rather than rows of a table.
#[derive(Debug, Clone)]
pub enum Command {
    CreateSchema {
        name: String,
        if_not_exists: bool,
    },
    DropSchema {
        name: String,
        if_exists: bool,
        cascade: bool,
    },
    /// `CREATE TABLE` (with columns) and `CREATE TABLE AS SELECT` both write `input` (empty for the former).
    CreateTable {
        schema: String,
        table: String,
        input: LogicalPlan,
        partition_by: Vec<String>,
        if_not_exists: bool,
        or_replace: bool,
    },
    CreateExternal {
        schema: String,
        table: String,
        location: String,
        if_not_exists: bool,
    },
    DropTable {
        schema: String,
        table: String,
        if_exists: bool,
    },
    /// `REFRESH FEATURE VIEW name` (`Some`), `REFRESH FEATURE VIEWS` (all: `None`).
    RefreshFeatureViews {
        name: Option<String>,
    },
    /// `RELOAD MODELS`: load new and changed model directories now.
    ReloadModels,
    /// `RELOAD FEATURE VIEWS`: read `<sql-dir>/features/` again.
    ReloadFeatureViews,
    /// `SET name = value`: one of the client's session settings (see [`super::settings`]).
    Set {
        name: String,
        value: String,
    },
    /// `RESET name` (`Some`), `RESET ALL` (`None`).
    Reset {
        name: Option<String>,
    },
    /// `CREATE SOURCE`, `SHOW SOURCES`, `ALTER SOURCE`, `DROP SOURCE` (see [`super::sources`]).
    Source(SourceStatement),
    /// A Delta table statement: OPTIMIZE, VACUUM, RESTORE, DESCRIBE HISTORY / DETAIL, ALTER TABLE
    /// (see [`super::command_sql`]).
    Table {
        schema: String,
        table: String,
        operation: TableOperation,
    },
}

impl Planned {
    /// The schema of the batches [`execute`] will return.
    pub fn schema(&self) -> SchemaRef {
        match self {
            Planned::Query(plan) => Arc::new(plan.schema().as_arrow().clone()),
            Planned::Command(Command::CreateTable { .. }) => crate::storage::table::count_schema(),
            Planned::Command(Command::RefreshFeatureViews { .. }) => {
                crate::features::refresh::report_schema()
            }
            Planned::Command(Command::ReloadModels) => crate::scoring::reload_report_schema(),
            Planned::Command(Command::ReloadFeatureViews) => {
                crate::features::reload_report_schema()
            }
            Planned::Command(Command::Table { operation, .. }) => {
                super::table_ops::report_schema(operation)
            }
            Planned::Command(Command::Source(SourceStatement::Show)) => {
                super::sources::show_schema()
            }
            Planned::Command(_) => Arc::new(Schema::empty()),
        }
    }

    /// The statement's placeholders as a schema with fields `$1, $2, ...` (type Null where unknown).
    pub fn parameter_schema(&self) -> Result<Schema> {
        let plan = match self {
            Planned::Query(plan) | Planned::Command(Command::CreateTable { input: plan, .. }) => {
                plan
            }
            Planned::Command(_) => return Ok(Schema::empty()),
        };
        let mut params: Vec<(String, Option<DataType>)> =
            plan.get_parameter_types()?.into_iter().collect();
        params.sort_by_key(|(name, _)| {
            name.trim_start_matches('$')
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        Ok(Schema::new(
            params
                .into_iter()
                .map(|(name, ty)| Field::new(name, ty.unwrap_or(DataType::Null), true))
                .collect::<Vec<_>>(),
        ))
    }

    /// Binds one row of parameter values, in placeholder order.
    pub fn bind(mut self, params: &RecordBatch, row: usize) -> Result<Planned> {
        let values = row_parameters(params, row)?;
        match &mut self {
            Planned::Query(plan) | Planned::Command(Command::CreateTable { input: plan, .. }) => {
                *plan = plan.clone().with_param_values(values)?;
            }
            Planned::Command(_) => {}
        }
        Ok(self)
    }
}

/// Row `row` of a parameter batch as placeholder values (`$1` is the first column).
pub fn row_parameters(params: &RecordBatch, row: usize) -> Result<ParamValues> {
    let values = (0..params.num_columns())
        .map(|c| ScalarValue::try_from_array(params.column(c), row))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ParamValues::from(values))
}

/// Parses and plans one statement. Nothing is executed or written.
pub async fn plan_sql(session: &QuiverSession, sql: &str) -> Result<Planned> {
    plan_sql_with(session, sql, None).await
}

/// [`plan_sql`] with the parameter values known at planning: table-function arguments need them
/// (`FROM recommend('m', $1, 10)`); the rest of the plan is bound by [`Planned::bind`] as usual.
#[tracing::instrument(name = "plan", level = "info", skip_all)]
pub async fn plan_sql_with(
    session: &QuiverSession,
    sql: &str,
    params: Option<&ParamValues>,
) -> Result<Planned> {
    if let Some(statement) = command_sql::parse(sql)? {
        return Ok(Planned::Command(match statement {
            CommandStatement::Table(statement) => {
                let (schema, table) = schema_and_table(&object_name_reference(&statement.table))?;
                Command::Table {
                    schema,
                    table,
                    operation: statement.operation,
                }
            }
            CommandStatement::RefreshFeatureViews { name } => Command::RefreshFeatureViews { name },
            CommandStatement::ReloadModels => Command::ReloadModels,
            CommandStatement::ReloadFeatureViews => Command::ReloadFeatureViews,
            CommandStatement::Source(statement) => Command::Source(statement),
        }));
    }
    let rewritten = rewrite_extensions(sql)?;
    // The dialect is the client's session setting (`datafusion.sql_parser.dialect`).
    let state = session.state();
    let mut statements = {
        let dialect = &state.config().options().sql_parser.dialect;
        let dialect = dialect_from_str(dialect)
            .ok_or_else(|| Error::InvalidInput(format!("unsupported SQL dialect {dialect}")))?;
        DFParser::parse_sql_with_dialect(&rewritten.sql, dialect.as_ref())
            .map_err(|e| Error::InvalidInput(e.to_string()))?
    };
    let mut statement = match (statements.pop_front(), statements.len()) {
        (Some(statement), 0) => statement,
        (None, _) => return Err(Error::InvalidInput("empty SQL statement".into())),
        (Some(_), more) => {
            return Err(Error::InvalidInput(format!(
                "expected one SQL statement, got {}",
                more + 1
            )));
        }
    };
    let mut show_functions = None;
    if let Some(inner) = sql_statement(&mut statement) {
        number_placeholders(inner)?;
        if let Some(ParamValues::List(values)) = params {
            let values: Vec<ScalarValue> = values.iter().map(|v| v.value.clone()).collect();
            bind_table_function_args(inner, &values)?;
        }
        nest_asof_joins(inner);
        if let SqlStatement::ShowFunctions { filter } = inner {
            show_functions = Some(filter.clone());
        }
    }
    let references = state.resolve_table_references(&statement)?;
    if references
        .iter()
        .any(|r| r.schema() == Some("information_schema"))
    {
        session.catalog().refresh().await?;
    }
    let mut plan = match state.statement_to_plan(statement).await {
        Ok(plan) => plan,
        Err(e) => return Err(explain_missing_table(session, &references, e).await),
    };
    if let Some(filter) = show_functions {
        plan = with_user_defined_signatures(&state, plan, filter).await?;
    }
    classify(plan, rewritten.partition_by)
}

/// The SQL statement inside DataFusion's wrapper, looking through `EXPLAIN`.
fn sql_statement(statement: &mut DFStatement) -> Option<&mut SqlStatement> {
    match statement {
        DFStatement::Statement(inner) => Some(inner.as_mut()),
        DFStatement::Explain(explain) => sql_statement(explain.statement.as_mut()),
        _ => None,
    }
}

/// DataFusion's `SHOW FUNCTIONS` lists only functions whose signature enumerates argument types, which
/// leaves out every function that checks its own arguments (`Signature::user_defined`), Quiver's
/// recommender functions included. Their rows come from `information_schema.routines` (name, kind,
/// description, syntax), with the types left NULL.
async fn with_user_defined_signatures(
    state: &SessionState,
    listed: LogicalPlan,
    filter: Option<ShowStatementFilter>,
) -> Result<LogicalPlan> {
    let like = match filter {
        None => String::new(),
        Some(ShowStatementFilter::Like(pattern)) => format!(
            "AND routine_name LIKE {}",
            SqlValue::SingleQuotedString(pattern)
        ),
        Some(other) => return Err(Error::Unsupported(format!("SHOW FUNCTIONS {other}"))),
    };
    let sql = format!(
        "SELECT DISTINCT routine_name AS function_name, CAST(NULL AS VARCHAR) AS return_type, \
         CAST(NULL AS VARCHAR[]) AS parameters, CAST(NULL AS VARCHAR[]) AS parameter_types, \
         function_type, description, syntax_example \
         FROM information_schema.routines WHERE data_type IS NULL {like}"
    );
    let unlisted = state.create_logical_plan(&sql).await?;
    Ok(LogicalPlanBuilder::from(listed).union(unlisted)?.build()?)
}

/// DataFusion reports a missing table as a planning error; report it as NotFound with the name.
async fn explain_missing_table(
    session: &QuiverSession,
    references: &[TableReference],
    error: datafusion::error::DataFusionError,
) -> Error {
    // A missing table is a planning error; which one is missing is asked of the warehouse, not
    // read from the message.
    if !matches!(
        error.find_root(),
        datafusion::error::DataFusionError::Plan(_)
    ) {
        return error.into();
    }
    let functions = session.state();
    for reference in references {
        // `FROM recommend(...)`: a table function, not a missing table.
        if reference.schema().is_none()
            && functions.table_functions().contains_key(reference.table())
        {
            continue;
        }
        let (schema, table) = match schema_and_table(reference) {
            Ok(names) => names,
            Err(e) => return e,
        };
        let base = table
            .split(crate::storage::catalog::AS_OF_SEPARATOR)
            .next()
            .unwrap_or(&table);
        if schema != "information_schema"
            && schema != crate::storage::system::SYSTEM_SCHEMA
            && matches!(session.warehouse().locate(&schema, base).await, Ok(None))
        {
            return Error::TableNotFound(format!("{schema}.{base}"));
        }
    }
    error.into()
}

fn classify(plan: LogicalPlan, partition_by: Vec<String>) -> Result<Planned> {
    let command = match plan {
        LogicalPlan::Ddl(DdlStatement::CreateCatalogSchema(c)) => {
            let name = c
                .schema_name
                .strip_prefix(&format!("{CATALOG}."))
                .unwrap_or(&c.schema_name);
            Command::CreateSchema {
                name: name.to_string(),
                if_not_exists: c.if_not_exists,
            }
        }
        LogicalPlan::Ddl(DdlStatement::DropCatalogSchema(d)) => Command::DropSchema {
            name: schema_in_catalog(&d.name)?,
            if_exists: d.if_exists,
            cascade: d.cascade,
        },
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(c)) => {
            if c.temporary {
                return Err(Error::Unsupported(
                    "CREATE TEMPORARY TABLE: warehouse tables are Delta tables".into(),
                ));
            }
            let (schema, table) = schema_and_table(&c.name)?;
            Command::CreateTable {
                schema,
                table,
                input: Arc::unwrap_or_clone(c.input),
                partition_by,
                if_not_exists: c.if_not_exists,
                or_replace: c.or_replace,
            }
        }
        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(c)) => {
            if !c.file_type.eq_ignore_ascii_case("delta") {
                return Err(Error::Unsupported(format!(
                    "CREATE EXTERNAL TABLE ... STORED AS {}: only STORED AS DELTA is supported",
                    c.file_type
                )));
            }
            let (schema, table) = schema_and_table(&c.name)?;
            let [location] = <[String; 1]>::try_from(c.locations).map_err(|l| {
                Error::InvalidInput(format!(
                    "CREATE EXTERNAL TABLE takes one LOCATION, got {}",
                    l.len()
                ))
            })?;
            Command::CreateExternal {
                schema,
                table,
                location,
                if_not_exists: c.if_not_exists,
            }
        }
        LogicalPlan::Ddl(DdlStatement::DropTable(d)) => {
            let (schema, table) = schema_and_table(&d.name)?;
            Command::DropTable {
                schema,
                table,
                if_exists: d.if_exists,
            }
        }
        LogicalPlan::Ddl(other) => {
            return Err(Error::Unsupported(format!(
                "{}: only schemas and Delta tables can be created or dropped",
                other.name()
            )));
        }
        LogicalPlan::Statement(
            PlanStatement::TransactionStart(_) | PlanStatement::TransactionEnd(_),
        ) => {
            return Err(Error::Unsupported(
                "transactions: every statement is its own Delta commit".into(),
            ));
        }
        LogicalPlan::Statement(PlanStatement::SetVariable(set)) => Command::Set {
            name: set.variable,
            value: set.value,
        },
        LogicalPlan::Statement(PlanStatement::ResetVariable(reset)) => Command::Reset {
            name: (!reset.variable.eq_ignore_ascii_case("all")).then_some(reset.variable),
        },
        LogicalPlan::Statement(s) => {
            return Err(Error::Unsupported(format!("{} statements", s.name())));
        }
        LogicalPlan::Copy(_) => {
            return Err(Error::Unsupported(
                "COPY: write to a table with INSERT or CREATE TABLE AS instead".into(),
            ));
        }
        LogicalPlan::Dml(dml) if dml::is_delete_or_update(&dml) => {
            dml::check_shape(&dml)?;
            return Ok(Planned::Query(LogicalPlan::Dml(dml)));
        }
        query => {
            if !partition_by.is_empty() {
                return Err(Error::InvalidInput(
                    "PARTITIONED BY belongs to CREATE TABLE".into(),
                ));
            }
            return Ok(Planned::Query(query));
        }
    };
    Ok(Planned::Command(command))
}

/// Executes a planned statement; the rows stream as they are produced, in exactly the schema
/// [`Planned::schema`] announced (see [`super::conform`]).
pub async fn execute(
    session: &QuiverSession,
    planned: Planned,
) -> Result<SendableRecordBatchStream> {
    let schema = planned.schema();
    let stream = match planned {
        Planned::Query(LogicalPlan::Dml(dml)) if dml::is_delete_or_update(&dml) => {
            dml::run(&dml).await?
        }
        Planned::Query(plan) => {
            if let Some(batch) = direct_answer(session, &plan).await {
                return one_batch(batch?);
            }
            let df = session.ctx().execute_logical_plan(plan).await?;
            df.execute_stream().await?
        }
        Planned::Command(command) => ddl::run(session, command).await?,
    };
    Ok(conform_stream(stream, schema))
}

/// The rows of a query that is answered without DataFusion's optimizer and physical planner: an
/// online lookup (from the view's index) or one `recommend(...)` call, in the plan's schema. `None`
/// for any other plan.
pub async fn direct_answer(
    session: &QuiverSession,
    plan: &LogicalPlan,
) -> Option<Result<RecordBatch>> {
    let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    if let Some(batch) = crate::features::table::direct_lookup(plan) {
        return Some(
            batch
                .map_err(Into::into)
                .and_then(|b| conform_batch(b, &schema)),
        );
    }
    let call = crate::scoring::recommend::single_call(plan)?;
    Some(
        call.run(&session.ctx().state(), None)
            .await
            .map_err(Into::into)
            .and_then(|b| conform_batch(b, &schema)),
    )
}

/// Plans and executes one statement (the `quiver sql` command and tests).
pub async fn run_sql(session: &QuiverSession, sql: &str) -> Result<SendableRecordBatchStream> {
    let planned = plan_sql(session, sql).await?;
    execute(session, planned).await
}

fn schema_in_catalog(reference: &datafusion::common::SchemaReference) -> Result<String> {
    if let datafusion::common::SchemaReference::Full { catalog, schema } = reference
        && &**catalog != CATALOG
    {
        return Err(Error::CatalogNotFound(format!(
            "'{catalog}' in {catalog}.{schema}: the only catalog is '{CATALOG}'"
        )));
    }
    Ok(reference.schema_name().to_string())
}

/// `(schema, table)` of a name in the `quiver` catalog, with `public` as the default schema.
pub fn schema_and_table(reference: &TableReference) -> Result<(String, String)> {
    if let Some(catalog) = reference.catalog()
        && catalog != CATALOG
    {
        return Err(Error::CatalogNotFound(format!(
            "'{catalog}' in {reference}: the only catalog is '{CATALOG}'"
        )));
    }
    let schema = reference.schema().unwrap_or(DEFAULT_SCHEMA).to_string();
    Ok((schema, reference.table().to_string()))
}
