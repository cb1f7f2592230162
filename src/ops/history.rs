//! The last minutes of the pipeline, sampled from persona's own metrics every few seconds, for
//! the dashboard's charts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use super::exposition::{self, Series};
use crate::telemetry;

/// Samples kept: at the default 5 s interval, ten minutes.
pub const CAPACITY: usize = 120;

/// The pipeline at one moment; rates and quantiles cover the interval since the sample before.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub at: DateTime<Utc>,
    /// Change events (not heartbeats or tombstones) consumed per second.
    pub events_per_second: f64,
    /// Postgres commit → feature written, seconds.
    pub freshness_p50: Option<f64>,
    pub freshness_p99: Option<f64>,
    /// Postgres commit → Debezium processed, seconds.
    pub capture_p50: Option<f64>,
    /// Messages behind, summed over the partitions this instance owns.
    pub lag: f64,
    /// Dead letters since start.
    pub dead_letters: f64,
    /// WAL retained by replication slots, summed, bytes.
    pub slot_wal_bytes: f64,
}

/// Cumulative figures since start, from the newest scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub events: f64,
    pub decode_errors: f64,
    pub dead_letters: f64,
    pub late_events: f64,
    /// Share of feature reads L1 answered.
    pub l1_hit_ratio: Option<f64>,
    /// Share of L1 misses Redis answered.
    pub redis_hit_ratio: Option<f64>,
    /// `(topic, partition, lag)` of the partitions this instance owns.
    pub lag_by_partition: Vec<(String, String, f64)>,
}

struct Scrape {
    taken: Instant,
    events: f64,
    freshness: Vec<(f64, f64)>,
    capture: Vec<(f64, f64)>,
}

#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    samples: VecDeque<Sample>,
    totals: Totals,
    last: Option<Scrape>,
}

fn events_consumed(series: &[Series]) -> f64 {
    series
        .iter()
        .filter(|s| s.name == telemetry::EVENTS_CONSUMED)
        .filter(|s| !matches!(s.label("op"), "heartbeat" | "tombstone"))
        .map(|s| s.value)
        .sum::<f64>()
        + 0.0
}

impl History {
    pub fn samples(&self) -> Vec<Sample> {
        self.lock().samples.iter().cloned().collect()
    }

    pub fn totals(&self) -> Totals {
        self.lock().totals.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one sample from an exposition text.
    pub fn record(&self, text: &str, now: DateTime<Utc>) {
        let series = exposition::parse(text);
        let scrape = Scrape {
            taken: Instant::now(),
            events: events_consumed(&series),
            freshness: exposition::buckets(&series, telemetry::FRESHNESS_SECONDS),
            capture: exposition::buckets(&series, telemetry::CAPTURE_LAG_SECONDS),
        };
        let lookups = |tier| exposition::sum(&series, telemetry::CACHE_LOOKUPS, &[("tier", tier)]);
        let (l1, redis, none) = (lookups("l1"), lookups("redis"), lookups("none"));
        let ratio = |hits: f64, total: f64| (total > 0.0).then(|| hits / total);
        let mut lag_by_partition: Vec<(String, String, f64)> = series
            .iter()
            .filter(|s| s.name == telemetry::CONSUMER_LAG)
            .map(|s| (s.label("topic").to_string(), s.label("partition").to_string(), s.value))
            .collect();
        lag_by_partition.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let totals = Totals {
            events: scrape.events,
            decode_errors: exposition::sum(&series, telemetry::DECODE_ERRORS, &[]),
            dead_letters: exposition::sum(&series, telemetry::DEAD_LETTERS, &[]),
            late_events: exposition::sum(&series, telemetry::LATE_EVENTS, &[]),
            l1_hit_ratio: ratio(l1, l1 + redis + none),
            redis_hit_ratio: ratio(redis, redis + none),
            lag_by_partition,
        };
        let mut inner = self.lock();
        let sample = {
            let empty = Vec::new();
            let previous = inner.last.as_ref();
            let elapsed =
                previous.map_or(0.0, |p| scrape.taken.duration_since(p.taken).as_secs_f64());
            let events_per_second = match previous {
                Some(p) if elapsed > 0.0 => (scrape.events - p.events).max(0.0) / elapsed,
                _ => 0.0,
            };
            let freshness_before = previous.map_or(&empty, |p| &p.freshness);
            let capture_before = previous.map_or(&empty, |p| &p.capture);
            Sample {
                at: now,
                events_per_second,
                freshness_p50: exposition::quantile(freshness_before, &scrape.freshness, 0.5),
                freshness_p99: exposition::quantile(freshness_before, &scrape.freshness, 0.99),
                capture_p50: exposition::quantile(capture_before, &scrape.capture, 0.5),
                lag: totals.lag_by_partition.iter().map(|(_, _, lag)| lag).sum::<f64>() + 0.0,
                dead_letters: totals.dead_letters,
                slot_wal_bytes: exposition::sum(&series, telemetry::SLOT_RETAINED_WAL, &[]),
            }
        };
        inner.samples.push_back(sample);
        while inner.samples.len() > CAPACITY {
            inner.samples.pop_front();
        }
        inner.totals = totals;
        inner.last = Some(scrape);
    }

    /// Samples the metrics every `interval` until `shutdown`.
    pub fn spawn_sampler(
        self: &Arc<Self>,
        handle: PrometheusHandle,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let history = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = crate::periodic::Ticks::new(interval, shutdown);
            while ticks.next().await {
                history.record(&handle.render(), Utc::now());
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(events: u64, fast: u64, slow: u64) -> String {
        format!(
            "persona_events_consumed_total{{topic=\"t\",op=\"c\"}} {events}\n\
             persona_events_consumed_total{{topic=\"__hb\",op=\"heartbeat\"}} 1000\n\
             persona_freshness_seconds_bucket{{le=\"0.025\"}} {fast}\n\
             persona_freshness_seconds_bucket{{le=\"1\"}} {}\n\
             persona_freshness_seconds_bucket{{le=\"+Inf\"}} {}\n\
             persona_cache_lookups_total{{tier=\"l1\"}} 3\n\
             persona_cache_lookups_total{{tier=\"redis\"}} 1\n\
             persona_consumer_lag_messages{{topic=\"t\",partition=\"1\"}} 4\n\
             persona_consumer_lag_messages{{topic=\"t\",partition=\"0\"}} 2\n",
            fast + slow,
            fast + slow
        )
    }

    #[test]
    fn samples_cover_the_interval_and_totals_the_whole_run() {
        let history = History::default();
        history.record(&text(10, 10, 0), Utc::now());
        history.record(&text(30, 10, 20), Utc::now());
        let samples = history.samples();
        assert_eq!(samples.len(), 2);
        assert!(samples[1].events_per_second > 0.0);
        // The second interval saw only slow writes, whatever came before.
        assert!(samples[1].freshness_p50.expect("observed") > 0.025);
        assert!(samples[0].freshness_p50.expect("observed") <= 0.025);
        assert_eq!(samples[1].lag, 6.0);
        let totals = history.totals();
        assert_eq!(totals.events, 30.0);
        assert_eq!(totals.l1_hit_ratio, Some(0.75));
        assert_eq!(totals.redis_hit_ratio, Some(1.0));
        assert_eq!(totals.lag_by_partition[0].1, "0");
    }

    #[test]
    fn keeps_only_the_last_samples() {
        let history = History::default();
        for n in 0..(CAPACITY as u64 + 5) {
            history.record(&text(n, n, 0), Utc::now());
        }
        assert_eq!(history.samples().len(), CAPACITY);
    }
}
