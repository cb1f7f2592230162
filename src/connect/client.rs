//! The Kafka Connect REST API, as persona uses it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Deserialize;

use super::ConnectError;

const STATUS_POLL: Duration = Duration::from_millis(500);
/// How long a request is retried while Connect answers that it is rebalancing. A worker
/// rebalances whenever any connector is created, updated or deleted (by anyone), and refuses
/// requests until the group settles, usually within seconds.
const REBALANCE_PATIENCE: Duration = Duration::from_secs(60);

/// Whether Connect's answer means "not now, ask again": a rebalance in progress or expected
/// (409, or 500 `RebalanceNeededException`, depending on which path the worker took), or a
/// worker not yet serving (503). Every other answer is final.
fn is_transient(status: StatusCode, message: &str) -> bool {
    status == StatusCode::CONFLICT
        || status == StatusCode::SERVICE_UNAVAILABLE
        || (status.is_server_error() && message.to_ascii_lowercase().contains("rebalanc"))
}

/// Waits between attempts at a request Connect refused for a rebalance: exponential with
/// jitter, up to [`REBALANCE_PATIENCE`] in all.
fn rebalance_delays() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(3))
        .with_jitter()
        .without_max_times()
        .with_total_delay(Some(REBALANCE_PATIENCE))
        .build()
}

/// A connector's state and its tasks', as Connect reports them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConnectorStatus {
    pub name: String,
    /// `RUNNING`, `PAUSED`, `FAILED`, `UNASSIGNED`, `RESTARTING`, `STOPPED`.
    pub state: String,
    pub worker: String,
    pub trace: Option<String>,
    pub tasks: Vec<TaskStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct TaskStatus {
    pub id: u32,
    pub state: String,
    #[serde(default, rename = "worker_id")]
    pub worker: String,
    #[serde(default)]
    pub trace: Option<String>,
}

impl ConnectorStatus {
    /// The connector and every task run (and there is at least one task).
    pub fn is_running(&self) -> bool {
        self.state == "RUNNING"
            && !self.tasks.is_empty()
            && self.tasks.iter().all(|t| t.state == "RUNNING")
    }
}

#[derive(Debug, Deserialize)]
struct RawStatus {
    name: String,
    connector: RawState,
    #[serde(default)]
    tasks: Vec<TaskStatus>,
}

#[derive(Debug, Deserialize)]
struct RawState {
    state: String,
    #[serde(default)]
    worker_id: String,
    #[serde(default)]
    trace: Option<String>,
}

impl From<RawStatus> for ConnectorStatus {
    fn from(raw: RawStatus) -> Self {
        Self {
            name: raw.name,
            state: raw.connector.state,
            worker: raw.connector.worker_id,
            trace: raw.connector.trace,
            tasks: raw.tasks,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Expanded {
    status: RawStatus,
}

/// One configuration error the plugin's own validation reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    pub key: String,
    pub message: String,
}

/// What Connect's validation of a config answered: the errors, and the values it echoes (its
/// own keys, such as `name`, after the worker resolved their placeholders; plugins' keys are
/// not echoed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginValidation {
    pub errors: Vec<PluginError>,
    pub values: BTreeMap<String, String>,
}

#[derive(Clone)]
pub struct ConnectClient {
    http: reqwest::Client,
    base: String,
}

impl ConnectClient {
    pub fn new(base: &str) -> Self {
        let http =
            reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap_or_default();
        Self { http, base: base.trim_end_matches('/').to_string() }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, source: reqwest::Error) -> ConnectError {
        ConnectError::Unreachable { url: self.base.clone(), source }
    }

    /// Connect's error, with its `message` (which lists the config errors one per line) shown
    /// as text rather than as a JSON string.
    async fn rejected(name: &str, response: reqwest::Response) -> ConnectError {
        let status = response.status();
        rejection(name, status, &error_message(response).await)
    }

