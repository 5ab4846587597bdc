//! Quiver's extensions to DataFusion's planning, below the session that installs them: the ASOF
//! JOIN (its relation planner, logical node and streaming operator) and the physical planner that
//! turns every extension node (ASOF joins; delta-rs's write, delete and merge nodes) into an
//! operator. Any process that plans Quiver's SQL (the server, `quiver sql`, a test, a cluster
//! executor) installs both through [`crate::session`].

pub mod asof;
pub mod planner;

pub use asof::AsofRelationPlanner;
pub use planner::QuiverPlanner;
