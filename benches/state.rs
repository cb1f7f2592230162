//! State size per entity (issue 14's goal: a median ≤ 2 KB per simulator user in Redis and
//! ≤ 1 KB in memory, so that a million users need ≤ 2 GiB of each).
//!
//! Applies the simulator's writes (see `support::Workload`) for long enough that every window
//! but the 30-day ones holds its whole retention (the longest, 1 h plus the 15 min of history),
//! then prints, per entity, the bytes of its state as `persona` writes it to Redis (the value
//! only, see `store::codec`: compressed with a dictionary trained on every other entity's share,
//! and measured on the others; without one; and as JSON, the layout before it) and in memory (the heap a copy of it takes, counted by the allocator), the
//! features that take the most, and both projected to a million users.
//!
//! By default 2,000 users write 200 changes/s between them: each browses every 10 s, for 75
//! minutes. `persona simulate`'s load (2,000 changes/s over 300 to 1,000 users, a change every
//! half second per user) is a stress test rather than a user; it can be set too:
//!
//! ```sh
//! cargo bench --bench state
//! PERSONA_BENCH_USERS=1000 PERSONA_BENCH_RATE=2000 PERSONA_BENCH_MINUTES=2 cargo bench --bench state
//! ```

mod support;

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use chrono::TimeDelta;
use persona::config::StateEncoding;
use persona::features::{Buckets, Entity, EntityState, FeatureSet, FeatureState};
use persona::store::codec::{
    Dictionary, decode_share, decode_share_with, decode_state, encode_share, encode_share_with,
    encode_state, encode_state_as, encode_uncompressed, note_written, part_field, share_samples,
};
use support::{States, Workload, apply_message, decode_and_apply};

/// mimalloc, as `persona` runs, counting the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The memory `state` takes: its heap, and itself.
fn heap_bytes(state: &EntityState) -> usize {
    state.heap() + size_of::<EntityState>()
}

fn json_bytes<T: serde::Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).expect("a state serializes").len()
}

/// The bytes of `state` in Redis as persona writes it: its head and every part, compressed with
/// `dictionary` if any.
fn stored_bytes_with(state: &EntityState, dictionary: Option<&Dictionary>) -> usize {
    let share = encode_share_with(state, dictionary);
    share.head.len() + share.parts.iter().map(|(_, part)| part.len()).sum::<usize>()
}

/// [`stored_bytes_with`] no dictionary: what persona writes until it has one.
fn stored_bytes(state: &EntityState) -> usize {
    stored_bytes_with(state, None)
}

/// The bytes `feature` takes in its entity's stored value: the value with it alone.
fn feature_bytes(name: &str, feature: &FeatureState) -> usize {
    let mut alone = EntityState::default();
    alone.features.insert_named(name, feature.clone());
    stored_bytes(&alone) - stored_bytes(&EntityState::default())
}

/// Microseconds per state to encode every state of `states`, and to read each back.
fn codec_micros<E: Fn(&EntityState) -> Vec<u8>, D: Fn(&[u8]) -> EntityState>(
    states: &[&EntityState],
    encode: E,
    decode: D,
) -> (f64, f64) {
    let started = Instant::now();
    let encoded: Vec<Vec<u8>> = states.iter().map(|state| encode(state)).collect();
    let encoding = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let decoded: usize = encoded.iter().map(|bytes| decode(bytes).rev as usize).sum();
    let decoding = started.elapsed().as_secs_f64();
    std::hint::black_box(decoded);
    let per_state = 1e6 / states.len() as f64;
    (encoding * per_state, decoding * per_state)
}

/// Sorted sizes: their median, 90th percentile, largest and mean.
fn summary(mut sizes: Vec<usize>) -> [usize; 4] {
    sizes.sort_unstable();
    let at = |q: f64| sizes[((sizes.len() - 1) as f64 * q) as usize];
    [at(0.5), at(0.9), at(1.0), sizes.iter().sum::<usize>() / sizes.len()]
}

