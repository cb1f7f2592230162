//! persona: turns a legacy application's Postgres writes, captured by Debezium into Kafka, into
//! fresh per-user features served over HTTP.
//!
//! Data flows through the modules in this order:
//! [`cdc`] (consume + decode) → [`features`] (pure computation) → [`store`] (moka L1 + Redis L2)
//! → [`recommend`] (ranking from live features) → [`serve`] (feature reads and recommendations
//! for both front doors) → [`api`] (JSON) and [`web`] (server-rendered pages, live updates),
//! joined under one set of layers by [`http`]. Events that cannot be decoded or applied go to
//! [`dlq`]; [`ops`] gathers what the dashboard shows.
//! [`simulate`] plays the legacy application for demos. [`connect`] manages the Debezium
//! connector, [`db`] the CDC setup of the legacy database, [`config`] the one configuration
//! tree, [`telemetry`] metrics and logs.

pub mod api;
pub mod cdc;
pub mod config;
pub mod connect;
pub mod db;
pub mod decode;
pub mod dlq;
pub mod engine;
pub mod features;
pub mod http;
pub mod ops;
pub mod periodic;
pub mod recommend;
pub mod recovery;
pub mod serve;
pub mod simulate;
pub mod store;
pub mod telemetry;
pub mod web;
