//! The pipeline dashboard (`/ops`) and the feature inspector (`/ops/users/{id}`): server-rendered,
//! refreshed by the browser every few seconds (`<meta http-equiv="refresh">`), no JavaScript.
//! Charts are SVG polylines computed here from the sampled history (`ops::History`).

use std::time::Instant;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{check_id, render};
use crate::features::FeatureStatus;
use crate::ops::history::Sample;
use crate::serve::{AppState, read_user_features};

const CHART_WIDTH: f64 = 300.0;
const CHART_HEIGHT: f64 = 60.0;
/// Seconds between the page's own refreshes.
pub const REFRESH_SECONDS: u32 = 5;
/// A present feature whose newest event is older than this is flagged in the inspector.
const STALE_AFTER: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// One small chart: a polyline over the sampled history, scaled to its own maximum.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: &'static str,
    pub latest: String,
    pub max: String,
    /// `x,y x,y …` in a `CHART_WIDTH`×`CHART_HEIGHT` box; empty without data.
    pub points: String,
    pub width: f64,
    pub height: f64,
}

/// Builds a chart of `value` over `samples`; samples without a value are left out.
pub fn chart(
    title: &'static str,
    samples: &[Sample],
    value: impl Fn(&Sample) -> Option<f64>,
    format: impl Fn(f64) -> String,
) -> Chart {
    let values: Vec<(usize, f64)> =
        samples.iter().enumerate().filter_map(|(i, s)| value(s).map(|v| (i, v))).collect();
    let max = values.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max);
    let span = samples.len().saturating_sub(1).max(1) as f64;
    let points = values
        .iter()
        .map(|(i, v)| {
            let x = *i as f64 / span * CHART_WIDTH;
            let y = if max > 0.0 {
                CHART_HEIGHT - v / max * (CHART_HEIGHT - 2.0)
            } else {
                CHART_HEIGHT
            };
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ");
    Chart {
        title,
        latest: values.last().map_or_else(|| "–".to_string(), |(_, v)| format(*v)),
        max: format(max),
        points,
        width: CHART_WIDTH,
        height: CHART_HEIGHT,
    }
}

fn millis(seconds: f64) -> String {
    format!("{:.1} ms", seconds * 1000.0)
}

fn bytes(value: f64) -> String {
    match value {
        v if v >= 1024.0 * 1024.0 * 1024.0 => format!("{:.2} GiB", v / (1024.0 * 1024.0 * 1024.0)),
        v if v >= 1024.0 * 1024.0 => format!("{:.1} MiB", v / (1024.0 * 1024.0)),
        v if v >= 1024.0 => format!("{:.1} KiB", v / 1024.0),
        v => format!("{v:.0} B"),
    }
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_string(), |r| format!("{:.1} %", r * 100.0))
}

pub struct ConnectorRow {
    pub name: String,
    pub state: String,
    pub tasks: String,
    pub healthy: bool,
    pub trace: Option<String>,
}

