//! Every integration test, as one test binary: one link and one copy of persona and its
//! dependencies instead of one per file (twenty binaries took 1.1 GB of disk and linked each).
//! Each module is a stage or a path through the real stack; `common` is their shared harness.
//! `scripts/test` selects modules by name: `oracle` runs alone, `cluster` on the cluster stack.

mod common;

mod api;
mod browser;
mod cluster;
mod debezium_shapes;
mod dictionary;
mod ingest_owned;
mod legacy_shop;
mod metrics;
mod openapi;
mod ops;
mod oracle;
mod pipeline;
mod recovery;
mod redis_cluster;
mod redis_outage;
mod simulate;
mod sources;
mod store;
mod storefront;
