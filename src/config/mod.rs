//! The one typed configuration tree: built-in defaults, then an optional TOML file, then
//! `PERSONA_<SECTION>__<KEY>` environment variables, validated once at start.
//!
//! Keys are snake_case in the file and in the environment alike
//! (`[kafka] group_id` ⇔ `PERSONA_KAFKA__GROUP_ID`). Durations are human (`"250ms"`, `"30d"`).
//! Only variables with a `__` after the prefix are read, so other `PERSONA_…` variables (such as
//! the connector's `${env:PERSONA_PG_PASSWORD}`) never trip `deny_unknown_fields`.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

mod kafka;

pub use kafka::{KafkaConfig, LibrdkafkaSettings, default_topics};

/// Errors found while loading or validating the configuration. Each names the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: `{field}` {problem}")]
    Invalid { field: &'static str, problem: String },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub cache: CacheConfig,
    pub api: ApiConfig,
    pub postgres: PostgresConfig,
    pub connect: ConnectConfig,
    pub features: FeaturesConfig,
    pub recommend: RecommendConfig,
    pub ops: OpsConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// How often replication slots (Postgres) and connector states (Kafka Connect) are polled,
    /// and the dashboard's history sampled.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self { interval: Duration::from_secs(5) }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecommendConfig {
    /// How often the product index (trending, viewed together) and the percentile rankings are
    /// published, with the products that changed or whose windows moved evaluated again.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// A storefront page waits this long for the user's features, then renders with popular
    /// products and says so.
    #[serde(with = "humantime_serde")]
    pub render_deadline: Duration,
}

