//! The Kafka source of ingest: consumes Debezium's topics in a consumer group, hands each
//! partition's messages in offset order to a worker, and stores an offset only once the batch
//! holding it is durable — at least once, idempotently. What a batch does is the engine's
//! ([`crate::engine`]); decoding a message is [`crate::decode`]'s; writing is [`crate::store`]'s.
//!
//! ```text
//! poll thread (BaseConsumer::poll, rebalance callbacks)                      cdc
//!   └─ per (topic, partition): bounded queue → worker task                   cdc
//!        batch → decode                                                      decode
//!              → shares (kept in memory, else Redis) → features::apply       engine
//!              → store (Redis scripts of ≤ write_max_entities, then L1)      engine → store
//!              → keep the shares                                             engine
//!              → store offset                                                cdc
//! ```
//!
//! Delivery guarantees:
//! - A message's offset is stored (and later auto-committed) only after the Redis write for it
//!   was acknowledged. A partition's messages are handled by one task, in order, so offsets are
//!   stored in order.
//! - A message that cannot be decoded is counted, logged with topic/partition/offset and
//!   produced to the dead-letter topic ([`crate::dlq`]); its offset advances with the batch once
//!   the broker acknowledged the dead letter. A failed Redis write or dead letter is retried
//!   (the partition waits).
//! - On revoke and on shutdown the affected workers finish their in-flight batch (bounded by
//!   `kafka.drain_timeout`), then stored offsets are committed synchronously.
//! - A worker that dies (a panic) is replaced, and its partition read again from the first
//!   offset whose effects were not durable yet ([`restart`]): nothing it had queued is skipped.
//! - Redelivery after a crash, and Debezium publishing events again after a Connect restart, are
//!   harmless: each state remembers the newest source position it applied per stream (see
//!   [`crate::features`]) and is written together with it.
//! - The products topic is not part of the group: [`Dimension`] reads all of it on every
//!   instance into the in-memory catalog features join through.

mod consumer;
mod context;
mod dimension;
mod partition;
mod restart;

pub use consumer::{BrokerProbe, Ingest, IngestError, Replay, Replayer, client_config};
pub use dimension::{Dimension, dimension_topics};
