//! Group commit on a Redis Cluster: the batches waiting for a write at the same time, from every
//! partition an instance owns, are flushed together. Their marks' steps (with the shares on the
//! marks' primary) go in one `write_states.lua` call, their other shares in one
//! `write_shares.lua` call per primary; each writer has a section of its own in each call,
//! checked, written and answered as a call of its own would be (see [`super::slots`] for the
//! steps and their order). A live batch is a few shares spread over every primary: flushed
//! alone it costs a call per primary, flushed with the others waiting it shares them.
//!
//! Only batches of fewer than `redis.group_commit_below` shares (64 by default) are flushed
//! together: a larger batch's calls are shared among many shares already, and in a flush it would
//! wait behind the others' (catching up, every partition's batch is large, and their writes go on
//! side by side). A flush costs latency, so that setting at 0 writes every batch alone. No task of
//! its own: a writer that finds fewer than [`FLUSHES_IN_FLIGHT`] flushes under way leads the next
//! one, taking every batch waiting then (up to [`GROUP_MAX_SHARES`] shares); a writer whose
//! batch a flush took waits for its answer, and one that finds every turn taken waits for a turn.
//! With a single turn, a writer arriving just after a flush began waited for all of it before its
//! own could start: under load that was most of group commit's added latency.
//! Anything but the common case — no slot map, a call failing before its script answered (a stale
//! map), a primary serving none of the invalidation channels — is handed back to the writer, which
//! goes on alone with the steps of `slots`: the flush never writes a section whose call failed.

use std::collections::{BTreeMap, HashMap, VecDeque};

use fred::prelude::*;
use fred::types::config::{Options, Server};
use tokio::sync::oneshot;

use super::script_args::{push_shares, script_outcome, section_replies};
use super::slots::{refresh_slot_map, run_write_shares};
use super::write::WRITE_STATES;
use super::{FeatureStore, Fence, StoreError};
use crate::telemetry;

/// Most shares one flush takes, summed over its batches (but always at least one batch): a
/// script runs alone on its primary, so its length is every other client's wait there.
pub(super) const GROUP_MAX_SHARES: usize = 1_000;

/// Flushes under way at once, at most. A second lets the batches that arrive during a flush go
/// at once rather than after it; more would split the waiting batches into smaller flushes.
pub(super) const FLUSHES_IN_FLIGHT: usize = 2;

/// The batches waiting for a flush, and the turns to lead one.
pub(super) struct Group {
    waiting: std::sync::Mutex<VecDeque<Waiting>>,
    turns: tokio::sync::Semaphore,
}

impl Default for Group {
    fn default() -> Self {
        Self {
            waiting: std::sync::Mutex::default(),
            turns: tokio::sync::Semaphore::new(FLUSHES_IN_FLIGHT),
        }
    }
}

struct Waiting {
    request: Request,
    answer: oneshot::Sender<Result<Flushed, StoreError>>,
}

/// A writer's batch, encoded for a flush.
pub(super) struct Request {
    pub fence: Option<Fence>,
    /// Its section of the marks' step up to its shares (`FeatureStore::states_section`).
    pub section: Vec<Value>,
    /// The marks' step must run for it even without shares on the marks' primary: it has an
    /// owner to check, or marks it was applied under or moves.
    pub checks: bool,
    pub shares: Vec<Share>,
}

/// A share of a [`Request`], as `FeatureStore::encode_shares` encoded it.
pub(super) struct Share {
    pub slot: u16,
    pub hash: String,
    pub args: Vec<Value>,
    /// Its entry in an announcement: (cache key, stream, revision).
    pub announced: (String, String, u64),
}

/// What a flush did with a writer's batch.
pub(super) struct Flushed {
    /// The client that wrote it: a `WAIT` for replicas covers the writes of its connections.
    pub client: Client,
    /// False when the flush wrote nothing of the batch: its writer goes on alone.
    pub marks_written: bool,
    /// The indices of the shares the flush left to their writer, to write slot by slot and
    /// announce in the last step.
    pub left: Vec<usize>,
}

impl Group {
    /// The batches of the next flush, oldest first.
    fn take(&self) -> Vec<Waiting> {
        let mut waiting = self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut taken: Vec<Waiting> = Vec::new();
        let mut shares = 0;
        while let Some(next) = waiting.front() {
            let more = next.request.shares.len();
            if !taken.is_empty() && shares + more > GROUP_MAX_SHARES {
                break;
            }
            shares += more;
            taken.extend(waiting.pop_front());
        }
        taken
    }
}

/// A batch of a flush, and what became of it.
struct Member {
    waiting: Waiting,
    refused: Option<StoreError>,
    left: Vec<usize>,
}

