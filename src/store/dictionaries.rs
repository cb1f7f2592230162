//! The zstd dictionaries shares are compressed with (`redis.state_encoding = "dictionary"`, see
//! `codec::dictionary`).
//!
//! A deployment trains one, on the first shares its writers encode: each writer samples the
//! shares it writes until it holds `redis.state_dictionary_samples` of them, trains a dictionary
//! on them off the async threads, and offers it. Redis keeps every dictionary in the hash
//! `{<key_prefix>}:dictionaries`, under its id, and the one writers use under `current`; the
//! first offer sets `current` (`HSETNX`), and every writer adopts whichever dictionary that names,
//! so all of them write with the same one. A dictionary is stored before any value is written
//! with it, and never removed, so a value names one Redis holds; a reader that meets an id it
//! does not know reads it from Redis once, before decoding.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use bytes::Bytes;
use fred::prelude::*;

use super::StoreError;
use super::codec::{self, Dictionary};
use crate::features::EntityState;
use crate::telemetry;

/// The most bytes of samples kept: enough for the dictionary sizes zstd trains well from (a
/// hundred times the dictionary), and a bound on the memory sampling takes.
const SAMPLES_MAX_BYTES: usize = 16 << 20;

/// The field of `{<key_prefix>}:dictionaries` naming the dictionary writers use.
const CURRENT: &str = "current";

pub(super) struct Dictionaries {
    key: String,
    known: RwLock<HashMap<u32, Dictionary>>,
    current: RwLock<Option<Dictionary>>,
    sampling: Mutex<Sampling>,
}

/// Shares sampled for training, until a dictionary is trained or adopted.
#[derive(Default)]
struct Sampling {
    /// Shares to sample before training; 0 when this writer trains none.
    wanted: usize,
    shares: usize,
    samples: Vec<Vec<u8>>,
    bytes: usize,
    training: bool,
}

impl Dictionaries {
    /// Dictionaries kept in Redis under `key_prefix`; a writer that finds none current trains
    /// one after sampling `samples` shares (never, with 0).
    pub(super) fn new(key_prefix: &str, samples: usize) -> Self {
        Self {
            key: format!("{{{key_prefix}}}:dictionaries"),
            known: RwLock::default(),
            current: RwLock::default(),
            sampling: Mutex::new(Sampling { wanted: samples, ..Sampling::default() }),
        }
    }

    /// The dictionary writers compress with, once there is one.
    pub(super) fn current(&self) -> Option<Dictionary> {
        self.current.read().ok()?.clone()
    }

    /// The dictionary of id `id`, if read or trained already.
    pub(super) fn known(&self, id: u32) -> Option<Dictionary> {
        self.known.read().ok()?.get(&id).cloned()
    }

    /// Adopts the dictionary Redis names current, if any: writers compress with it from now on.
    pub(super) async fn load_current(&self, pool: &Pool) -> Result<Option<u32>, StoreError> {
        let current: Option<u32> = pool.hget(&self.key, CURRENT).await?;
        let Some(id) = current else { return Ok(None) };
        self.fetch(pool, vec![id]).await?;
        let dictionary = self.known(id).ok_or(StoreError::MissingDictionary(id))?;
        self.adopt(dictionary);
        Ok(Some(id))
    }

