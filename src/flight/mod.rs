//! Serving: Arrow Flight SQL and plain Arrow Flight over the warehouse.
//!
//! `planner` turns commands into plans and results without gRPC types; `service` is the thin Flight
//! SQL layer over it; `plain` is the outer service that also speaks plain Flight (pyarrow) and hands
//! Flight SQL commands to `service`. `handle` holds the stateless statement handles, `stream` the
//! batch encoding, `metadata` the catalog listings, `ingest` the uploads. Every call first passes
//! `guard` (authentication, the client's session settings from `session_cookie`, panics to
//! Internal, and `observe`: RPC metrics and the request id); statements are admitted and bounded by `limits`.

pub mod guard;
pub mod handle;
pub mod ingest;
pub mod limits;
pub mod metadata;
pub mod observe;
pub mod parameters;
pub mod plain;
pub mod planner;
pub mod service;
pub mod session_cookie;
pub mod session_options;
pub mod stream;

pub use plain::QuiverFlight;
pub use service::QuiverFlightSql;
