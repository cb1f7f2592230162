//! `GET /u/{user_id}/live?since=<version>`: Server-Sent Events carrying the storefront's live
//! block (`event: live`, data: its HTML) whenever it changes. It is recomputed when the user's
//! state changes (on any instance: the store's change notifications) and, at most every
//! [`INDEX_RECHECK`], when the product index is rebuilt. A block is sent only if its version
//! differs from the last one sent, or at first from `since` (the version the page rendered).
//! The stream ends when the instance starts draining; `EventSource` reconnects by itself.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::{broadcast, watch};

use super::views::LiveBlock;
use super::{check_id, live_view};
use crate::serve::AppState;
use crate::store::EntityRef;

/// How often a change of the product index alone (trending) may re-render a live block.
const INDEX_RECHECK: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
pub(super) struct LiveQuery {
    since: Option<String>,
}

struct Listener {
    state: AppState,
    user_id: String,
    user_key: String,
    changes: broadcast::Receiver<std::sync::Arc<str>>,
    index: Option<watch::Receiver<u64>>,
    last_version: String,
    last_index_check: Instant,
    first: bool,
}

impl Listener {
    /// Waits until the user's block may have changed.
    async fn wait(&mut self) -> bool {
        loop {
            let index_changed = async {
                match self.index.as_mut() {
                    Some(index) => index.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let readiness = std::sync::Arc::clone(&self.state.readiness);
            tokio::select! {
                () = readiness.draining() => return false,
                change = self.changes.recv() => match change {
                    Ok(key) if *key == *self.user_key => return true,
                    Ok(_) => {}
                    // Fell behind: anything may have changed.
                    Err(broadcast::error::RecvError::Lagged(_)) => return true,
                    Err(broadcast::error::RecvError::Closed) => return false,
                },
                alive = index_changed => {
                    if !alive {
                        self.index = None;
                    } else if self.last_index_check.elapsed() >= INDEX_RECHECK {
                        self.last_index_check = Instant::now();
                        return true;
                    }
                }
            }
        }
    }

    /// The next block to send, or `None` when the stream ends.
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if !self.first && !self.wait().await {
                return None;
            }
            self.first = false;
            let live = live_view(&self.state, &self.user_id, None).await;
            if live.version == self.last_version {
                continue;
            }
            let html = match (LiveBlock { live: &live }).render() {
                Ok(html) => html,
                Err(error) => {
                    tracing::error!(error = %error, "live block failed to render");
                    continue;
                }
            };
            self.last_version = live.version;
            return Some((Ok(Event::default().event("live").data(html)), self));
        }
    }
}

pub(super) async fn stream(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    Query(query): Query<LiveQuery>,
) -> Response {
    if let Err(page) = check_id("user", &user_id) {
        return *page;
    }
    let listener = Listener {
        changes: state.store.subscribe_changes(),
        index: Some(state.recommender.subscribe()),
        user_key: EntityRef::user(user_id.clone()).cache_key(),
        state,
        user_id,
        last_version: query.since.unwrap_or_default(),
        last_index_check: Instant::now(),
        first: true,
    };
    sse(futures::stream::unfold(listener, Listener::next)).into_response()
}

fn sse(
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + Send + 'static> {
    Sse::new(events).keep_alive(KeepAlive::default())
}