    /// The dictionaries `values` (stored heads and parts) name that are not known yet: for
    /// [`Self::fetch`] before they are decoded.
    pub(super) fn unknown<'v>(&self, values: impl Iterator<Item = &'v [u8]>) -> Vec<u32> {
        let mut wanted: Vec<u32> = values
            .filter_map(codec::dictionary_of)
            .filter(|id| self.known(*id).is_none())
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        wanted
    }

    /// Reads the dictionaries `ids` from Redis, in one command.
    pub(super) async fn fetch(&self, pool: &Pool, ids: Vec<u32>) -> Result<(), StoreError> {
        let ids: Vec<u32> = ids.into_iter().filter(|id| self.known(*id).is_none()).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let fields: Vec<String> = ids.iter().map(u32::to_string).collect();
        let stored: Vec<Option<Bytes>> = pool.hmget(&self.key, fields).await?;
        for (id, bytes) in ids.into_iter().zip(stored) {
            // A dictionary missing, or not the one its id names, leaves the values that name it
            // unreadable: they say so when decoded.
            let Some(dictionary) = bytes.and_then(|bytes| Dictionary::from_bytes(&bytes).ok())
            else {
                tracing::error!(id, key = %self.key, "state dictionary missing or damaged in redis");
                continue;
            };
            if dictionary.id() == id {
                self.remember(dictionary);
            }
        }
        Ok(())
    }

    fn remember(&self, dictionary: Dictionary) {
        if let Ok(mut known) = self.known.write() {
            known.insert(dictionary.id(), dictionary);
        }
    }

    fn adopt(&self, dictionary: Dictionary) {
        self.remember(dictionary.clone());
        tracing::info!(
            id = dictionary.id(),
            bytes = dictionary.bytes().len(),
            "state dictionary in use"
        );
        if let Ok(mut current) = self.current.write() {
            *current = Some(dictionary);
        }
        if let Ok(mut sampling) = self.sampling.lock() {
            *sampling = Sampling::default();
        }
    }

    /// Samples `state`, written without a dictionary; the samples once there are enough to
    /// train on, for the caller to [`Self::train`].
    pub(super) fn sample(&self, state: &EntityState) -> Option<Vec<Vec<u8>>> {
        let mut sampling = self.sampling.lock().ok()?;
        if sampling.wanted == 0 || sampling.training {
            return None;
        }
        if sampling.bytes < SAMPLES_MAX_BYTES {
            for sample in codec::share_samples(state) {
                sampling.bytes += sample.len();
                sampling.samples.push(sample);
            }
        }
        sampling.shares += 1;
        if sampling.shares < sampling.wanted {
            return None;
        }
        sampling.training = true;
        sampling.bytes = 0;
        Some(std::mem::take(&mut sampling.samples))
    }

    /// Trains a dictionary on `samples`, stores it in Redis and offers it as the current one;
    /// then adopts the current one (this or another writer's). On a failure, samples twice as
    /// many shares and tries again.
    pub(super) async fn train(&self, pool: &Pool, samples: Vec<Vec<u8>>) {
        let started = std::time::Instant::now();
        let count = samples.len();
        let trained = tokio::task::spawn_blocking(move || Dictionary::train(&samples)).await;
        let outcome = match trained {
            Ok(Ok(dictionary)) => {
                tracing::info!(id = dictionary.id(), samples = count, bytes = dictionary.bytes().len(), took = ?started.elapsed(), "state dictionary trained");
                self.offer(pool, dictionary).await.map_err(|error| error.to_string())
            }
            Ok(Err(error)) => Err(error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        let label = if outcome.is_ok() { "trained" } else { "failed" };
        metrics::counter!(telemetry::STATE_DICTIONARY_TRAININGS, "outcome" => label).increment(1);
        if let Err(error) = outcome {
            tracing::warn!(samples = count, error = %error, "no state dictionary this time; sampling more");
            if let Ok(mut sampling) = self.sampling.lock() {
                // Twice the shares, sampled afresh: zstd's trainer wants more than it had.
                sampling.wanted = sampling.wanted.saturating_mul(2);
                sampling.shares = 0;
                sampling.training = false;
            }
        }
    }

    async fn offer(&self, pool: &Pool, dictionary: Dictionary) -> Result<(), StoreError> {
        let bytes = Bytes::copy_from_slice(dictionary.bytes());
        let _: bool = pool.hsetnx(&self.key, dictionary.id().to_string(), bytes).await?;
        let _: bool = pool.hsetnx(&self.key, CURRENT, dictionary.id()).await?;
        // Read back rather than taken as trained: what Redis holds under the id is what every
        // reader will use.
        self.load_current(pool).await?;
        Ok(())
    }
}