impl Default for RecommendConfig {
    fn default() -> Self {
        Self { refresh: Duration::from_secs(1), render_deadline: Duration::from_millis(50) }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeaturesConfig {
    /// Feature definitions file; the built-in `features.toml` when unset.
    pub definitions: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://…` (or `rediss://` for TLS) for one server, `redis-cluster://host:port?node=
    /// host:port&…` for a Redis Cluster (any of its nodes; the others are discovered).
    pub url: Sensitive<String>,
    pub pool_size: usize,
    /// Every key persona writes starts with `<key_prefix>:`, so several deployments (or tests)
    /// can share one Redis.
    pub key_prefix: String,
    /// A command that takes longer fails (and a read falls back to L1).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Feature state of an entity not written for this long expires from Redis.
    #[serde(with = "humantime_serde")]
    pub state_ttl: Duration,
    /// Refuse to start when Redis is unreachable; when false, start and serve L1/missing.
    pub required_to_start: bool,
    /// How long start-up waits for Redis (with `required_to_start`) before giving up: Redis
    /// may come up after persona, or be slow to accept connections under load.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// How feature state is written (every layout is always read): `dictionary`; an earlier
    /// layout while instances that do not read the newest still run (a rolling upgrade, see
    /// [`StateEncoding`]).
    pub state_encoding: StateEncoding,
    /// With `state_encoding = "dictionary"` and no dictionary in Redis yet, a writer trains one
    /// after writing this many shares (and samples twice as many if zstd could not train on
    /// them). 0: this instance trains none, and writes with one only once another trained it.
    pub state_dictionary_samples: usize,
    /// Replicas that must hold a feature write before it counts as done (Redis `WAIT`): with 1,
    /// a primary killed right after acknowledging loses nothing when its replica takes over.
    /// 0 for a Redis without replicas.
    pub min_replica_acks: u32,
    /// On a Redis Cluster, a batch of fewer shares than this is flushed together with the
    /// batches of other partitions waiting at the same time (group commit): fewer Redis calls
    /// and less CPU per event, for up to a flush of waiting (BENCHMARKS.md, "Group commit on the
    /// cluster under load"). 0 writes every batch alone. Ignored on one Redis server.
    pub group_commit_below: usize,
}

/// What `redis.url` may name: one server, or a Redis Cluster, each with or without TLS.
const REDIS_SCHEMES: [&str; 4] = ["redis", "rediss", "redis-cluster", "rediss-cluster"];

/// The layout of the feature state persona writes to Redis (see `store::codec`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateEncoding {
    /// [`Self::Parts`], each value compressed with a zstd dictionary trained on the
    /// deployment's own shares once there is one, facts' times in their largest common unit
    /// (versions 14 to 19).
    #[default]
    Dictionary,
    /// The binary layout, features in columns, each share a head and a part for each large
    /// feature, so that a change rewrites only the parts it fed; each value compressed with zstd
    /// from a few hundred bytes (versions 6 to 9): while instances that read only up to version
    /// 9 run.
    Parts,
    /// The binary layout, features in columns, one value per share, compressed with zstd from a
    /// few hundred bytes (version 5): while instances that read only up to version 5 run.
    Zstd,
    /// The binary layout, features in rows, compressed (version 3): while instances that read
    /// only up to version 3 run (a rolling upgrade).
    Zstd3,
    /// The binary layout, features in rows, uncompressed (version 2): while instances that read
    /// only up to version 2 run.
    Binary,
    /// JSON: while instances older than the binary layout run.
    Json,
}

impl StateEncoding {
    /// Whether a share is written as a head and parts (see `store::codec::parts`).
    pub fn writes_parts(self) -> bool {
        matches!(self, Self::Dictionary | Self::Parts)
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: Sensitive("redis://127.0.0.1:6379".into()),
            pool_size: 4,
            key_prefix: "persona".into(),
            min_replica_acks: 0,
            group_commit_below: 64,
            command_timeout: Duration::from_millis(500),
            state_ttl: Duration::from_secs(30 * 24 * 3600),
            required_to_start: true,
            startup_timeout: Duration::from_secs(30),
            state_encoding: StateEncoding::Dictionary,
            state_dictionary_samples: 2_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Upper bound of the in-process L1 cache, in bytes of serialized state.
    pub max_bytes: u64,
    /// Memory, across all partitions an instance owns, for the states ingest keeps between
    /// batches (`engine::owned`): a share kept is not read from Redis again. `0` keeps none, and
    /// every batch reads and decodes its shares from Redis.
    pub ingest_max_bytes: u64,
    /// The same for `persona rebuild`, the only writer of the generation it builds.
    pub rebuild_max_bytes: u64,
    /// L1 entries live this long. Writes invalidate other instances' copies through Redis
    /// pub/sub; this bounds staleness when such a message is missed (subscription down).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            ingest_max_bytes: 256 * 1024 * 1024,
            rebuild_max_bytes: 256 * 1024 * 1024,
            ttl: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Requests taking longer are answered 408 rather than left hanging.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests in progress at once; beyond this the API sheds load at once with 503 and
    /// `Retry-After`, so that admitted requests keep their latency. The default suits
    /// requests answered from memory in well under a millisecond of CPU.
    pub max_concurrency: usize,
    /// Live streams (`/u/{id}/live`) open at once, apart from `max_concurrency` (a stream holds
    /// no request slot once its response has started); beyond this new ones get 503 and
    /// `Retry-After`. Each takes a file descriptor: keep `ulimit -n` above it.
    pub max_streams: usize,
    /// Upper bound of each cache of the read path (evaluations, recommendation answers,
    /// storefront pages), in approximate bytes.
    pub cache_bytes: u64,
    /// Reads at "now" of an entity that has not changed reuse its evaluation from up to this
    /// long ago (the answer's `at` says when); `0s` evaluates every read. The default is the
    /// bucket width of a one-minute window: its value moves once per granule at most.
    #[serde(with = "humantime_serde")]
    pub evaluation_granularity: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            request_timeout: Duration::from_secs(2),
            max_concurrency: 128,
            max_streams: 20_000,
            cache_bytes: 64 * 1024 * 1024,
            evaluation_granularity: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// The legacy application's database; used by `persona migrate`.
    pub url: Sensitive<String>,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: Sensitive("postgres://persona@127.0.0.1:5432/persona".into()),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectConfig {
    /// Kafka Connect REST endpoint.
    pub url: String,
    /// How long `connector apply` waits for the connector and its tasks to be RUNNING.
    #[serde(with = "humantime_serde")]
    pub apply_timeout: Duration,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        Self { url: "http://127.0.0.1:8083".into(), apply_timeout: Duration::from_secs(60) }
    }
}

/// A value that must not appear in logs or `Debug` output (passwords, URLs with credentials).
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Sensitive<T>(pub T);

impl<T> Sensitive<T> {
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Config {
    /// Loads defaults, then `file` if given, then the environment; then validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment
            .merge(Env::prefixed("PERSONA_").filter(|key| key.as_str().contains("__")).split("__"));
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Cross-field rules, checked once at start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem: &str| {
            Err(ConfigError::Invalid { field, problem: problem.to_string() })
        };
        if self.kafka.brokers.trim().is_empty() {
            return invalid("kafka.brokers", "is empty");
        }
        if self.recommend.refresh < Duration::from_millis(100) {
            return invalid("recommend.refresh", "must be at least 100ms");
        }
        if self.recommend.render_deadline.is_zero()
            || self.recommend.render_deadline >= self.api.request_timeout
        {
            return invalid(
                "recommend.render_deadline",
                "must be more than 0 and less than api.request_timeout",
            );
        }
        if self.ops.interval < Duration::from_secs(1) {
            return invalid("ops.interval", "must be at least 1s");
        }
        if self.kafka.group_id.trim().is_empty() {
            return invalid("kafka.group_id", "is empty");
        }
        if self.kafka.instance_id.as_deref().is_some_and(|id| id.trim().is_empty()) {
            return invalid(
                "kafka.instance_id",
                "is empty (leave it unset for dynamic membership)",
            );
        }
        if self.kafka.topics.is_empty() {
            return invalid("kafka.topics", "lists no topic");
        }
        if self.kafka.topics.contains(&self.kafka.products_topic) {
            return invalid(
                "kafka.topics",
                "must not list kafka.products_topic: every instance reads it whole, outside the group",
            );
        }
        if self
            .kafka
            .dimension_topics
            .values()
            .any(|topic| self.kafka.topics.contains(topic) || *topic == self.kafka.products_topic)
        {
            return invalid(
                "kafka.dimension_topics",
                "must not list a topic of kafka.topics or kafka.products_topic",
            );
        }
        if self.kafka.dlq_topic.trim().is_empty() {
            return invalid("kafka.dlq_topic", "is empty");
        }
        if self.kafka.topics.contains(&self.kafka.dlq_topic)
            || self.kafka.products_topic == self.kafka.dlq_topic
        {
            return invalid(
                "kafka.dlq_topic",
                "must not be a topic persona consumes, or a dead letter would be read again",
            );
        }
        if !matches!(self.kafka.auto_offset_reset.as_str(), "earliest" | "latest") {
            return invalid("kafka.auto_offset_reset", "must be \"earliest\" or \"latest\"");
        }
        if self.kafka.drain_timeout >= self.kafka.session_timeout {
            return invalid(
                "kafka.drain_timeout",
                "must be shorter than kafka.session_timeout, or a slow drain gets the member evicted",
            );
        }
        if self.kafka.fetch_wait_max.is_zero() || self.kafka.fetch_wait_max > Duration::from_secs(5)
        {
            return invalid("kafka.fetch_wait_max", "must be between 1ms and 5s");
        }
        if self.kafka.batch_max_messages == 0 {
            return invalid("kafka.batch_max_messages", "must be at least 1");
        }
        if self.kafka.write_max_entities == 0 {
            return invalid("kafka.write_max_entities", "must be at least 1");
        }
        if self.kafka.partition_queue_capacity == 0 {
            return invalid("kafka.partition_queue_capacity", "must be at least 1");
        }
        if self.redis.pool_size == 0 {
            return invalid("redis.pool_size", "must be at least 1");
        }
        if self.redis.key_prefix.is_empty()
            || self.redis.key_prefix.contains(|c: char| c.is_whitespace() || c == '{' || c == '}')
        {
            // Braces would change which Redis Cluster slot persona's keys hash to.
            return invalid("redis.key_prefix", "must be non-empty, without whitespace or braces");
        }
        let url = self.redis.url.expose();
        let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
        if !REDIS_SCHEMES.contains(&scheme) {
            return invalid(
                "redis.url",
                &format!(
                    "must start with one of {}",
                    REDIS_SCHEMES.map(|s| format!("{s}://")).join(", ")
                ),
            );
        }
        if let Err(error) = fred::types::config::Config::from_url(url) {
            // The error names the part that is wrong, never the password.
            return invalid("redis.url", &format!("is not a Redis URL: {}", error.details()));
        }
        if self.redis.command_timeout.is_zero() {
            return invalid("redis.command_timeout", "must be positive");
        }
        if self.redis.state_ttl.as_secs() == 0 {
            return invalid("redis.state_ttl", "must be at least one second");
        }
        if self.cache.ttl > self.redis.state_ttl {
            return invalid("cache.ttl", "must not exceed redis.state_ttl");
        }
        if self.api.max_concurrency == 0 {
            return invalid("api.max_concurrency", "must be at least 1");
        }
        if self.api.max_streams == 0 {
            return invalid("api.max_streams", "must be at least 1");
        }
        if self.api.request_timeout.is_zero() {
            return invalid("api.request_timeout", "must be positive");
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error.
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn layers_defaults_file_then_env() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "persona.toml",
                "[kafka]\ngroup_id = \"from-file\"\nbrokers = \"file:9092\"\n[cache]\nttl = \"5s\"\n",
            )?;
            jail.set_env("PERSONA_KAFKA__GROUP_ID", "from-env");
            jail.set_env("PERSONA_PG_PASSWORD", "not-a-config-key");
            let config = Config::load(Some(Path::new("persona.toml"))).expect("loads");
            assert_eq!(config.kafka.group_id, "from-env");
            assert_eq!(config.kafka.brokers, "file:9092");
            assert_eq!(config.cache.ttl, Duration::from_secs(5));
            assert_eq!(config.redis.pool_size, RedisConfig::default().pool_size);
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("persona.toml", "[kafka]\ngroup = \"x\"\n")?;
            let error = Config::load(Some(Path::new("persona.toml"))).expect_err("rejects");
            assert!(error.to_string().contains("group"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn drain_timeout_must_be_below_session_timeout() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("PERSONA_KAFKA__DRAIN_TIMEOUT", "30s");
            let error = Config::load(None).expect_err("rejects");
            assert!(error.to_string().contains("kafka.drain_timeout"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn batch_write_and_queue_sizes_of_zero_are_rejected_by_name() {
        for field in ["batch_max_messages", "write_max_entities", "partition_queue_capacity"] {
            Jail::expect_with(|jail| {
                jail.clear_env();
                jail.set_env(format!("PERSONA_KAFKA__{}", field.to_uppercase()), "0");
                let error = Config::load(None).expect_err("rejects");
                assert!(error.to_string().contains(&format!("`kafka.{field}`")), "{error}");
                Ok(())
            });
        }
    }

    #[test]
    fn a_redis_url_is_checked_at_start_without_printing_its_password() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("PERSONA_REDIS__URL", "redis-clustr://user:hunter2@host:6379");
            let error = Config::load(None).expect_err("rejects");
            assert!(error.to_string().contains("redis.url"), "{error}");
            assert!(!error.to_string().contains("hunter2"), "{error}");
            jail.set_env("PERSONA_REDIS__URL", "redis-cluster://a:7000?node=b:7001&node=c:7002");
            Config::load(None).expect("a cluster URL is accepted");
            jail.set_env("PERSONA_REDIS__KEY_PREFIX", "{shop}");
            let error = Config::load(None).expect_err("rejects");
            assert!(error.to_string().contains("redis.key_prefix"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let config = Config::default();
        let printed = format!("{config:?}");
        assert!(!printed.contains("redis://"), "{printed}");
        assert!(!printed.contains("postgres://"), "{printed}");
    }

    #[test]
    fn librdkafka_credentials_are_redacted_and_the_rest_printed() {
        let mut config = Config::default();
        for (key, value) in [
            ("sasl.password", "hunter2"),
            ("ssl.key.password", "keypass"),
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY-----"),
            ("sasl.oauthbearer.client.secret", "oauth-secret"),
            ("sasl.username", "persona-user"),
            ("security.protocol", "SASL_SSL"),
        ] {
            config.kafka.extra_librdkafka.insert(key.into(), value.into());
        }
        let printed = format!("{config:#?}");
        for secret in ["hunter2", "keypass", "PRIVATE KEY", "oauth-secret"] {
            assert!(!printed.contains(secret), "{secret} printed: {printed}");
        }
        for shown in ["persona-user", "SASL_SSL", "sasl.password"] {
            assert!(printed.contains(shown), "{shown} missing: {printed}");
        }
    }
}
