//! Serving: Arrow Flight SQL and plain Arrow Flight over the warehouse.
//!
//! `planner` turns commands into plans and results without gRPC types; `service` is the thin Flight
//! SQL layer over it; `plain` is the outer service that also speaks plain Flight (pyarrow) and hands
//! Flight SQL commands to `service`. `handle` holds the stateless statement handles, `stream` the
//! batch encoding, `metadata` the catalog listings, `ingest` the uploads.

pub mod handle;
pub mod ingest;
pub mod metadata;
pub mod plain;
pub mod planner;
pub mod service;
pub mod stream;

pub use plain::QuiverFlight;
pub use service::QuiverFlightSql;
