//! The channels that announce shares written to other instances' L1 (see
//! [`super::FeatureStore::spawn_invalidation_listener`]).
//!
//! On one Redis, one channel. On a Redis Cluster, sharded channels (`SSUBSCRIBE`), whose messages
//! stay within the shard serving their slot instead of crossing every node: the main one,
//! `{<key_prefix>}:l1-invalidate`, in the slot of the marks, and [`SPREAD`] more spread evenly
//! over the slots, so that the script writing a batch's shares on any primary can announce them
//! on a channel that primary serves, in the same call (`SPUBLISH` in a script reaches only
//! channels of its node). A primary serving none of them (a cluster of hundreds) has its shares
//! announced on the main channel, in a call of its own.

use fred::types::cluster::ClusterRouting;
use fred::types::config::Server;

/// Sharded channels besides the main one: every primary of a cluster of up to this many serving
/// equal ranges of slots has one.
pub(super) const SPREAD: usize = 64;

/// The slots of a Redis Cluster.
const SLOTS: usize = 16_384;

#[derive(Debug, Clone)]
pub(super) struct Channels {
    main: String,
    /// Each spread channel with its slot, by slot; empty on one Redis.
    spread: Vec<(u16, String)>,
}

impl Channels {
    pub(super) fn new(key_prefix: &str, clustered: bool) -> Self {
        let main = format!("{{{key_prefix}}}:l1-invalidate");
        let spread = match clustered {
            true => (0..SPREAD).filter_map(|range| spread_channel(key_prefix, range)).collect(),
            false => Vec::new(),
        };
        Self { main, spread }
    }

    /// The channel every instance's writes may announce on: in the slot of the marks.
    pub(super) fn main(&self) -> &str {
        &self.main
    }

    /// Every channel an instance listens to.
    pub(super) fn all(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.main.as_str()).chain(self.spread.iter().map(|(_, name)| name.as_str()))
    }

    /// A spread channel whose slot `map` places on `primary`, if any.
    pub(super) fn on(&self, map: &ClusterRouting, primary: &Server) -> Option<&str> {
        self.spread
            .iter()
            .find(|(slot, _)| map.get_server(*slot) == Some(primary))
            .map(|(_, name)| name.as_str())
    }
}

/// The channel of the `range`th of [`SPREAD`] equal ranges of slots: the first decimal hash tag
/// whose slot falls in it (the same on every instance, so publishers and listeners agree).
fn spread_channel(key_prefix: &str, range: usize) -> Option<(u16, String)> {
    let width = SLOTS / SPREAD;
    let wanted = range * width..(range + 1) * width;
    (0..SLOTS * 64).find_map(|tag| {
        let name = format!("{{{tag}}}:{key_prefix}:l1-invalidate");
        let slot = fred::util::redis_keyslot(name.as_bytes());
        wanted.contains(&usize::from(slot)).then_some((slot, name))
    })
}

#[cfg(test)]
mod tests {
    use super::{Channels, SLOTS, SPREAD};

    #[test]
    fn one_channel_on_one_redis() {
        let channels = Channels::new("persona", false);
        assert_eq!(channels.all().collect::<Vec<_>>(), ["{persona}:l1-invalidate"]);
    }

    #[test]
    fn a_cluster_has_a_channel_in_every_range_of_slots() {
        let channels = Channels::new("persona", true);
        assert_eq!(channels.spread.len(), SPREAD);
        for (range, (slot, name)) in channels.spread.iter().enumerate() {
            assert_eq!(usize::from(*slot) / (SLOTS / SPREAD), range, "{name}");
            assert_eq!(fred::util::redis_keyslot(name.as_bytes()), *slot, "{name}");
            assert!(name.ends_with("}:persona:l1-invalidate"), "{name}");
        }
        assert_eq!(channels.all().count(), SPREAD + 1);
        assert_eq!(
            fred::util::redis_keyslot(channels.main().as_bytes()),
            fred::util::redis_keyslot(b"{persona}:owners"),
            "the main channel is in the slot of the marks"
        );
    }
}