fn gib(bytes: f64) -> String {
    format!("{:.2} GiB", bytes / f64::from(1u32 << 30))
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return; // `cargo test --benches` lists benchmarks; this one is run, not listed.
    }
    let users = setting("PERSONA_BENCH_USERS", 2_000);
    let minutes = setting("PERSONA_BENCH_MINUTES", 75);
    let per_second = setting("PERSONA_BENCH_RATE", 200);
    let messages = minutes * 60 * per_second;
    let set = FeatureSet::load(None).expect("the shipped definitions");
    let spacing = TimeDelta::microseconds(1_000_000 / per_second as i64);
    let heap_before = LIVE.load(Ordering::Relaxed);
    let mut states = States::new();
    let mut workload = Workload::new(users, 200, spacing);
    // Applied in chunks, each generated first, so the time is decode and apply only; the last
    // tenth is the rate once states hold their whole retention.
    let chunk = (messages / 10).max(1);
    let (mut applied, mut busy, mut last) = (0, 0.0, 0.0);
    let mut early = None;
    while applied < messages {
        let batch: Vec<Vec<u8>> = workload.by_ref().take(chunk.min(messages - applied)).collect();
        let started = Instant::now();
        for message in &batch {
            decode_and_apply(&set, message, &mut states);
        }
        last = batch.len() as f64 / started.elapsed().as_secs_f64();
        busy += started.elapsed().as_secs_f64();
        applied += batch.len();
        eprintln!("applied {applied} of {messages} messages ({last:.0}/s)");
        if early.is_none() {
            // A deployment trains on the first shares it writes, which may be young ones: a
            // dictionary from the states as a tenth of the run left them (the same half of the
            // entities as below).
            early = Some(train(&states));
        }
    }
    println!(
        "{users} users, 200 products: {messages} changes over {minutes} min of event time \
         ({per_second}/s, {:.2}/s per user); decode and apply {:.0} changes/s on one core, \
         {last:.0}/s over the last tenth",
        per_second as f64 / users as f64,
        messages as f64 / busy,
    );
    // What the states hold as ingest left them, spare capacity and the generator's own few
    // bytes included; the figures per state below count a copy, which allocates exactly.
    let live = LIVE.load(Ordering::Relaxed).saturating_sub(heap_before);
    println!(
        "live heap after applying: {:.1} MB, {:.0} bytes per entity ({} entities)",
        live as f64 / 1e6,
        live as f64 / states.len() as f64,
        states.len(),
    );
    // The deployment's dictionary, as its writers train one (`store::dictionaries`): on half
    // the entities' shares here, and measured on the others'.
    let dictionary = train(&states);
    for entity in [set.shopper, set.item] {
        let dictionaries = Dictionaries { full: &dictionary, early: early.as_ref() };
        report(&set, &states, entity, dictionaries);
    }
    let changes = setting("PERSONA_BENCH_LIVE_CHANGES", 20_000);
    live_writes(&set, &mut states, &mut workload, changes, &dictionary);
}

/// Whether the dictionaries are trained on the share of `key`, or measured on it: half of the
/// entities, the same half whenever asked.
fn trains_on(key: &(Entity, String)) -> bool {
    let hash =
        key.1.bytes().fold(0u32, |hash, byte| hash.wrapping_mul(31).wrapping_add(byte.into()));
    hash.is_multiple_of(2)
}

/// A dictionary trained on the shares of `states` that [`trains_on`] picks.
fn train(states: &States) -> Dictionary {
    let trained_on: Vec<&EntityState> =
        states.iter().filter(|(key, _)| trains_on(key)).map(|(_, state)| state).collect();
    let samples: Vec<Vec<u8>> = trained_on.iter().flat_map(|state| share_samples(state)).collect();
    let started = Instant::now();
    let dictionary = Dictionary::train(&samples).expect("zstd trains on the shares");
    println!(
        "dictionary: {} bytes, trained on {} shares ({} samples, {:.1} MB) in {:.2} s",
        dictionary.bytes().len(),
        trained_on.len(),
        samples.len(),
        samples.iter().map(Vec::len).sum::<usize>() as f64 / 1e6,
        started.elapsed().as_secs_f64(),
    );
    dictionary
}

/// The dictionaries stored bytes are measured with: trained on the states as the run left them,
/// and (if any) as a tenth of it did.
#[derive(Clone, Copy)]
struct Dictionaries<'d> {
    full: &'d Dictionary,
    early: Option<&'d Dictionary>,
}