impl FeatureStore {
    /// Writes `request` in a flush with the other batches waiting (see the module doc).
    pub(super) async fn flush_together(
        &self,
        client: &Client,
        request: Request,
    ) -> Result<Flushed, StoreError> {
        let (answer, mut answered) = oneshot::channel();
        self.group
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back(Waiting { request, answer });
        loop {
            let turn = self.group.turns.acquire().await.map_err(|_| StoreError::Abandoned)?;
            match answered.try_recv() {
                Ok(flushed) => return flushed,
                // Taken by a flush whose leader was dropped half-way.
                Err(oneshot::error::TryRecvError::Closed) => return Err(StoreError::Abandoned),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            // Writers woken with this one (by the same fetch) join its flush.
            tokio::task::yield_now().await;
            let members = self.group.take();
            if members.is_empty() {
                // A flush under way took this batch: its answer comes when that flush ends.
                drop(turn);
                return answered.await.unwrap_or(Err(StoreError::Abandoned));
            }
            let members =
                members.into_iter().map(|waiting| Member { waiting, refused: None, left: vec![] });
            self.flush(client, members.collect()).await;
        }
    }

    /// One flush: the marks' step, then a call per other primary; answers every member.
    async fn flush(&self, client: &Client, mut members: Vec<Member>) {
        let alone = |members: Vec<Member>| {
            for member in members {
                let flushed =
                    Flushed { client: client.clone(), marks_written: false, left: vec![] };
                let _ = member.waiting.answer.send(Ok(flushed));
            }
        };
        let Some(map) = client.cached_cluster_state() else { return alone(members) };
        let marks_slot = fred::util::redis_keyslot(self.owners_key().as_bytes());
        let marks_primary = map.get_server(marks_slot).cloned();
        // Each member's shares by primary; those on no primary the map knows are left.
        let mut on_primary: HashMap<Option<Server>, Vec<(usize, Vec<usize>)>> = HashMap::new();
        for (at, member) in members.iter_mut().enumerate() {
            let mut mine: HashMap<Option<Server>, Vec<usize>> = HashMap::new();
            for (index, share) in member.waiting.request.shares.iter().enumerate() {
                match map.get_server(share.slot) {
                    Some(primary) if Some(primary) == marks_primary.as_ref() => {
                        mine.entry(None).or_default().push(index);
                    }
                    Some(primary) => mine.entry(Some(primary.clone())).or_default().push(index),
                    None => member.left.push(index),
                }
            }
            for (primary, shares) in mine {
                on_primary.entry(primary).or_default().push((at, shares));
            }
        }
        // The marks' step, keyed `None`.
        let with_marks = on_primary.remove(&None).unwrap_or_default();
        if !self.flush_marks(client, &mut members, with_marks).await {
            return alone(members);
        }
        let mut calls = Vec::new();
        for (primary, sections) in on_primary {
            let Some(primary) = primary else { continue };
            let Some(channel) = self.channels.on(&map, &primary) else {
                for (at, shares) in sections {
                    members[at].left.extend(shares);
                }
                continue;
            };
            let sections: Vec<_> =
                sections.into_iter().filter(|(at, _)| members[*at].refused.is_none()).collect();
            if sections.is_empty() {
                continue;
            }
            let (route, args) = self.shares_sections(&mut members, &sections, channel);
            let node = Options { cluster_node: Some(primary), ..Options::default() };
            calls.push((sections, async move {
                run_write_shares(client, &node, vec![route], args).await
            }));
        }
        let (sections, calls): (Vec<_>, Vec<_>) = calls.into_iter().unzip();
        let mut refreshed = false;
        for (sections, reply) in sections.iter().zip(futures::future::join_all(calls).await) {
            match reply {
                Ok(reply) => {
                    self.note_redis("ingest_write", &Ok::<(), fred::error::Error>(()));
                    self.answer_sections(&mut members, sections, reply);
                }
                // The map may be out of date (see `write_primary`): the writers write these
                // shares slot by slot.
                Err(error) => {
                    metrics::counter!(telemetry::REDIS_ROUND_TRIPS, "op" => "ingest_write")
                        .increment(1);
                    tracing::info!(error = %error, "writing a primary's shares of a flush failed; their writers write them slot by slot");
                    if !std::mem::replace(&mut refreshed, true) {
                        refresh_slot_map(client).await;
                    }
                    for (at, shares) in sections {
                        members[*at].left.extend(shares);
                    }
                }
            }
        }
        for member in members {
            let answer = match member.refused {
                Some(refused) => Err(refused),
                None => {
                    Ok(Flushed { client: client.clone(), marks_written: true, left: member.left })
                }
            };
            let _ = member.waiting.answer.send(answer);
        }
    }

    /// The marks' step of a flush: one `write_states.lua` call with a section for every member
    /// that has something to check there, with its `shares` (indices) on the marks' primary.
    /// False when the call failed before its script answered (nothing was written).
    async fn flush_marks(
        &self,
        client: &Client,
        members: &mut [Member],
        shares: Vec<(usize, Vec<usize>)>,
    ) -> bool {
        let mut shares: BTreeMap<usize, Vec<usize>> = shares.into_iter().collect();
        let sections: Vec<(usize, Vec<usize>)> = (0..members.len())
            .filter_map(|at| {
                let mine = shares.remove(&at).unwrap_or_default();
                let checks = members[at].waiting.request.checks;
                (checks || !mine.is_empty()).then_some((at, mine))
            })
            .collect();
        if sections.is_empty() {
            return true;
        }
        let mut args = self.states_header(sections.len());
        for (at, mine) in &sections {
            let request = &mut members[*at].waiting.request;
            args.append(&mut request.section);
            let announcement = match mine.is_empty() {
                true => String::new(),
                false => announcement(request, mine),
            };
            let encoded = mine.iter().map(|index| std::mem::take(&mut request.shares[*index].args));
            push_shares(&mut args, announcement, encoded.collect());
        }
        let keys = self.marks_keys(&self.namespace(), "");
        let outcome: Result<Value, _> = WRITE_STATES.evalsha_with_reload(client, keys, args).await;
        self.note_redis("ingest_write", &outcome);
        match outcome {
            Ok(reply) => {
                let sections: Vec<_> =
                    sections.into_iter().map(|(at, _)| (at, Vec::new())).collect();
                self.answer_sections(members, &sections, reply);
                true
            }
            Err(error) => {
                tracing::info!(error = %error, "writing the marks of a flush failed; their writers write them alone");
                refresh_slot_map(client).await;
                false
            }
        }
    }

    /// The route and arguments of a `write_shares.lua` call writing `sections` (members and
    /// indices of their shares), announcing them on `channel`.
    fn shares_sections(
        &self,
        members: &mut [Member],
        sections: &[(usize, Vec<usize>)],
        channel: &str,
    ) -> (String, Vec<Value>) {
        let mut args = self.shares_header(Some(channel), sections.len());
        let mut route = String::new();
        for (at, mine) in sections {
            let request = &mut members[*at].waiting.request;
            if route.is_empty() {
                route = mine
                    .first()
                    .map(|index| request.shares[*index].hash.clone())
                    .unwrap_or_default();
            }
            let epoch = request.fence.as_ref().map(|f| f.epoch.to_string()).unwrap_or_default();
            args.push(epoch.into());
            let announcement = announcement(request, mine);
            let encoded = mine.iter().map(|index| std::mem::take(&mut request.shares[*index].args));
            push_shares(&mut args, announcement, encoded.collect());
        }
        (route, args)
    }

    /// Records each section's reply against its member; a reply missing counts as refused.
    fn answer_sections(
        &self,
        members: &mut [Member],
        sections: &[(usize, Vec<usize>)],
        reply: Value,
    ) {
        let mut replies = section_replies(reply).into_iter();
        for (at, _) in sections {
            let member = &mut members[*at];
            let outcome = match replies.next() {
                Some(reply) => script_outcome(reply, member.waiting.request.fence.as_ref()),
                None => Err(StoreError::Abandoned),
            };
            if let Err(refused) = outcome {
                member.refused.get_or_insert(refused);
            }
        }
    }
}

/// The announcement of a request's shares `indices`, as [`FeatureStore::announcement`] writes one.
fn announcement(request: &Request, indices: &[usize]) -> String {
    let announced: Vec<&(String, String, u64)> =
        indices.iter().map(|index| &request.shares[*index].announced).collect();
    // A list of strings and numbers always serializes.
    serde_json::to_string(&announced).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(shares: usize) -> Waiting {
        let share = || Share {
            slot: 0,
            hash: String::new(),
            args: Vec::new(),
            announced: Default::default(),
        };
        let request = Request {
            fence: None,
            section: Vec::new(),
            checks: false,
            shares: (0..shares).map(|_| share()).collect(),
        };
        Waiting { request, answer: oneshot::channel().0 }
    }

    fn sizes(taken: &[Waiting]) -> Vec<usize> {
        taken.iter().map(|waiting| waiting.request.shares.len()).collect()
    }

    #[test]
    fn a_flush_takes_the_oldest_batches_up_to_its_shares_and_always_one() {
        let group = Group::default();
        for shares in [400, 500, 200, 1_500, 3] {
            group.waiting.lock().expect("lock").push_back(waiting(shares));
        }
        assert_eq!(sizes(&group.take()), [400, 500]);
        assert_eq!(sizes(&group.take()), [200]);
        assert_eq!(sizes(&group.take()), [1_500], "a batch larger than a flush goes alone");
        assert_eq!(sizes(&group.take()), [3]);
        assert!(group.take().is_empty());
    }
}
