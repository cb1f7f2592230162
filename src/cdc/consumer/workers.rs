//! Partition workers' lifecycle, as the poll loop runs it: started with a partition's first
//! message (or, after a rebalance, at once: [`PollLoop::start_idle_workers`]), replaced when they
//! end on their own (a panic, fenced, or asking for their partition to be read again), with the
//! partition sought back to where the replacement must start (`cdc::restart`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{FENCED_RECHECK, PollLoop, SEEK_TIMEOUT};
use crate::cdc::context::{ExitReason, PartitionKey, PartitionSlot, WorkerExit};
use crate::cdc::partition::PartitionWorker;
use crate::cdc::restart::backoff;
use crate::engine::OwnedStates;
use crate::telemetry;

impl PollLoop {
    /// Replaces the workers that ended on their own (a panic, or fenced).
    pub(super) fn check_workers(&mut self) {
        let dead: Vec<(PartitionKey, i64, WorkerExit)> = {
            let mut partitions = self.consumer.context().lock();
            let keys: Vec<PartitionKey> = partitions
                .iter()
                .filter(|(_, slot)| slot.task.is_finished())
                .map(|(key, _)| key.clone())
                .collect();
            keys.into_iter()
                .filter_map(|key| {
                    let dead = partitions.remove(&key)?;
                    Some((key, dead.resume_from.load(Ordering::Acquire), dead.exit.get()))
                })
                .collect()
        };
        for (key, offset, exit) in dead {
            self.worker_ended(&key, offset, exit);
        }
    }

    pub(super) fn worker_ended(&mut self, key: &PartitionKey, offset: i64, exit: WorkerExit) {
        match exit {
            WorkerExit::Died => self.worker_died(key, offset),
            WorkerExit::Fenced => {
                tracing::warn!(
                    topic = %key.0, partition = key.1, offset, recheck_in = ?FENCED_RECHECK,
                    "partition paused: another instance owns it now; expecting the rebalance that revokes it"
                );
                self.set_paused(key, true);
                self.restarts.schedule(key, offset, Instant::now() + FENCED_RECHECK);
            }
            WorkerExit::ReadAgain => {
                tracing::warn!(topic = %key.0, partition = key.1, offset, "reading the partition again from its start, as its worker asked (the reason is logged above)");
                self.set_paused(key, true);
                self.restarts.schedule(key, offset, Instant::now());
            }
        }
    }

    /// After a rebalance, gives a worker to every assigned partition of a source that has
    /// committed offsets and no worker yet, message or not. Workers otherwise start with their
    /// partition's first message; but a worker is what notices a TRUNCATE, recorded by another
    /// partition, that its partition ran past (`PartitionWorker::run`), and a partition whose
    /// TRUNCATE was recorded during the rebalance's drain (or before a restart) may hear nothing
    /// more. One that never committed an offset has applied nothing to run past.
    pub(super) fn start_idle_workers(&mut self) {
        let context = self.consumer.context();
        if !context.assigned.swap(false, Ordering::AcqRel) {
            return;
        }
        let Ok(assignment) = self.consumer.assignment() else { return };
        let mut idle = TopicPartitionList::new();
        {
            let partitions = context.lock();
            for element in assignment.elements() {
                let key = (element.topic().to_string(), element.partition());
                if self.features.source_of_topic(&key.0).is_some()
                    && !partitions.contains_key(&key)
                    && !self.restarts.pending(&key)
                {
                    idle.add_partition(&key.0, key.1);
                }
            }
        }
        if idle.count() == 0 {
            return;
        }
        let committed = match self.consumer.committed_offsets(idle, SEEK_TIMEOUT) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(error = %error, "cannot read committed offsets for idle partitions; retrying");
                context.assigned.store(true, Ordering::Release);
                return;
            }
        };
        let mut partitions = context.lock();
        for element in committed.elements() {
            let Offset::Offset(offset) = element.offset() else { continue };
            let key = (element.topic().to_string(), element.partition());
            partitions.entry(key.clone()).or_insert_with(|| self.spawn_worker(&key, offset));
        }
    }

    /// Pauses the partition of a dead worker until its replacement is due ([`Self::restart_due`]).
    pub(super) fn worker_died(&mut self, key: &PartitionKey, offset: i64) {
        let deaths = self.restarts.died(key, offset, Instant::now());
        metrics::counter!(telemetry::WORKER_DEATHS, "topic" => key.0.clone()).increment(1);
        tracing::error!(
            topic = %key.0, partition = key.1, offset, deaths, retry_in = ?backoff(deaths),
            "partition worker died; reading the partition again from its first change not yet written"
        );
        self.set_paused(key, true);
    }

    /// Seeks the partitions of dead workers back and resumes them: a fresh worker starts with
    /// the first message fetched.
    pub(super) fn restart_due(&mut self) {
        let due = self.restarts.due(Instant::now());
        if due.is_empty() {
            return;
        }
        let assignment = self.consumer.assignment().ok();
        for (key, offset) in due {
            let (topic, partition) = (&key.0, key.1);
            let assigned =
                assignment.as_ref().is_some_and(|a| a.find_partition(topic, partition).is_some());
            if !assigned {
                // Revoked meanwhile: its next owner starts from the committed offset.
                self.restarts.forget(&key);
                continue;
            }
            match self.consumer.seek(topic, partition, Offset::Offset(offset), SEEK_TIMEOUT) {
                Ok(()) => {
                    self.set_paused(&key, false);
                    self.restarts.started(&key);
                    tracing::info!(%topic, partition, offset, "partition read again by a new worker");
                }
                Err(error) => {
                    tracing::warn!(%topic, partition, offset, error = %error, "cannot seek for a new worker; retrying");
                    self.restarts.retry(&key, Instant::now() + Duration::from_secs(1));
                }
            }
        }
    }

    pub(super) fn spawn_worker(
        &self,
        (topic, partition): &PartitionKey,
        first_offset: i64,
    ) -> PartitionSlot {
        let (queue, receiver) = mpsc::channel(self.queue_capacity);
        let stop = CancellationToken::new();
        let resume_from = Arc::new(AtomicI64::new(first_offset));
        let exit = Arc::new(ExitReason::default());
        let worker = PartitionWorker {
            topic: topic.clone(),
            partition: *partition,
            resume_from: Arc::clone(&resume_from),
            consumer: Arc::clone(&self.consumer),
            store: Arc::clone(&self.store),
            features: Arc::clone(&self.features),
            dead_letters: self.dead_letters.clone(),
            owned: std::sync::Mutex::new(OwnedStates::new(self.owned.clone())),
            batch_max: self.batch_max,
            write_max_entities: self.write_max_entities,
            topics: Arc::clone(&self.topics),
            exit: Arc::clone(&exit),
        };
        let task = self.consumer.context().runtime.spawn(worker.run(receiver, stop.clone()));
        tracing::debug!(%topic, partition, "partition worker started");
        PartitionSlot { held: None, resume_from, queue, stop, task, exit }
    }
}