/// Reading a product merges its shares, one per source partition: `product` dealt into two
/// shares row by row (as two partitions would hold it), merged back row by row (as before) and
/// with `EntityState::merge`.
fn merge_micros(which: &str, product: &EntityState) {
    let halves = |keep: usize| {
        let mut share = EntityState::default();
        for (name, feature) in product.features.iter() {
            let rows = feature.buckets.iter().flat_map(|(bucket, cell)| {
                cell.iter().map(move |(value, rows)| (bucket, value, rows)).collect::<Vec<_>>()
            });
            let buckets: Buckets =
                rows.enumerate().filter(|(i, _)| i % 2 == keep).map(|(_, row)| row).collect();
            share.features.insert_named(name, FeatureState::new(buckets, Default::default()));
        }
        share
    };
    let (first, second) = (halves(0), halves(1));
    let rounds = setting("PERSONA_BENCH_CODEC_ROUNDS", 200);
    let time = |merge: &dyn Fn(&mut EntityState)| {
        let started = Instant::now();
        for _ in 0..rounds {
            let mut merged = first.clone();
            merge(&mut merged);
            std::hint::black_box(&merged);
        }
        started.elapsed().as_secs_f64() * 1e6 / rounds as f64
    };
    let by_row = time(&|merged| {
        for (name, theirs) in second.features.iter() {
            let ours = merged.features.entry(persona::features::intern(name));
            for (bucket, cell) in &theirs.buckets {
                for (value, rows) in cell.iter() {
                    ours.buckets.add(bucket, value, rows);
                }
            }
        }
    });
    let in_one_pass = time(&|merged| merged.merge(&second));
    println!(
        "  two shares of the {which} product merged: row by row {by_row:.1} µs, in one pass \
         {in_one_pass:.1} µs ({:.2}×)",
        in_one_pass / by_row
    );
}

/// What writing the states a change reached costs once states are full, as live ingest writes
/// them after each batch: the whole value (layout 5) against the head and the parts the change
/// fed (the default), over the next `changes` changes, each state written after each change.
fn live_writes(
    set: &FeatureSet,
    states: &mut States,
    workload: &mut Workload,
    changes: usize,
    dictionary: &Dictionary,
) {
    for state in states.values_mut() {
        note_written(state);
    }
    let (mut whole, mut parts) = (0.0, 0.0);
    let (mut whole_bytes, mut parts_bytes, mut writes) = (0, 0, 0usize);
    for message in workload.by_ref().take(changes).collect::<Vec<_>>() {
        let mut touched = Vec::new();
        apply_message(set, &message, states, |entity, id| touched.push((entity, id.to_string())));
        for key in touched {
            let Some(state) = states.get_mut(&key) else { continue };
            // Each first in turn: the second finds the state in the caches.
            let time = |encode: &dyn Fn(&EntityState) -> usize, total: &mut f64| {
                let started = Instant::now();
                let bytes = encode(state);
                *total += started.elapsed().as_secs_f64();
                bytes
            };
            let as_parts = |state: &EntityState| {
                let share = encode_share_with(state, Some(dictionary));
                share.head.len() + share.parts.iter().map(|(_, p)| p.len()).sum::<usize>()
            };
            let as_whole = |state: &EntityState| encode_state(state).len();
            if writes % 2 == 0 {
                whole_bytes += time(&as_whole, &mut whole);
                parts_bytes += time(&as_parts, &mut parts);
            } else {
                parts_bytes += time(&as_parts, &mut parts);
                whole_bytes += time(&as_whole, &mut whole);
            }
            // What the write path does once Redis acknowledged the parts: part of their cost.
            let started = Instant::now();
            note_written(state);
            parts += started.elapsed().as_secs_f64();
            writes += 1;
        }
    }
    let per_change = |total: f64| total * 1e6 / changes as f64;
    println!(
        "\nlive writes, {changes} changes ({:.2} states written per change): encoding per change, \
         one value (v5) {:.1} µs, head and parts fed, with the dictionary {:.1} µs ({:.2}×); \
         bytes written per change \
         {} and {} ({:.2}×)",
        writes as f64 / changes as f64,
        per_change(whole),
        per_change(parts),
        parts / whole,
        whole_bytes / changes,
        parts_bytes / changes,
        parts_bytes as f64 / whole_bytes as f64,
    );
}

