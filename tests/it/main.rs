//! Integration tests: one binary. Each test starts a real server on a pre-bound 127.0.0.1:0 listener
//! over a fresh warehouse and talks to it with arrow-flight's clients.

mod cli;
mod common;
mod feature_views;
mod features;
mod flight_sql;
mod following;
mod fuzz;
mod layers;
mod models;
mod plain_flight;
mod prepared;
mod security;
mod sources;