    /// Sends `request`, again while Connect answers that it is rebalancing (see
    /// [`is_transient`]); any other answer, success or not, is returned as it came.
    async fn execute(
        &self,
        name: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ConnectError> {
        let mut delays = rebalance_delays();
        loop {
            // Bodies here are JSON bytes, which clone; only a streamed body would not.
            let attempt = request.try_clone().ok_or_else(|| ConnectError::Unexpected {
                what: name.to_string(),
                detail: "a request that cannot be retried".into(),
            })?;
            let response = attempt.send().await.map_err(|e| self.unreachable(e))?;
            let status = response.status();
            if status.is_success() || !(status.is_server_error() || status == StatusCode::CONFLICT)
            {
                return Ok(response);
            }
            let message = error_message(response).await;
            let Some(delay) = delays.next().filter(|_| is_transient(status, &message)) else {
                return Err(rejection(name, status, &message));
            };
            tracing::debug!(connector = name, %status, %message, ?delay, "kafka connect is rebalancing; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// The deployed config, or `None` when no such connector exists.
    pub async fn config(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ConnectError> {
        let response = self
            .execute(name, self.http.get(format!("{}/connectors/{name}/config", self.base)))
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(Self::rejected(name, response).await);
        }
        let mut config: BTreeMap<String, String> =
            response.json().await.map_err(|e| self.unreachable(e))?;
        // Connect adds the name to the config it stores; files keep it outside.
        config.remove("name");
        Ok(Some(config))
    }

    /// Creates or updates the connector (`PUT …/config`).
    pub async fn put_config(
        &self,
        name: &str,
        config: &BTreeMap<String, String>,
    ) -> Result<(), ConnectError> {
        self.send(
            name,
            self.http.put(format!("{}/connectors/{name}/config", self.base)).json(config),
        )
        .await
    }

    /// Waits until the connector and all its tasks are RUNNING; a FAILED task ends the wait
    /// with its trace. After a restart, resume or update the status read first may still be
    /// the one from before: FAILED counts only once `failed_grace` has passed.
    pub async fn wait_running(
        &self,
        name: &str,
        timeout: Duration,
        failed_grace: Duration,
    ) -> Result<(), ConnectError> {
        let started = Instant::now();
        let mut detail = String::from("no status yet");
        while started.elapsed() < timeout {
            let conclusive = started.elapsed() >= failed_grace;
            match self.status(name).await? {
                Some(status) => {
                    let failure = status
                        .tasks
                        .iter()
                        .find(|t| t.state == "FAILED")
                        .map(|t| (format!("task {}", t.id), t.trace.as_deref()))
                        .or_else(|| {
                            (status.state == "FAILED")
                                .then(|| ("connector".to_string(), status.trace.as_deref()))
                        });
                    if conclusive && let Some((what, trace)) = failure {
                        return Err(ConnectError::NotRunning {
                            name: name.to_string(),
                            waited: started.elapsed(),
                            detail: format!("{what} FAILED:\n{}", readable_trace(trace)),
                        });
                    }
                    if status.is_running() {
                        return Ok(());
                    }
                    detail = format!(
                        "connector {}, tasks [{}]",
                        status.state,
                        status
                            .tasks
                            .iter()
                            .map(|t| t.state.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                None => detail = "not found yet".into(),
            }
            tokio::time::sleep(STATUS_POLL).await;
        }
        Err(ConnectError::NotRunning { name: name.to_string(), waited: started.elapsed(), detail })
    }

    /// The connector's status; `None` when it does not exist (or Connect is rebalancing).
    pub async fn status(&self, name: &str) -> Result<Option<ConnectorStatus>, ConnectError> {
        let response = self
            .http
            .get(format!("{}/connectors/{name}/status", self.base))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        // Connect answers 5xx/409 briefly while a rebalance of its own is in progress.
        if !response.status().is_success() {
            return Ok(None);
        }
        let raw: RawStatus = response.json().await.map_err(|e| self.unreachable(e))?;
        Ok(Some(raw.into()))
    }

    /// Every deployed connector's status, by name.
    pub async fn statuses(&self) -> Result<Vec<ConnectorStatus>, ConnectError> {
        let response = self
            .execute("(all)", self.http.get(format!("{}/connectors?expand=status", self.base)))
            .await?;
        if !response.status().is_success() {
            return Err(Self::rejected("(all)", response).await);
        }
        let expanded: BTreeMap<String, Expanded> =
            response.json().await.map_err(|e| self.unreachable(e))?;
        Ok(expanded.into_values().map(|e| e.status.into()).collect())
    }

    /// The worker's and the plugin's validation of `config`
    /// (`PUT /connector-plugins/{class}/config/validate`).
    pub async fn validate(
        &self,
        config: &BTreeMap<String, String>,
    ) -> Result<PluginValidation, ConnectError> {
        let class = config.get("connector.class").cloned().unwrap_or_default();
        let plugin = class.rsplit('.').next().unwrap_or_default().to_string();
        let response = self
            .execute(
                &plugin,
                self.http
                    .put(format!("{}/connector-plugins/{plugin}/config/validate", self.base))
                    .json(config),
            )
            .await?;
        if !response.status().is_success() {
            return Err(Self::rejected(&plugin, response).await);
        }
        let body: serde_json::Value = response.json().await.map_err(|e| self.unreachable(e))?;
        let configs = body["configs"].as_array().ok_or_else(|| ConnectError::Unexpected {
            what: "config/validate".into(),
            detail: "no configs array".into(),
        })?;
        let mut validation = PluginValidation::default();
        for item in configs {
            let key = item["value"]["name"].as_str().unwrap_or_default();
            if let Some(value) = item["value"]["value"].as_str() {
                validation.values.insert(key.to_string(), value.to_string());
            }
            for message in item["value"]["errors"].as_array().into_iter().flatten() {
                validation.errors.push(PluginError {
                    key: key.to_string(),
                    message: message.as_str().unwrap_or_default().to_string(),
                });
            }
        }
        Ok(validation)
    }

    /// Restarts the connector and its tasks, or only the failed ones.
    pub async fn restart(&self, name: &str, only_failed: bool) -> Result<(), ConnectError> {
        self.send(
            name,
            self.http.post(format!(
                "{}/connectors/{name}/restart?includeTasks=true&onlyFailed={only_failed}",
                self.base
            )),
        )
        .await
    }

    pub async fn pause(&self, name: &str) -> Result<(), ConnectError> {
        self.send(name, self.http.put(format!("{}/connectors/{name}/pause", self.base))).await
    }

    pub async fn resume(&self, name: &str) -> Result<(), ConnectError> {
        self.send(name, self.http.put(format!("{}/connectors/{name}/resume", self.base))).await
    }

    pub async fn delete(&self, name: &str) -> Result<(), ConnectError> {
        self.send(name, self.http.delete(format!("{}/connectors/{name}", self.base))).await
    }

    async fn send(&self, name: &str, request: reqwest::RequestBuilder) -> Result<(), ConnectError> {
        let response = self.execute(name, request).await?;
        if !response.status().is_success() {
            return Err(Self::rejected(name, response).await);
        }
        Ok(())
    }

    /// Waits until the connector's state (connector and tasks) is `state`.
    pub async fn wait_state(
        &self,
        name: &str,
        state: &str,
        timeout: Duration,
    ) -> Result<(), ConnectError> {
        let started = Instant::now();
        let mut detail = String::from("no status yet");
        while started.elapsed() < timeout {
            if let Some(status) = self.status(name).await? {
                if status.state == state && status.tasks.iter().all(|t| t.state == state) {
                    return Ok(());
                }
                detail = format!("connector {}", status.state);
            }
            tokio::time::sleep(STATUS_POLL).await;
        }
        Err(ConnectError::NotRunning { name: name.to_string(), waited: started.elapsed(), detail })
    }
}

/// Connect's refusal of a request about `name`, its message indented under the status.
fn rejection(name: &str, status: StatusCode, message: &str) -> ConnectError {
    let body = message.lines().map(|line| format!("  {line}")).collect::<Vec<_>>().join("\n");
    ConnectError::Rejected { name: name.to_string(), status: status.as_u16(), body }
}

/// Connect's error `message` (which lists config errors one per line), or the whole body when
/// it is not Connect's JSON error.
async fn error_message(response: reqwest::Response) -> String {
    let body = response.text().await.unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|value| value["message"].as_str().map(str::to_string))
        .unwrap_or(body)
}

/// A Java stack trace cut to what a person reads: the exception lines and their causes, not
/// the frames.
pub fn readable_trace(trace: Option<&str>) -> String {
    let Some(trace) = trace else { return "  (no trace)".into() };
    let mut lines: Vec<&str> = trace
        .lines()
        .filter(|line| {
            !line.trim_start().starts_with("at ") && !line.trim_start().starts_with("...")
        })
        .take(8)
        .collect();
    if lines.is_empty() {
        lines = trace.lines().take(3).collect();
    }
    lines.iter().map(|line| format!("  {}", line.trim())).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebalances_are_retried_and_refusals_are_not() {
        let expected = "Request cannot be completed because a rebalance is expected";
        assert!(is_transient(StatusCode::INTERNAL_SERVER_ERROR, expected));
        assert!(is_transient(
            StatusCode::CONFLICT,
            "Cannot complete request momentarily due to stale configuration"
        ));
        assert!(is_transient(StatusCode::SERVICE_UNAVAILABLE, ""));
        assert!(!is_transient(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Failed to find any class that implements Connector"
        ));
        assert!(!is_transient(StatusCode::BAD_REQUEST, expected));
        assert!(!is_transient(StatusCode::NOT_FOUND, "Connector c not found"));
    }

    #[test]
    fn rebalance_retries_end() {
        let waited: Duration = rebalance_delays().take(10_000).sum();
        assert!(waited <= REBALANCE_PATIENCE, "{waited:?}");
    }

    #[test]
    fn traces_keep_the_exceptions_and_drop_frames() {
        let trace = "org.apache.kafka.connect.errors.ConnectException: boom\n\tat a.b.C.d(C.java:1)\n\tat e.f.G.h(G.java:2)\nCaused by: org.postgresql.util.PSQLException: FATAL: password authentication failed\n\t... 12 more";
        let readable = readable_trace(Some(trace));
        assert!(readable.contains("ConnectException: boom"), "{readable}");
        assert!(readable.contains("Caused by: org.postgresql"), "{readable}");
        assert!(!readable.contains("C.java"), "{readable}");
    }
}