fn report(set: &FeatureSet, states: &States, entity: Entity, dictionaries: Dictionaries<'_>) {
    let dictionary = dictionaries.full;
    let of: Vec<&EntityState> =
        states.iter().filter(|((e, _), _)| *e == entity).map(|(_, state)| state).collect();
    if of.is_empty() {
        return;
    }
    let held_out = |dictionary| {
        let held_out = states.iter().filter(|(key, _)| key.0 == entity && !trains_on(key));
        summary(held_out.map(|(_, state)| stored_bytes_with(state, Some(dictionary))).collect())
    };
    let redis = held_out(dictionary);
    let early = held_out(dictionaries.early.unwrap_or(dictionary));
    let no_dictionary = summary(of.iter().map(|state| stored_bytes(state)).collect());
    let as_parts = |state: &&EntityState| {
        let share = encode_share(state);
        share.head.len() + share.parts.iter().map(|(_, part)| part.len()).sum::<usize>()
    };
    let as_parts = summary(of.iter().map(as_parts).collect());
    let one_value = summary(of.iter().map(|state| encode_state(state).len()).collect());
    let uncompressed = summary(of.iter().map(|state| encode_uncompressed(state).len()).collect());
    // The layout before features were written in columns, compressed: the reference.
    let rows = |state: &&EntityState| encode_state_as(state, StateEncoding::Zstd3).map(|b| b.len());
    let in_rows = summary(of.iter().map(|state| rows(state).expect("encodes")).collect());
    let json = summary(of.iter().map(json_bytes).collect());
    let memory = summary(of.iter().map(|state| heap_bytes(state)).collect());
    let estimated = summary(of.iter().map(|state| state.approx_bytes()).collect());
    println!("\n{entity} ({} states)            median     p90     max    mean", of.len());
    let rows = [
        ("Redis", redis),
        ("Redis, early dictionary", early),
        ("Redis, no dictionary", no_dictionary),
        ("Redis, as `parts` (v6-9)", as_parts),
        ("Redis, one value (v5)", one_value),
        ("Redis, v5 uncompressed", uncompressed),
        ("Redis, in rows (v3)", in_rows),
        ("Redis, as JSON", json),
        ("memory", memory),
        ("memory, L1's estimate", estimated),
    ];
    for (what, [median, p90, max, mean]) in rows {
        println!("  {what:<22} {median:>8} {p90:>7} {max:>7} {mean:>7} bytes");
    }
    let decode = |bytes: &[u8]| decode_state(bytes).expect("reads back");
    let (encoding, decoding) = codec_micros(&of, encode_state, decode);
    let json_codec = codec_micros(
        &of,
        |state| serde_json::to_vec(state).expect("serializes"),
        |bytes| serde_json::from_slice(bytes).expect("reads back"),
    );
    println!(
        "  per state, one value (v5): encode {encoding:.1} µs, decode {decoding:.1} µs (as JSON: {:.1} µs, {:.1} µs)",
        json_codec.0, json_codec.1
    );
    // The same state over and over, in the caches: the cost of the work itself. The state of
    // median size, so that runs compare (the states' order is a hash map's).
    let mut by_size = of.clone();
    by_size.sort_by_cached_key(|state| stored_bytes(state));
    let one = vec![by_size[by_size.len() / 2]; setting("PERSONA_BENCH_CODEC_ROUNDS", 200)];
    let (encoding, decoding) = codec_micros(&one, encode_state, decode);
    println!(
        "  one state of median size, warm, one value (v5): encode {encoding:.1} µs, decode {decoding:.1} µs"
    );
    // As the API and the index refresher read it: a head and its parts.
    let share = encode_share(one[0]);
    let mut fields: BTreeMap<String, Vec<u8>> =
        share.parts.into_iter().map(|(part, value)| (part_field("s", part), value)).collect();
    fields.insert("s".to_string(), share.head);
    let part = |part: &str| fields.get(&part_field("s", part)).map(Vec::as_slice);
    let started = Instant::now();
    for _ in &one {
        std::hint::black_box(decode_share(&fields["s"], part).expect("reads back").rev);
    }
    let decoding = started.elapsed().as_secs_f64() * 1e6 / one.len() as f64;
    println!("  one state of median size, warm, as head and parts: decode {decoding:.1} µs");
    // The same, compressed with the dictionary, as persona writes by default.
    let started = Instant::now();
    for state in &one {
        std::hint::black_box(encode_share_with(state, Some(dictionary)).head.len());
    }
    let encoding = started.elapsed().as_secs_f64() * 1e6 / one.len() as f64;
    let started = Instant::now();
    for state in &one {
        std::hint::black_box(encode_share(state).head.len());
    }
    let encoding_plain = started.elapsed().as_secs_f64() * 1e6 / one.len() as f64;
    let share = encode_share_with(one[0], Some(dictionary));
    let mut fields: BTreeMap<String, Vec<u8>> =
        share.parts.into_iter().map(|(part, value)| (part_field("s", part), value)).collect();
    fields.insert("s".to_string(), share.head);
    let part = |part: &str| fields.get(&part_field("s", part)).map(Vec::as_slice);
    let known = |_| Some(dictionary.clone());
    let started = Instant::now();
    for _ in &one {
        std::hint::black_box(decode_share_with(&fields["s"], part, &known).expect("reads").rev);
    }
    let decoding = started.elapsed().as_secs_f64() * 1e6 / one.len() as f64;
    println!(
        "  one state of median size, warm, as head and parts: encode {encoding:.1} µs with the \
         dictionary, {encoding_plain:.1} µs without; decode {decoding:.1} µs with it"
    );
    if entity == set.item {
        merge_micros("median", by_size[by_size.len() / 2]);
        merge_micros("largest", by_size[by_size.len() - 1]);
    }
    if entity == set.shopper {
        let million = 1_000_000.0;
        println!(
            "  1M {entity}s: Redis {} (median) / {} (mean), memory {} / {}",
            gib(redis[0] as f64 * million),
            gib(redis[3] as f64 * million),
            gib(memory[0] as f64 * million),
            gib(memory[3] as f64 * million),
        );
        for (what, median, goal) in [("Redis", redis[0], 2_000), ("memory", memory[0], 1_000)] {
            let verdict = if median <= goal {
                "met".to_string()
            } else {
                format!("missed, {:.2}× the goal", median as f64 / goal as f64)
            };
            println!("  issue 14's goal, {what} ≤ {goal} bytes per {entity} (median): {verdict}");
        }
    }
    let stored = largest(&of, feature_bytes);
    println!("  largest features (share of the stored value): {stored}");
    let in_memory = largest(&of, |_, feature| {
        let [buckets, facts] =
            [&feature.buckets as &dyn HeapSize, &feature.facts].map(HeapSize::heap);
        buckets + facts
    });
    println!("  largest features (share of memory): {in_memory}");
    let (mut buckets, mut facts) = (0, 0);
    for feature in of.iter().flat_map(|state| state.features.values()) {
        buckets += feature.buckets.heap();
        facts += feature.facts.heap();
    }
    println!(
        "  memory in buckets {:.0}%, in facts {:.0}%",
        buckets as f64 * 100.0 / (buckets + facts) as f64,
        facts as f64 * 100.0 / (buckets + facts) as f64
    );
}

/// The heap a value takes: what a copy of it allocates.
trait HeapSize {
    fn heap(&self) -> usize;
}

impl<T: Clone> HeapSize for T {
    fn heap(&self) -> usize {
        let before = LIVE.load(Ordering::Relaxed);
        let copy = self.clone();
        let bytes = LIVE.load(Ordering::Relaxed) - before;
        drop(copy);
        bytes
    }
}

/// The six features that take the most, by `size`, with their share of the total.
fn largest(of: &[&EntityState], size: impl Fn(&str, &FeatureState) -> usize) -> String {
    let mut by_feature: BTreeMap<&str, usize> = BTreeMap::new();
    for state in of {
        for (name, feature) in state.features.iter() {
            *by_feature.entry(name).or_default() += size(name, feature);
        }
    }
    let total: usize = by_feature.values().sum();
    let mut largest: Vec<(&str, usize)> = by_feature.into_iter().collect();
    largest.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    let shares: Vec<String> = largest
        .iter()
        .take(6)
        .map(|(name, bytes)| format!("{name} {:.0}%", *bytes as f64 * 100.0 / total as f64))
        .collect();
    shares.join(", ")
}
