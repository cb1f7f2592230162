//! The ingest engine: applies a batch of one partition's change events to the entities' state and
//! makes the result durable. It routes each change to the shares it touches, keeps the shares its
//! partition owns in memory between batches ([`OwnedStates`]), reads the others from the store,
//! follows snapshot runs and TRUNCATEs across partitions, and writes what changed in fenced
//! writes of bounded size ([`writes`]). The live consumer's partition workers ([`crate::cdc`])
//! and `persona rebuild` ([`crate::recovery`]) drive it; the feature computation itself is
//! [`crate::features`]'.

mod apply;
#[cfg(debug_assertions)]
pub(crate) mod hooks;
mod owned;
mod runs;
mod truncate;
mod writes;

pub use apply::{Applier, BatchStats};
pub use owned::{OwnedBudget, OwnedStates};