pub struct SlotRow {
    pub name: String,
    pub active: bool,
    pub retained: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
pub struct DashboardPage {
    pub refresh: u32,
    pub observed_at: String,
    pub connectors: Result<Vec<ConnectorRow>, String>,
    pub slots: Result<Vec<SlotRow>, String>,
    pub lag: Vec<(String, String, String)>,
    pub charts: Vec<Chart>,
    pub events: String,
    pub dead_letters: String,
    pub decode_errors: String,
    pub late_events: String,
    pub l1_hit_ratio: String,
    pub redis_hit_ratio: String,
}

pub async fn dashboard(State(state): State<AppState>) -> Response {
    let started = Instant::now();
    let samples = state.ops.history.samples();
    let totals = state.ops.history.totals();
    let observed = state.ops.observed();
    let connectors = match observed.as_ref().map(|o| &o.connectors) {
        None => Ok(Vec::new()),
        Some(Err(error)) => Err(error.clone()),
        Some(Ok(list)) => Ok(list
            .iter()
            .map(|c| ConnectorRow {
                name: c.name.clone(),
                state: c.state.clone(),
                tasks: c
                    .tasks
                    .iter()
                    .map(|t| format!("{}:{}", t.id, t.state))
                    .collect::<Vec<_>>()
                    .join(" "),
                healthy: c.is_running(),
                trace: c
                    .tasks
                    .iter()
                    .find_map(|t| t.trace.clone())
                    .or_else(|| c.trace.clone())
                    .map(|t| t.lines().next().unwrap_or_default().to_string()),
            })
            .collect()),
    };
    let slots = match observed.as_ref().map(|o| &o.slots) {
        None => Ok(Vec::new()),
        Some(Err(error)) => Err(error.clone()),
        Some(Ok(list)) => Ok(list
            .iter()
            .map(|s| SlotRow {
                name: s.name.clone(),
                active: s.active,
                retained: bytes(s.retained_wal_bytes as f64),
            })
            .collect()),
    };
    let charts = vec![
        chart(
            "Events per second",
            &samples,
            |s| Some(s.events_per_second),
            |v| format!("{v:.1}/s"),
        ),
        chart("Freshness p50 (commit → feature)", &samples, |s| s.freshness_p50, millis),
        chart("Freshness p99", &samples, |s| s.freshness_p99, millis),
        chart("Capture lag p50 (commit → Debezium)", &samples, |s| s.capture_p50, millis),
        chart("Consumer lag (messages)", &samples, |s| Some(s.lag), |v| format!("{v:.0}")),
        chart("Slot WAL retained", &samples, |s| Some(s.slot_wal_bytes), bytes),
    ];
    let page = DashboardPage {
        refresh: REFRESH_SECONDS,
        observed_at: observed
            .and_then(|o| o.at)
            .map_or_else(|| "not yet".to_string(), |at| at.format("%H:%M:%S UTC").to_string()),
        connectors,
        slots,
        lag: totals
            .lag_by_partition
            .iter()
            .map(|(topic, partition, lag)| (topic.clone(), partition.clone(), format!("{lag:.0}")))
            .collect(),
        charts,
        events: format!("{:.0}", totals.events),
        dead_letters: format!("{:.0}", totals.dead_letters),
        decode_errors: format!("{:.0}", totals.decode_errors),
        late_events: format!("{:.0}", totals.late_events),
        l1_hit_ratio: ratio(totals.l1_hit_ratio),
        redis_hit_ratio: ratio(totals.redis_hit_ratio),
    };
    render(&page, started)
}

pub struct FeatureRow {
    pub name: String,
    pub status: &'static str,
    pub value: String,
    pub event_time: String,
    pub age: String,
    pub stale: bool,
}

#[derive(Template)]
#[template(path = "inspector.html")]
pub struct InspectorPage {
    pub refresh: u32,
    pub user_id: String,
    pub freshness: String,
    pub read_at: String,
    pub rows: Vec<FeatureRow>,
}

#[derive(Debug, Deserialize)]
pub struct PickUser {
    user_id: Option<String>,
}

/// The dashboard's inspector form submits here (GET, so it works without JavaScript).
pub async fn pick_user(Query(pick): Query<PickUser>) -> Response {
    let user_id = pick.user_id.unwrap_or_default().trim().to_string();
    if let Err(page) = check_id("user", &user_id) {
        return *page;
    }
    Redirect::to(&format!("/ops/users/{}", super::views::encode(&user_id))).into_response()
}

pub async fn inspector(State(state): State<AppState>, Path(user_id): Path<String>) -> Response {
    let started = Instant::now();
    if let Err(page) = check_id("user", &user_id) {
        return *page;
    }
    let now = Utc::now();
    let read = read_user_features(&state, &user_id, now).await;
    let rows = read
        .features
        .iter()
        .map(|(name, value)| {
            let age = value.event_time.map(|t| now - t);
            let stale = value.status == FeatureStatus::Stale
                || (value.status == FeatureStatus::Present && age.is_some_and(|a| a > STALE_AFTER));
            FeatureRow {
                name: name.clone(),
                status: match value.status {
                    FeatureStatus::Present => "present",
                    FeatureStatus::Missing => "missing",
                    FeatureStatus::Stale => "stale",
                },
                value: if value.value.is_null() { "–".into() } else { value.value.to_string() },
                event_time: value.event_time.map_or_else(|| "–".into(), format_time),
                age: age.map_or_else(
                    || "–".into(),
                    |a| {
                        humantime::format_duration(std::time::Duration::from_secs(
                            a.num_seconds().max(0) as u64,
                        ))
                        .to_string()
                    },
                ),
                stale,
            }
        })
        .collect();
    let page = InspectorPage {
        refresh: REFRESH_SECONDS,
        user_id,
        freshness: format!("{:?}", read.freshness).to_lowercase(),
        read_at: format_time(now),
        rows,
    };
    render(&page, started)
}

fn format_time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(events: f64, p50: Option<f64>) -> Sample {
        Sample {
            at: Utc::now(),
            events_per_second: events,
            freshness_p50: p50,
            freshness_p99: p50,
            capture_p50: None,
            lag: 0.0,
            dead_letters: 0.0,
            slot_wal_bytes: 0.0,
        }
    }

    #[test]
    fn charts_scale_to_their_maximum_and_skip_gaps() {
        let samples = vec![sample(0.0, None), sample(5.0, Some(0.02)), sample(10.0, Some(0.04))];
        let events = chart("e", &samples, |s| Some(s.events_per_second), |v| format!("{v}"));
        assert_eq!(events.points, "0.0,60.0 150.0,31.0 300.0,2.0");
        assert_eq!(events.latest, "10");
        let fresh = chart("f", &samples, |s| s.freshness_p50, millis);
        assert_eq!(fresh.points.split(' ').count(), 2);
        assert_eq!(fresh.latest, "40.0 ms");
        let empty = chart("x", &[], |s| Some(s.lag), millis);
        assert!(empty.points.is_empty());
        assert_eq!(empty.latest, "–");
    }

    #[test]
    fn byte_sizes_read_naturally() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
    }
}
