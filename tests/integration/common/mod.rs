//! Shared harness for the integration tests. They run against the real local stack started by
//! `scripts/stack up` (Postgres, Debezium in Kafka Connect, Apache Kafka, Redis), whose addresses come
//! from `.stack/stack.env`. Each test runs its own `persona serve` process with its own consumer
//! group and Redis key prefix, so tests do not see each other's state.

pub mod capture;
pub mod oracle;
pub mod redis_cluster;
pub mod shop;

use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(60);
/// Partitions of the default topics (scripts/stack): three tables of four, and the heartbeats.
pub const DEFAULT_PARTITIONS: usize = 13;
/// A new consumer group reads every topic from the start; on a stack that has run for long
/// that is a lot of history. Below nextest's 300 s limit (.config/nextest.toml), so a test that
/// waits this long fails with its own message and its persona's log rather than being killed.
pub const CATCH_UP: Duration = Duration::from_secs(240);
/// Messages an instance may be behind and still count as caught up (other tests write too).
pub const CAUGHT_UP_WITHIN: f64 = 100.0;

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `scripts/stack up` and `source .stack/stack.env` (scripts/test does both)")
    })
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Polls `check` until it returns `Some`, or panics with the last observation after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    let mut last = String::from("never checked");
    while started.elapsed() < deadline {
        match check().await {
            Ok(value) => return value,
            Err(observed) => last = observed,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not reached within {deadline:?}; last observed: {last}");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

/// A `persona serve` child process.
pub struct Persona {
    child: Option<Child>,
    pub group: String,
    pub base_url: String,
    pub log: PathBuf,
    extra_env: Vec<(String, String)>,
    http: reqwest::Client,
}

impl Persona {
    /// Starts persona with a fresh consumer group and Redis key prefix named after `name`.
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, &unique(name), Vec::new()).await
    }

    pub async fn start_with(name: &str, group: &str, extra_env: Vec<(String, String)>) -> Self {
        let mut persona = Self {
            child: None,
            group: group.to_string(),
            base_url: String::new(),
            log: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.log", unique(name))),
            extra_env,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("http client"),
        };
        persona.spawn().await;
        persona
    }

    async fn spawn(&mut self) {
        let port = free_port();
        self.base_url = format!("http://127.0.0.1:{port}");
        let log = File::options().create(true).append(true).open(&self.log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_persona"));
        command
            .arg("serve")
            .env("PERSONA_KAFKA__GROUP_ID", &self.group)
            .env("PERSONA_REDIS__KEY_PREFIX", &self.group)
            .env("PERSONA_API__LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info,librdkafka=warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log);
        for (key, value) in &self.extra_env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().expect("spawn persona"));
        let http = self.http.clone();
        let url = format!("{}/readyz", self.base_url);
        let log = self.log.clone();
        eventually(&format!("persona ready (log: {})", log.display()), DEADLINE, || {
            let http = http.clone();
            let url = url.clone();
            async move {
                let response = http.get(&url).send().await.map_err(|e| e.to_string())?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(response.text().await.unwrap_or_default())
                }
            }
        })
        .await;
    }

    /// SIGTERM, then waits for a clean exit (see [`Self::wait_for_exit`]).
    pub async fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.signal("TERM");
        self.wait_for_exit().await;
    }

    /// Waits for the process to exit, cleanly: a failure (the Drop prints the log's end) when it
    /// has not within [`DEADLINE`], rather than a test that hangs until it is killed.
    pub async fn wait_for_exit(&mut self) {
        let Some(child) = self.child.as_mut() else { return };
        let started = Instant::now();
        let exit = loop {
            if let Some(exit) = child.try_wait().expect("wait") {
                break exit;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "persona did not exit within {DEADLINE:?} (log: {})",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.child = None;
        assert!(exit.success(), "persona exited with {exit} (log: {})", self.log.display());
    }

    /// SIGKILL: a crash, with whatever offsets were not yet committed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("wait");
        }
    }

    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill").args([format!("-{signal}"), pid]).status().expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// True while the process is stopped (SIGSTOP), from its state in /proc.
    pub fn is_stopped(&self) -> bool {
        let Some(child) = &self.child else { return false };
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
        // `pid (comm) state …`: the state follows the last parenthesis.
        stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('T'))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base_url)), "GET", path).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base_url)).json(body), "POST", path).await
    }

    /// Status and body (JSON, or the text as a JSON string when it is not JSON).
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        method: &str,
        path: &str,
    ) -> (u16, Value) {
        let response = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let body = response.text().await.expect("body");
        (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
    }

    /// Status, headers and body text (for HTML pages).
    pub async fn get_text(&self, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.text().await.expect("body"))
    }

    pub async fn features(&self, user: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/users/{user}/features")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base_url))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("body")
    }

    /// Waits until all of `partitions` assigned partitions report their lag and together are
    /// at most [`CAUGHT_UP_WITHIN`] messages behind (other tests keep writing): a new group has
    /// read the topics' history, so what is measured next is not slowed by it.
    pub async fn wait_caught_up(&self, partitions: usize, deadline: Duration) {
        eventually("persona caught up with the topics", deadline, || async {
            let metrics = self.metrics().await;
            let lags: Vec<f64> = metrics
                .lines()
                .filter(|line| line.starts_with("persona_consumer_lag_messages{"))
                .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
                .collect();
            let behind: f64 = lags.iter().sum();
            if lags.len() >= partitions && behind <= CAUGHT_UP_WITHIN {
                Ok(())
            } else {
                Err(format!("{} partitions report lag, {behind} messages behind", lags.len()))
            }
        })
        .await;
    }

    /// Waits until the user's features satisfy `expected` (feature name → JSON value).
    pub async fn wait_for_features(&self, user: &str, expected: &[(&str, Value)]) -> Value {
        self.wait_for_features_within(user, expected, DEADLINE).await
    }

    pub async fn wait_for_features_within(
        &self,
        user: &str,
        expected: &[(&str, Value)],
        deadline: Duration,
    ) -> Value {
        eventually(&format!("features of {user} = {expected:?}"), deadline, || async {
            let body = self.features(user).await;
            for (name, value) in expected {
                let actual = &body["features"][name]["value"];
                if actual != value {
                    return Err(format!("{name} = {actual} in {}", body["features"]));
                }
            }
            Ok(body)
        })
        .await
    }
}

