//! Test-only hooks, compiled into debug builds alone, each armed by an environment variable:
//! the faults the integration tests inject into ingest (a worker's panic, a stall before a
//! write, a TRUNCATE delivered late).

use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};

use crate::features::SourceChange;

/// Test-only hook, compiled into debug builds alone: the first batch (in this process) with a
/// row holding the text `PERSONA_TEST_STOP_BEFORE_WRITE` stops the whole process (SIGSTOP)
/// between loading its states and writing them, as a long stall would; SIGCONT resumes it.
pub(super) fn injected_stop(changes: &[SourceChange]) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};
    static MARKER: OnceLock<Option<String>> = OnceLock::new();
    static FIRED: AtomicBool = AtomicBool::new(false);
    let marker = MARKER.get_or_init(|| std::env::var("PERSONA_TEST_STOP_BEFORE_WRITE").ok());
    let Some(marker) = marker else { return };
    let hit = changes.iter().flat_map(|c| [&c.before, &c.after]).flatten().any(|row| {
        row.columns.values().any(|value| value.as_key().as_deref() == Some(marker.as_str()))
    });
    if hit && !FIRED.swap(true, Ordering::AcqRel) {
        tracing::warn!("stopping the process before a write (PERSONA_TEST_STOP_BEFORE_WRITE)");
        // Raised on this thread, the one about to write: a SIGSTOP sent to the process (`kill`)
        // stops it only once some thread takes the signal, which on a loaded machine can be
        // after this thread has sent its write.
        // SAFETY: raise(3) has no preconditions; SIGSTOP cannot be caught, so no handler runs.
        unsafe {
            libc::raise(libc::SIGSTOP);
        }
    }
}

/// Test-only hook, compiled into debug builds alone: a batch holding a TRUNCATE waits
/// `PERSONA_TEST_HOLD_TRUNCATE` milliseconds before it is applied, so that the table's other
/// partitions run ahead of it, as a partition lagging behind the others would.
pub(super) async fn injected_truncate_hold(changes: &[SourceChange]) {
    use std::sync::OnceLock;
    static HOLD: OnceLock<Option<u64>> = OnceLock::new();
    let hold = HOLD.get_or_init(|| {
        std::env::var("PERSONA_TEST_HOLD_TRUNCATE").ok().and_then(|ms| ms.parse().ok())
    });
    if let Some(ms) = hold
        && changes.iter().any(|change| change.truncate)
    {
        tracing::warn!(ms, "holding a TRUNCATE back (PERSONA_TEST_HOLD_TRUNCATE)");
        tokio::time::sleep(Duration::from_millis(*ms)).await;
    }
}

/// Test-only hook, compiled into debug builds alone: the first batch (in this process) holding
/// a message that contains `PERSONA_TEST_PANIC_ON` panics, as a bug in decode or apply would.
pub(crate) fn injected_panic(batch: &[OwnedMessage]) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};
    static MARKER: OnceLock<Option<String>> = OnceLock::new();
    static FIRED: AtomicBool = AtomicBool::new(false);
    let Some(marker) = MARKER.get_or_init(|| std::env::var("PERSONA_TEST_PANIC_ON").ok()) else {
        return;
    };
    let hit = batch.iter().any(|message| {
        message.payload().is_some_and(|p| String::from_utf8_lossy(p).contains(marker.as_str()))
    });
    if hit && !FIRED.swap(true, Ordering::AcqRel) {
        panic!("injected panic (PERSONA_TEST_PANIC_ON)");
    }
}
