//! The fred connection pool: reconnects forever with exponential backoff, fails commands fast
//! while disconnected (so reads fall back to L1 at once), and bounds every command in time.

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::UnresponsiveConfig;

use crate::config::RedisConfig;

pub(super) fn build_pool(config: &RedisConfig) -> Result<Pool, fred::error::Error> {
    builder(config)?.build_pool(config.pool_size)
}

/// A dedicated connection for the L1 invalidation channel; fred resubscribes after reconnects.
pub(super) fn build_subscriber(
    config: &RedisConfig,
) -> Result<SubscriberClient, fred::error::Error> {
    builder(config)?.build_subscriber_client()
}

fn builder(config: &RedisConfig) -> Result<Builder, fred::error::Error> {
    let mut redis_config = Config::from_url(config.url.expose())?;
    // Retry the first connection as any later one: Redis may come up after persona (and with
    // `required_to_start = false`, persona must find it when it does).
    redis_config.fail_fast = false;
    let command_timeout = config.command_timeout;
    let mut builder = Builder::from_config(redis_config);
    builder
        .with_performance_config(|perf| {
            perf.default_command_timeout = command_timeout;
        })
        .with_connection_config(|conn| {
            conn.connection_timeout = command_timeout * 4;
            conn.internal_command_timeout = command_timeout * 4;
            // Retrying is the ingest loop's job (it must not move offsets meanwhile); a read must
            // not wait for reconnects.
            conn.max_command_attempts = 1;
            conn.unresponsive = UnresponsiveConfig {
                max_timeout: Some(command_timeout * 4),
                interval: Duration::from_millis(500),
            };
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
    Ok(builder)
}

/// Starts the pool's connection tasks and waits up to `timeout` for them to connect, through
/// the failed attempts the reconnect policy retries.
pub(super) async fn connect(pool: &Pool, timeout: Duration) -> bool {
    let _connection_tasks = pool.connect_pool();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, pool.wait_for_connect()).await {
            Ok(Ok(())) => return true,
            Err(_) => return false,
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "redis not reachable yet; retrying");
                tokio::time::sleep_until(
                    deadline.min(tokio::time::Instant::now() + Duration::from_millis(200)),
                )
                .await;
            }
        }
    }
}
