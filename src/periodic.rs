//! A fixed-period tick that ends at shutdown, for the background loops (Redis health probe,
//! generation watcher, product index refresher): `while ticks.next().await { … }`.

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

pub struct Ticks {
    interval: Interval,
    shutdown: CancellationToken,
}

impl Ticks {
    /// The first tick is immediate; a late tick delays the next ones instead of bunching up.
    pub fn new(every: Duration, shutdown: CancellationToken) -> Self {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { interval, shutdown }
    }

    /// Waits for the next tick; `false` once shutdown is requested.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}
