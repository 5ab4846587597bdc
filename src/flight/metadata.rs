//! Flight SQL metadata: server capabilities (GetSqlInfo), types (GetXdbcTypeInfo) and the catalog
//! listings (GetCatalogs, GetDbSchemas, GetTables, GetTableTypes, GetPrimaryKeys) as record batches.

use std::sync::Arc;

use arrow_flight::sql::metadata::{
    GetCatalogsBuilder, GetTablesBuilder, SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo,
    XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    CommandGetDbSchemas, CommandGetTables, Nullable, Searchable, SqlInfo, SqlSupportedTransaction,
    XdbcDataType,
};
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::{Error, Result};
use crate::flight::stream::wire_schema;
use crate::session::QuiverSession;
use crate::storage::{AsOf, CATALOG, TableLocation};

pub const TABLE_TYPES: [&str; 2] = ["EXTERNAL TABLE", "TABLE"];

/// What GetSqlInfo reports: identity, SQL support, and no transactions (each statement commits alone).
pub fn sql_info() -> Result<SqlInfoData> {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Quiver");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    b.append(SqlInfo::FlightSqlServerReadOnly, false);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, true);
    b.append(SqlInfo::FlightSqlServerIngestTransactionsSupported, false);
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, true);
    b.append(SqlInfo::SqlDdlTable, true);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlTransactionsSupported, false);
    Ok(b.build()?)
}

/// The SQL types Quiver's tables hold, for GetXdbcTypeInfo.
pub fn xdbc_type_info() -> Result<XdbcTypeInfoData> {
    let mut b = XdbcTypeInfoDataBuilder::new();
    let types = [
        ("BOOLEAN", XdbcDataType::XdbcBit, None),
        ("TINYINT", XdbcDataType::XdbcTinyint, Some(3)),
        ("SMALLINT", XdbcDataType::XdbcSmallint, Some(5)),
        ("INTEGER", XdbcDataType::XdbcInteger, Some(10)),
        ("BIGINT", XdbcDataType::XdbcBigint, Some(19)),
        ("FLOAT", XdbcDataType::XdbcFloat, Some(24)),
        ("DOUBLE", XdbcDataType::XdbcDouble, Some(53)),
        ("DECIMAL", XdbcDataType::XdbcDecimal, Some(38)),
        ("VARCHAR", XdbcDataType::XdbcVarchar, None),
        ("BINARY", XdbcDataType::XdbcBinary, None),
        ("DATE", XdbcDataType::XdbcDate, None),
        ("TIMESTAMP", XdbcDataType::XdbcTimestamp, None),
    ];
    for (name, data_type, column_size) in types {
        let quoted = matches!(
            data_type,
            XdbcDataType::XdbcVarchar | XdbcDataType::XdbcDate | XdbcDataType::XdbcTimestamp
        );
        b.append(XdbcTypeInfo {
            type_name: name.to_string(),
            data_type,
            column_size,
            literal_prefix: quoted.then(|| "'".to_string()),
            literal_suffix: quoted.then(|| "'".to_string()),
            create_params: (data_type == XdbcDataType::XdbcDecimal)
                .then(|| vec!["precision".to_string(), "scale".to_string()]),
            nullable: Nullable::NullabilityNullable,
            case_sensitive: data_type == XdbcDataType::XdbcVarchar,
            searchable: Searchable::Full,
            unsigned_attribute: column_size.map(|_| false),
            fixed_prec_scale: false,
            auto_increment: column_size.map(|_| false),
            local_type_name: Some(name.to_string()),
            minimum_scale: None,
            maximum_scale: None,
            sql_data_type: data_type,
            datetime_subcode: None,
            num_prec_radix: column_size.map(|_| 10),
            interval_precision: None,
        });
    }
    Ok(b.build()?)
}

pub fn catalogs() -> Result<RecordBatch> {
    let mut b = GetCatalogsBuilder::new();
    b.append(CATALOG);
    Ok(b.build()?)
}

pub fn catalogs_schema() -> SchemaRef {
    GetCatalogsBuilder::new().schema()
}

pub async fn db_schemas(session: &QuiverSession, cmd: CommandGetDbSchemas) -> Result<RecordBatch> {
    let mut b = cmd.into_builder();
    for schema in session.warehouse().schemas().await? {
        b.append(CATALOG, schema);
    }
    Ok(b.build()?)
}

pub fn db_schemas_schema(cmd: CommandGetDbSchemas) -> SchemaRef {
    cmd.into_builder().schema()
}

/// GetTables. With `include_schema`, every matching table is opened to read its schema.
pub async fn tables(session: &QuiverSession, cmd: CommandGetTables) -> Result<RecordBatch> {
    let include_schema = cmd.include_schema;
    let catalog_ok = cmd.catalog.as_deref().is_none_or(|c| c == CATALOG);
    let mut b: GetTablesBuilder = cmd.into_builder();
    if catalog_ok {
        let warehouse = session.warehouse();
        for schema in warehouse.schemas().await? {
            for (table, location) in warehouse.tables(&schema).await? {
                let table_schema = if include_schema {
                    match table_arrow_schema(session, &schema, &table, &location).await {
                        Ok(table_schema) => Arc::new(wire_schema(&table_schema)),
                        Err(e) => {
                            // Listed with an empty schema rather than failing the whole listing.
                            tracing::warn!(%schema, %table, error = %e, "GetTables: cannot read table schema");
                            Arc::new(Schema::empty())
                        }
                    }
                } else {
                    Arc::new(Schema::empty())
                };
                b.append(CATALOG, &schema, &table, location.kind(), &table_schema)?;
            }
        }
    }
    Ok(b.build()?)
}

pub fn tables_schema(cmd: CommandGetTables) -> SchemaRef {
    cmd.into_builder().schema()
}

/// The Arrow schema of a Delta table, as queries see it.
pub async fn table_arrow_schema(
    session: &QuiverSession,
    schema: &str,
    table: &str,
    location: &TableLocation,
) -> Result<SchemaRef> {
    let provider = session
        .catalog()
        .provider(format!("{schema}.{table}"), location, &AsOf::Latest)
        .await?;
    Ok(datafusion::catalog::TableProvider::schema(&provider))
}

pub fn table_types() -> Result<RecordBatch> {
    let array = StringArray::from(TABLE_TYPES.to_vec());
    Ok(RecordBatch::try_new(
        table_types_schema(),
        vec![Arc::new(array)],
    )?)
}

pub fn table_types_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "table_type",
        DataType::Utf8,
        false,
    )]))
}

/// Delta tables have no primary keys: the result is always empty, with the schema Flight SQL defines.
pub fn primary_keys() -> Result<RecordBatch> {
    Ok(RecordBatch::new_empty(primary_keys_schema()))
}

pub fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// Resolves a Flight descriptor path (`[table]` or `[schema, table]`) to schema and table names.
pub fn path_to_table(path: &[String]) -> Result<(String, String)> {
    match path {
        [table] => Ok((crate::storage::DEFAULT_SCHEMA.to_string(), table.clone())),
        [schema, table] => Ok((schema.clone(), table.clone())),
        other => Err(Error::InvalidInput(format!(
            "a descriptor path names a table as [table] or [schema, table], got {} parts",
            other.len()
        ))),
    }
}
