//! Storage: Delta Lake tables in a warehouse on object storage, exposed to DataFusion as catalog `quiver`.
//!
//! `warehouse` lays out schemas and tables, `catalog` resolves SQL names to tables (with time travel),
//! `open` loads a table at a snapshot and `snapshots` keeps the latest ones between statements,
//! `table` reads and changes one table, `changes` follows a table from a version (what its commits
//! since did, the rows they added),
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
pub mod open;
pub(crate) mod per_table;
pub mod snapshots;
pub mod sources;
pub mod storable;
pub mod stores;
pub mod system;
pub mod table;
pub mod upkeep;
pub mod warehouse;
pub mod write;

pub use catalog::{CATALOG, WarehouseCatalog};
pub use open::{AsOf, open_delta};
pub use table::DeltaTableProvider;
pub use warehouse::{DEFAULT_SCHEMA, TableLocation, Warehouse};
pub use write::{WriteKind, WriteRequest, write_stream};
