//! Observability as an interface: every metric name persona exports is defined here, in
//! Prometheus naming (`persona_<thing>_<unit>_total`), and logging is set up once.
//!
//! Log convention: lowercase message fragments, ids as structured fields
//! (`topic`, `partition`, `offset`, `user_id`), `error = %e`. ERROR is reserved for data loss or
//! a broken invariant; a bad event from upstream is a WARN.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Declares each metric once: its constant, its kind and its HELP text (the doc comment), so
/// that the exposition describes every family (`describe`).
macro_rules! metrics {
    ($($(#[doc = $doc:literal])+ $kind:ident $name:ident = $value:literal;)+) => {
        $($(#[doc = $doc])+ pub const $name: &str = $value;)+

        /// Every metric persona exports: name, kind, HELP text.
        pub const METRICS: &[(&str, Kind, &str)] = &[$(($value, Kind::$kind, concat!($($doc),+))),+];
    };
}

/// What a metric is, in Prometheus terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum Kind {
    counter,
    gauge,
    histogram,
}

metrics! {
    /// Change events consumed; labels `topic`, `op` (`c|u|d|r|t|m`, `tombstone`, `heartbeat`).
    counter EVENTS_CONSUMED = "persona_events_consumed_total";
    /// Messages that could not be decoded or applied and were skipped; label `kind`.
    counter DECODE_ERRORS = "persona_decode_errors_total";
    /// Messages produced to the dead-letter topic; labels `topic` (where they came from), `kind`.
    counter DEAD_LETTERS = "persona_dead_letters_total";
    /// Feature state writes acknowledged by Redis.
    counter STATE_WRITES = "persona_state_writes_total";
    /// Redis round trips that failed; label `op` (see [`REDIS_ROUND_TRIPS`]).
    counter REDIS_ERRORS = "persona_redis_errors_total";
    /// Redis round trips (one command, pipeline or transaction each); label `op`: `entity_read`
    /// (API and pages), `index_read` (product index), `ingest_read`, `ingest_write`, `generation`,
    /// `ping`.
    counter REDIS_ROUND_TRIPS = "persona_redis_round_trips_total";
    /// Duration of Redis round trips, in seconds; label `op` as for [`REDIS_ROUND_TRIPS`].
    histogram REDIS_COMMAND_SECONDS = "persona_redis_command_duration_seconds";
    /// Products the index refresher evaluated again: their state changed or a window moved
    /// (all of them after missed notifications, a table mark or a generation switch).
    counter INDEX_EVALUATIONS = "persona_index_products_evaluated_total";
    /// HTTP requests served, by duration in seconds; labels `method`, `route` (the matched route
    /// pattern, never the raw path), `status`.
    histogram HTTP_REQUEST_SECONDS = "persona_http_request_duration_seconds";
    /// Live streams (`/u/{id}/live`) open now; at `api.max_streams` new ones are refused with 503.
    gauge LIVE_STREAMS = "persona_live_streams";
    /// Consumer lag of each assigned partition, in messages (high watermark minus the offset
    /// stored after the effects were durable); labels `topic`, `partition`.
    gauge CONSUMER_LAG = "persona_consumer_lag_messages";
    /// WAL Postgres retains for a replication slot, in bytes; label `slot`.
    gauge SLOT_RETAINED_WAL = "persona_replication_slot_retained_wal_bytes";
    /// 1 while a replication slot has a consumer attached (Debezium streaming), else 0; label `slot`.
    gauge SLOT_ACTIVE = "persona_replication_slot_active";
    /// 1 for the connector's current state, 0 for the others; labels `connector`, `state`
    /// (`RUNNING`, `PAUSED`, `FAILED`, `UNASSIGNED`, `RESTARTING`, `MISSING`).
    gauge CONNECTOR_STATE = "persona_connector_state";
    /// 1 for each task's current state, 0 for the others; labels `connector`, `task`, `state`.
    gauge CONNECTOR_TASK_STATE = "persona_connector_task_state";
    /// Feature reads by tier that answered; label `tier` (`l1`, `redis`, `none`).
    counter CACHE_LOOKUPS = "persona_cache_lookups_total";
    /// L1 entries dropped because another instance wrote a newer state.
    counter L1_INVALIDATIONS = "persona_l1_invalidations_total";
    /// L1 emptied whole; label `reason` (`resubscribed`: invalidations may have been missed while
    /// the subscription was down; `lagged`: the listener fell behind; `generation`: state switched).
    counter L1_CLEARS = "persona_l1_clears_total";
    /// Offsets stored for commit after their effects were durable.
    counter OFFSETS_STORED = "persona_offsets_stored_total";
    /// Kafka consumer errors reported by librdkafka.
    counter CONSUMER_ERRORS = "persona_consumer_errors_total";
    /// Partitions drained on revoke or shutdown; label `outcome` (`drained`, `timed_out`).
    counter PARTITION_DRAINS = "persona_partition_drains_total";
    /// Partition workers that died (a panic) and were replaced, their partition read again from
    /// the first change not yet written; label `topic`.
    counter WORKER_DEATHS = "persona_partition_worker_deaths_total";
    /// Batch writes refused because another instance claimed the partition since (a stale owner:
    /// paused past its session timeout); its worker stops. Label `topic`.
    counter STALE_WRITES_REFUSED = "persona_stale_writes_refused_total";
    /// Batch writes refused because a mark the batch was applied under (its table's snapshot run
    /// or TRUNCATE, its stream's high) moved before the write; the batch is applied again at
    /// once from a fresh read. Label `topic`.
    counter MARKS_MOVED = "persona_ingest_marks_moved_total";
    /// TRUNCATEs of source tables recorded (each empties every feature its table fed); label
    /// `table`.
    counter TRUNCATES = "persona_source_truncates_total";
    /// Partitions read again from the start because they applied changes after a TRUNCATE of their
    /// table (delivered on another partition) before it was recorded; label `topic`.
    counter TRUNCATE_REREADS = "persona_truncate_rereads_total";
    /// Feature writes that failed and are retried; label `class`: `transient` (connection,
    /// timeout, failover) or `permanent` (out of memory, wrong type, refused credentials: someone
    /// must act; `/readyz` says so too).
    counter WRITE_FAILURES = "persona_feature_write_failures_total";
    /// Stored feature states persona could not read; label `path` (`read`: served without it,
    /// `ingest`: set aside under `<namespace>:quarantine` and rebuilt from its partition).
    counter UNREADABLE_STATES = "persona_unreadable_states_total";
    /// zstd dictionaries trained on the shares written (`redis.state_encoding = "dictionary"`);
    /// label `outcome`: `trained` (stored in Redis, and the current one adopted) or `failed`
    /// (sampling goes on, for twice as many shares).
    counter STATE_DICTIONARY_TRAININGS = "persona_state_dictionary_trainings_total";
    /// Partitions paused because their worker's queue was full (backpressure while catching up);
    /// label `topic`.
    counter PARTITION_PAUSES = "persona_partition_pauses_total";
    /// Shares that ingest batches needed, by where they came from; label `from`: `memory` (kept
    /// by the partition's owner since an earlier batch) or `redis` (read, and decoded).
    counter INGEST_STATE_READS = "persona_ingest_state_reads_total";
    /// Memory the partition owners keep shares in between batches, in bytes (estimated; at most
    /// about `cache.ingest_max_bytes`).
    gauge INGEST_KEPT_BYTES = "persona_ingest_kept_state_bytes";
    /// Changes skipped because the state already had them (redelivery, Debezium re-publishing);
    /// label `topic`.
    counter DUPLICATES_SKIPPED = "persona_duplicate_events_total";
    /// Snapshot runs begun on a stream (go-live, or a snapshot run again), superseding what the
    /// stream delivered before; label `topic`.
    counter SNAPSHOT_RUNS = "persona_snapshot_runs_total";
    /// Streamed changes that their table's snapshot run had already read (committed after the
    /// run began and before its database snapshot): only their position is recorded.
    counter SNAPSHOT_OVERLAPS = "persona_snapshot_overlap_events_total";
    /// Rows older than their feature's window and history (or dated past the last bucket a
    /// state keeps), dropped; label `topic`.
    counter LATE_EVENTS = "persona_late_events_total";
    /// Product changes applied to this instance's in-memory catalog; label `op`.
    counter CATALOG_CHANGES = "persona_catalog_changes_total";
    /// Products in this instance's in-memory catalog.
    gauge CATALOG_PRODUCTS = "persona_catalog_products";
    /// Rebuilds of feature state; label `reason` (`command`, `redis_emptied`, `definitions_changed`).
    counter REBUILDS = "persona_rebuilds_total";
    /// Debezium's processing time minus the Postgres commit time, in seconds.
    histogram CAPTURE_LAG_SECONDS = "persona_capture_lag_seconds";
    /// Time from the Postgres commit to the feature write being acknowledged, in seconds.
    histogram FRESHNESS_SECONDS = "persona_freshness_seconds";
    /// Time from the consumer receiving a batch's first message to the batch's effects being
    /// durable, in seconds: persona's own part of freshness (`persona_freshness_seconds` adds
    /// Debezium's and Kafka's), the sum of the next two.
    histogram INGEST_LATENCY_SECONDS = "persona_ingest_latency_seconds";
    /// Time a batch's first message waited in its partition's queue, from the consumer receiving
    /// it to its worker taking the batch (behind the batch before it), in seconds.
    histogram INGEST_QUEUE_WAIT_SECONDS = "persona_ingest_queue_wait_seconds";
    /// Time from a worker taking a batch to its effects being durable: the shares read, the
    /// changes applied, the state written, retries included, in seconds.
    histogram INGEST_BATCH_SECONDS = "persona_ingest_batch_duration_seconds";
}

/// A doc comment as one HELP line: its lines joined, without Markdown code marks or links.
fn help_text(doc: &str) -> String {
    let text = doc.replace("[`", "").replace("`]", "").replace('`', "");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Registers the HELP text of every metric with the installed recorder.
fn describe() {
    for (name, kind, doc) in METRICS {
        let help = help_text(doc);
        match kind {
            Kind::counter => metrics::describe_counter!(*name, help),
            Kind::gauge => metrics::describe_gauge!(*name, help),
            Kind::histogram => metrics::describe_histogram!(*name, help),
        }
    }
}

/// Seconds; pipeline latencies are tens of milliseconds when healthy, seconds when not.
const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Seconds; Redis round trips and API requests take well under a millisecond to tens of them.
const FAST_BUCKETS: &[f64] =
    &[0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Installs the global metrics recorder and returns the handle `/metrics` renders from.
pub fn install_metrics() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(FRESHNESS_SECONDS.to_string()),
            LATENCY_BUCKETS,
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(CAPTURE_LAG_SECONDS.to_string()),
            LATENCY_BUCKETS,
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(REDIS_COMMAND_SECONDS.to_string()),
            FAST_BUCKETS,
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(HTTP_REQUEST_SECONDS.to_string()),
            FAST_BUCKETS,
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Prefix("persona_ingest_".to_string()),
            FAST_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); JSON when `PERSONA_LOG_FORMAT=json`.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a log file or collector would get the escape codes as text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if std::env::var("PERSONA_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::{METRICS, help_text};

    #[test]
    fn every_metric_has_a_one_line_help_text_and_a_prometheus_name() {
        for (name, _, doc) in METRICS {
            let help = help_text(doc);
            assert!(help.len() > 10, "{name}: {help:?}");
            assert!(!help.contains('\n') && !help.contains('`'), "{name}: {help:?}");
            assert!(name.starts_with("persona_"), "{name}");
        }
        let mut names: Vec<&str> = METRICS.iter().map(|(name, _, _)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "a metric declared twice");
    }
}
