//! Storage: Delta Lake tables in a warehouse on object storage, exposed to DataFusion as catalog `quiver`.
//!
//! `warehouse` lays out schemas and tables, `catalog` resolves SQL names to tables (with time travel),
//! `table` reads and changes one table, `changes` reads what a table's commits since a version added,
//! `storable` brings incoming data to the types Delta stores, `write` streams batches into one Delta
//! commit (`insert` is INSERT's way there; `group_commit` joins
//! concurrent appends into one commit), `upkeep` checkpoints after commits, `maintenance` runs OPTIMIZE, VACUUM,
//! RESTORE and schema/property changes, `merge` runs MERGE INTO, `stores` builds the object stores (local, S3, GCS,
//! Azure) both the warehouse and delta-rs use.

pub mod catalog;
pub mod changes;
pub mod group_commit;
pub mod insert;
pub mod maintenance;
pub mod merge;
pub mod storable;
pub mod stores;
pub mod table;
pub mod upkeep;
pub mod warehouse;
pub mod write;

pub use catalog::{CATALOG, WarehouseCatalog};
pub use table::{AsOf, DeltaTableProvider, open_delta};
pub use warehouse::{DEFAULT_SCHEMA, TableLocation, Warehouse};
pub use write::{WriteKind, WriteRequest, write_stream};
