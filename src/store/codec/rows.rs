//! Layout versions 1 and 2 (3 compressed): a feature written bucket by bucket and fact by
//! fact. Still read, and written while instances that read no later layout run
//! (`redis.state_encoding = "zstd3"` or `"binary"`).

use serde::{Deserialize, Serialize};

use super::{CodecError, FeatureForm, Item, Texts, WireKey, walk_feature};
use crate::features::FeatureState;

#[derive(Serialize, Deserialize)]
pub(super) struct WireFeature {
    pub(super) name: u32,
    /// `(bucket - previous bucket, [(value, count)])`, buckets in ascending order.
    pub(super) buckets: Vec<(i64, Vec<(u32, i64)>)>,
    /// The oldest fact's time. Facts carry theirs as the difference from the fact before them
    /// (the first from this), being in time order; in layout version 1, from this for every
    /// fact, as an older persona wrote them in row key order.
    pub(super) facts_since_us: i64,
    pub(super) facts: Vec<(WireKey, u64, u32)>,
}

pub(super) fn encode_feature<'a>(
    texts: &mut Texts<'a>,
    name: &'a str,
    state: &'a FeatureState,
) -> WireFeature {
    let name = texts.place(name);
    let mut buckets: Vec<(i64, Vec<(u32, i64)>)> = Vec::new();
    let mut facts = Vec::with_capacity(state.facts.len());
    let facts_since_us = walk_feature(texts, state, |item| match item {
        Item::Bucket(delta) => buckets.push((delta, Vec::new())),
        Item::Value(place, rows) => {
            if let Some((_, cell)) = buckets.last_mut() {
                cell.push((place, rows));
            }
        }
        Item::Fact(key, since, value) => facts.push((key, since, value)),
    });
    WireFeature { name, buckets, facts_since_us, facts }
}

impl FeatureForm for WireFeature {
    fn name(&self) -> u32 {
        self.name
    }

    fn buckets(&self) -> Result<Vec<(i64, u32, i64)>, CodecError> {
        let mut bucket = 0;
        let mut flat = Vec::new();
        for (delta, cell) in &self.buckets {
            bucket = i64::wrapping_add(bucket, *delta);
            flat.extend(cell.iter().map(|(place, rows)| (bucket, *place, *rows)));
        }
        Ok(flat)
    }

    fn facts(&self) -> Result<Vec<(&WireKey, u64, u32)>, CodecError> {
        Ok(self.facts.iter().map(|(key, since, value)| (key, *since, *value)).collect())
    }

    fn facts_since_us(&self) -> i64 {
        self.facts_since_us
    }
}
