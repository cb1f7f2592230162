//! What ops watch, gathered in the background of `persona serve`: replication slot health from
//! Postgres, connector and task state from Kafka Connect (both exported as metrics), and a short
//! history of the pipeline's own metrics. The dashboard (`web::dashboard`) renders all three.

pub mod exposition;
pub mod history;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::connect::{ConnectClient, ConnectorStatus};
use crate::telemetry;

pub use history::History;

const CONNECTOR_STATES: [&str; 6] =
    ["RUNNING", "PAUSED", "FAILED", "UNASSIGNED", "RESTARTING", "STOPPED"];

/// A logical replication slot of the legacy database.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotHealth {
    pub name: String,
    pub active: bool,
    pub retained_wal_bytes: i64,
}

/// The last observation of Postgres slots and Connect, with the error when one was unreachable.
#[derive(Debug, Clone)]
pub struct Observed {
    pub slots: Result<Vec<SlotHealth>, String>,
    pub connectors: Result<Vec<ConnectorStatus>, String>,
    pub at: Option<DateTime<Utc>>,
}

/// The shared view the dashboard reads.
#[derive(Default)]
pub struct OpsView {
    pub history: Arc<History>,
    observed: Mutex<Option<Observed>>,
}

impl OpsView {
    pub fn observed(&self) -> Option<Observed> {
        self.observed.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_observed(&self, observed: Observed) {
        *self.observed.lock().unwrap_or_else(PoisonError::into_inner) = Some(observed);
    }

    /// Polls Postgres and Kafka Connect every `interval` until `shutdown`.
    pub fn spawn_poller(
        self: &Arc<Self>,
        postgres_url: String,
        connect: ConnectClient,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let view = Arc::clone(self);
        tokio::spawn(async move {
            let mut postgres: Option<tokio_postgres::Client> = None;
            let mut ticks = crate::periodic::Ticks::new(interval, shutdown);
            while ticks.next().await {
                let slots = poll_slots(&postgres_url, &mut postgres).await;
                let connectors = connect.statuses().await.map_err(|e| e.to_string());
                export(&slots, &connectors);
                view.set_observed(Observed { slots, connectors, at: Some(Utc::now()) });
            }
        })
    }
}

async fn poll_slots(
    url: &str,
    client: &mut Option<tokio_postgres::Client>,
) -> Result<Vec<SlotHealth>, String> {
    if client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
        let (fresh, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("postgres unreachable: {e}"))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "slot poller connection closed");
            }
        });
        *client = Some(fresh);
    }
    let Some(client) = client.as_ref() else { return Err("no connection".into()) };
    let rows = client
        .query(
            "SELECT slot_name::text, active, \
             COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint \
             FROM pg_replication_slots \
             WHERE slot_type = 'logical' AND database = current_database() ORDER BY slot_name",
            &[],
        )
        .await
        .map_err(|e| format!("cannot read pg_replication_slots: {e}"))?;
    Ok(rows
        .iter()
        .map(|row| SlotHealth {
            name: row.get(0),
            active: row.get(1),
            retained_wal_bytes: row.get(2),
        })
        .collect())
}

fn export(
    slots: &Result<Vec<SlotHealth>, String>,
    connectors: &Result<Vec<ConnectorStatus>, String>,
) {
    for slot in slots.iter().flatten() {
        let name = slot.name.clone();
        metrics::gauge!(telemetry::SLOT_RETAINED_WAL, "slot" => name.clone())
            .set(slot.retained_wal_bytes as f64);
        metrics::gauge!(telemetry::SLOT_ACTIVE, "slot" => name)
            .set(f64::from(u8::from(slot.active)));
    }
    for connector in connectors.iter().flatten() {
        for state in CONNECTOR_STATES {
            let current = f64::from(u8::from(connector.state == state));
            metrics::gauge!(
                telemetry::CONNECTOR_STATE,
                "connector" => connector.name.clone(),
                "state" => state
            )
            .set(current);
            for task in &connector.tasks {
                let current = f64::from(u8::from(task.state == state));
                metrics::gauge!(
                    telemetry::CONNECTOR_TASK_STATE,
                    "connector" => connector.name.clone(),
                    "task" => task.id.to_string(),
                    "state" => state
                )
                .set(current);
            }
        }
    }
}