impl Drop for Persona {
    fn drop(&mut self) {
        self.kill();
        // A failed test's persona log is gone with CI's clone: print its end with the failure.
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "--- last {} lines of {} ---\n{}",
                tail.len(),
                self.log.display(),
                tail.join("\n")
            );
        }
    }
}

/// How much of a failed test's persona log is printed.
const LOG_TAIL_LINES: usize = 60;

/// Sums a Prometheus counter over the series whose labels contain every `label="value"` given.
pub fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A connection to the legacy database, as the legacy application has.
pub async fn legacy_db() -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&env("PERSONA_POSTGRES__URL"), tokio_postgres::NoTls)
            .await
            .expect("connect to postgres");
    tokio::spawn(connection);
    client
}

/// Inserts a `user_activity` row `seconds_ago` before now; returns its id.
pub async fn insert_activity(
    db: &tokio_postgres::Client,
    user: &str,
    kind: &str,
    product: Option<&str>,
    seconds_ago: i64,
) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    db.execute(
        "INSERT INTO user_activity (id, user_id, activity_type, product_id, activity_timestamp) \
         VALUES ($1, $2, $3, $4, now() - make_interval(secs => $5::bigint))",
        &[&id, &user, &kind, &product, &seconds_ago],
    )
    .await
    .expect("insert activity");
    id
}

/// Inserts (or updates) a product as the legacy application does.
pub async fn upsert_product(
    db: &tokio_postgres::Client,
    id: &str,
    name: &str,
    category: &str,
    price: &str,
) {
    db.execute(
        "INSERT INTO products (id, name, category, brand, price, updated_at) \
         VALUES ($1, $2, $3, 'acme', $4::text::numeric, now() AT TIME ZONE 'UTC') \
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, category = EXCLUDED.category, \
         price = EXCLUDED.price, updated_at = EXCLUDED.updated_at",
        &[&id, &name, &category, &price],
    )
    .await
    .expect("upsert product");
}

/// A real `redis-server` of the test's own (append-only file, so a restart keeps its data:
/// [`OwnRedis::stop`] shuts it down with SIGTERM, which flushes the file).
pub struct OwnRedis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start(port: u16, dir: tempfile::TempDir) -> Self {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            // Tests block Redis with DEBUG SLEEP to make it slow.
            .args(["--enable-debug-command", "yes"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let started = Instant::now();
        while !Command::new("redis-cli")
            .args(["-p", &port.to_string(), "ping"])
            .output()
            .is_ok_and(|out| out.stdout.starts_with(b"PONG"))
        {
            assert!(started.elapsed() < DEADLINE, "redis-server on {port} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, dir, child: Some(child) }
    }

    pub fn stop(mut self) -> (u16, tempfile::TempDir) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: redis flushes its append-only file and exits.
            Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
            child.wait().expect("wait redis");
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        (self.port, dir)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl OwnRedis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// How many clients are subscribed to `channel` (`PUBSUB NUMSUB`).
    pub fn subscribers(&self, channel: &str) -> u64 {
        let output = self.cli(&["pubsub", "numsub", channel]);
        output.lines().nth(1).and_then(|count| count.trim().parse().ok()).unwrap_or(0)
    }

    /// Closes every connection of a type (`normal`, `pubsub`) as a network failure would.
    pub fn kill_clients(&self, kind: &str) {
        self.cli(&["client", "kill", "type", kind]);
    }

    fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs one command through redis-cli; its reply as text.
    pub fn command(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// What `redis-cli` prints for `args`, byte for byte (a binary value as stored), without
    /// its last newline.
    pub fn command_bytes(&self, args: &[&str]) -> Vec<u8> {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        let mut bytes = output.stdout;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        bytes
    }

    /// How many times Redis executed `command` (from `INFO commandstats`).
    /// Starts recording every command clients send (`MONITOR`), until [`Monitor::sent`].
    pub fn monitor(&self) -> Monitor {
        let path = self.dir.path().join(format!("monitor-{}.log", unique("m")));
        let file = File::create(&path).expect("monitor log");
        let child = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "monitor"])
            .stdout(file)
            .spawn()
            .expect("redis-cli monitor");
        let monitor = Monitor { port: self.port, path, child };
        monitor.wait_for("OK");
        monitor
    }

    pub fn command_calls(&self, command: &str) -> u64 {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "info", "commandstats"])
            .output()
            .expect("redis-cli");
        let text = String::from_utf8_lossy(&output.stdout);
        let prefix = format!("cmdstat_{command}:calls=");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse().ok())
            .unwrap_or(0)
    }
}

