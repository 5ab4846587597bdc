//! Flight
