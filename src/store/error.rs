//! What can go wrong talking to the store, and which failures pass by themselves.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis command failed: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("redis is unreachable")]
    Unavailable,
    #[error("cannot encode state for {key}: {source}")]
    Encode { key: String, source: serde_json::Error },
    /// Stored shares persona cannot read; they were set aside (see `write::quarantine`).
    #[error("unreadable feature state set aside: {shares:?}")]
    Unreadable { shares: Vec<String> },
    /// The partition has no claim at all any more (Redis lost its data): nobody else wrote it
    /// under a newer one, so the writer claims it again and retries.
    #[error("partition {partition} has no claim in redis any more")]
    Unclaimed { partition: String },
    /// Another writer claimed the partition since this one did: it must stop writing it.
    #[error("partition {partition} was claimed by a newer owner (epoch {owner}, ours {epoch})")]
    Fenced { partition: String, epoch: i64, owner: String },
    /// The partition `stream` applied changes after a TRUNCATE of its table before the TRUNCATE
    /// (delivered on another partition) was known: its shares mix both sides of it, and only
    /// reading the partition again from the start separates them.
    #[error("{stream} applied changes past a TRUNCATE it did not know of yet (at {truncation:?})")]
    MissedTruncate { stream: String, truncation: crate::features::Truncation },
    /// A write conditioned on the marks its batch was applied under (a snapshot run, a TRUNCATE,
    /// the stream's high and overlap; see [`super::MarksSeen`]) found one of them moved since:
    /// nothing was written, and the batch is applied again from a fresh read.
    #[error(
        "a mark the batch was applied under moved before its write (another partition recorded a snapshot run or TRUNCATE)"
    )]
    MarksMoved,
    /// A share's head would list parts its write leaves alone, but its hash is gone (its TTL
    /// passed while its writer kept the share in memory): nothing was written, and the batch is
    /// applied again from a fresh read, which finds the entity as the TTL left it.
    #[error("a share's stored parts expired before its write")]
    PartsGone,
    /// Fewer replicas than `redis.min_replica_acks` confirmed a write in time: a failover now
    /// could lose it, so it does not count as done (a replica down, or slow).
    #[error("only {acked} of {wanted} redis replicas confirmed the write in time")]
    Unreplicated { acked: i64, wanted: i64 },
    /// The flush a batch was written in with others' (see `store::group`) ended without an
    /// answer for it: its leading writer was stopped half-way, or a script answered fewer
    /// sections than it was given. Its writer applies it again.
    #[error("the grouped write this batch joined ended without an answer for it")]
    Abandoned,
    /// Redis names a current state dictionary it does not hold (or holds damaged): writers go
    /// on without one.
    #[error("redis names state dictionary {0} current but does not hold it")]
    MissingDictionary(u32),
}

/// Replies that pass: a replica promoted, a server still loading its data, a busy script, and
/// fred's own while it re-reads a cluster's layout after a node went away.
const TRANSIENT_REPLIES: [&str; 8] = [
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "MASTERDOWN",
    "READONLY",
    "CLUSTERDOWN",
    "MOVED",
    "Failed to route command",
];

impl StoreError {
    /// True for failures that pass by themselves (the connection, a timeout, a failover): retry
    /// with backoff. False for those that need someone to act (out of memory, a key of the wrong
    /// type, refused credentials, a cross-slot command): they are retried too, since the fix
    /// may come while persona runs, but reported as such.
    pub fn is_transient(&self) -> bool {
        use fred::error::ErrorKind;
        match self {
            Self::Unavailable
            | Self::Unreplicated { .. }
            | Self::MarksMoved
            | Self::PartsGone
            | Self::Abandoned => true,
            Self::Redis(error) => match error.kind() {
                ErrorKind::IO
                | ErrorKind::Timeout
                | ErrorKind::Canceled
                | ErrorKind::Backpressure
                | ErrorKind::Cluster
                | ErrorKind::Routing => true,
                _ => TRANSIENT_REPLIES.iter().any(|reply| error.details().starts_with(reply)),
            },
            Self::Encode { .. }
            | Self::Unreadable { .. }
            | Self::Fenced { .. }
            | Self::Unclaimed { .. }
            | Self::MissedTruncate { .. }
            | Self::MissingDictionary(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use fred::error::{Error, ErrorKind};

    use super::StoreError;

    fn reply(kind: ErrorKind, text: &str) -> StoreError {
        StoreError::Redis(Error::new(kind, text.to_string()))
    }

    #[test]
    fn failures_that_pass_by_themselves_are_told_from_those_that_need_someone() {
        assert!(reply(ErrorKind::Timeout, "Request timed out.").is_transient());
        assert!(reply(ErrorKind::IO, "Connection reset").is_transient());
        assert!(reply(ErrorKind::Unknown, "LOADING Redis is loading the dataset").is_transient());
        assert!(
            reply(ErrorKind::Unknown, "READONLY You can't write against a replica").is_transient()
        );
        assert!(StoreError::Unavailable.is_transient());
        assert!(reply(ErrorKind::Unknown, "Failed to route command.").is_transient());
        assert!(StoreError::Unreplicated { acked: 0, wanted: 1 }.is_transient());
        let oom = "OOM command not allowed when used memory > 'maxmemory'.";
        assert!(!reply(ErrorKind::Unknown, oom).is_transient());
        assert!(
            !reply(ErrorKind::InvalidArgument, "WRONGTYPE Operation against a key").is_transient()
        );
        assert!(!reply(ErrorKind::Auth, "WRONGPASS invalid username-password pair").is_transient());
        assert!(
            !reply(ErrorKind::Unknown, "CROSSSLOT Keys in request don't hash to the same slot")
                .is_transient()
        );
    }
}