/// Reads the SSE stream until an event named `live` arrives; its data.
pub async fn next_live_event(stream: &mut reqwest::Response, buffer: &mut String) -> String {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if event.lines().any(|line| line == "event: live") {
                return event
                    .lines()
                    .filter_map(|line| line.strip_prefix("data: ").or(line.strip_prefix("data:")))
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            continue;
        }
        let chunk = stream.chunk().await.expect("chunk").expect("stream open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// Commands a Redis received while [`OwnRedis::monitor`] watched.
pub struct Monitor {
    port: u16,
    path: PathBuf,
    child: Child,
}

impl Monitor {
    fn wait_for(&self, text: &str) {
        let started = Instant::now();
        while !std::fs::read_to_string(&self.path).is_ok_and(|log| log.contains(text)) {
            assert!(started.elapsed() < DEADLINE, "MONITOR never showed {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The commands clients sent so far, upper-cased name first (`HGET`, `EVALSHA`…); commands
    /// scripts ran are not among them.
    pub fn sent(mut self) -> Vec<String> {
        let marker = unique("monitor-end");
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "echo", &marker])
            .output()
            .expect("redis-cli echo");
        self.wait_for(&marker);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::read_to_string(&self.path).expect("monitor log");
        // `1700000000.123456 [0 127.0.0.1:5555] "HGET" "key" …`; a script's are `[0 lua]`.
        log.lines()
            .filter(|line| !line.contains(" lua] ") && !line.contains(&marker))
            .filter_map(|line| line.split("] \"").nth(1))
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_uppercase)
            .collect()
    }
}

/// A write conditioned on marks (`MarksSeen`) lands while they hold, is refused whole once
/// another writer recorded a TRUNCATE of the table, and lands again under the marks re-read.
pub async fn check_writes_conditioned_on_marks(
    store: &persona::store::FeatureStore,
    fence: Option<&persona::store::Fence>,
) {
    use persona::features::{EntityState, Position, Truncation};
    use persona::store::{EntityRef, StoreError, TableMarks};
    let (table, stream) = ("user_activity".to_string(), "user_activity/0".to_string());
    let share = |id: &str| {
        (EntityRef::user(id).share(&stream), EntityState { rev: 1, ..EntityState::default() })
    };
    let marks_now =
        || store.load_for_write(&[], std::slice::from_ref(&table), std::slice::from_ref(&stream));
    let seen = marks_now().await.expect("load").seen;
    let none = TableMarks::default();
    store.write_batch(&mut [share("u-1")], &none, None, &seen, fence).await.expect("marks as seen");

    let truncation = Truncation { position: Position(20, 20, 1), run: None };
    let truncated =
        TableMarks { truncations: [(table.clone(), truncation)].into(), ..TableMarks::default() };
    store.write_states(Vec::new(), &truncated, fence).await.expect("another partition's TRUNCATE");
    let refused = store.write_batch(&mut [share("u-2")], &none, None, &seen, fence).await;
    assert!(matches!(refused, Err(StoreError::MarksMoved)), "{refused:?}");
    let u2 = [share("u-2").0];
    let nothing = store.load_for_write(&u2, &[], &[]).await.expect("load");
    assert!(nothing.states.is_empty(), "a refused write wrote {:?}", nothing.states);

    let seen = marks_now().await.expect("load").seen;
    assert_eq!(seen.marks().truncations.get(&table), Some(&truncation));
    store.write_batch(&mut [share("u-2")], &none, None, &seen, fence).await.expect("marks re-read");
    assert_eq!(store.load_for_write(&u2, &[], &[]).await.expect("load").states.len(), 1);
}
