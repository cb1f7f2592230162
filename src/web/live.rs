//! `GET /u/{user_id}/live?since=<version>`: Server-Sent Events carrying the storefront's live
//! block (`event: live`, data: its HTML) whenever it changes. It is recomputed when the user's
//! state changes (on any instance: the store's change notifications, which wake only this
//! user's streams) and, at most every [`INDEX_RECHECK`], when the product index is rebuilt.
//! Open streams have their own budget (`api.max_streams`); past it a new one gets 503 with
//! `Retry-After`. `EventSource` gives up on a refused stream, so `frontend/static/live.js`
//! retries it with backoff; meanwhile the page keeps what it rendered. A block is sent only if
//! its version differs from the
//! last one sent, or at first from `since` (the version the page rendered).
//! The stream ends when the instance starts draining; `EventSource` reconnects by itself.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use askama::Template;
use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;

use super::pages::PageCache;
use super::views::LiveBlock;
use super::{check_id, storefront_now};
use crate::serve::{AppState, RETRY_AFTER, Watch};
use crate::store::EntityRef;

/// How often a change of the product index alone (trending) may re-render a live block. Each
/// stream starts its period at a random point, so that many open streams re-render a few at a
/// time rather than all together.
const INDEX_RECHECK: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
pub(super) struct LiveQuery {
    since: Option<String>,
}

struct Listener {
    state: AppState,
    pages: Arc<PageCache>,
    user_id: String,
    changes: Watch,
    /// The product index generation the last block was built from.
    index_seen: u64,
    next_index_check: Instant,
    last_version: String,
    first: bool,
}

impl Listener {
    /// Waits until the user's block may have changed: the user changed, or the product index
    /// was rebuilt since the last block (looked at once per [`INDEX_RECHECK`], by timer, so that
    /// an index rebuild does not wake every stream).
    async fn wait(&mut self) -> bool {
        let readiness = Arc::clone(&self.state.readiness);
        loop {
            tokio::select! {
                () = readiness.draining() => return false,
                alive = self.changes.changed() => return alive,
                () = tokio::time::sleep_until(self.next_index_check.into()) => {
                    self.next_index_check += INDEX_RECHECK;
                    if self.state.recommender.generation() != self.index_seen {
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
            self.index_seen = self.state.recommender.generation();
            let storefront = storefront_now(&self.state, &self.pages, &self.user_id, None).await;
            let live = &storefront.live;
            if live.version == self.last_version {
                continue;
            }
            let html = match (LiveBlock { live }).render() {
                Ok(html) => html,
                Err(error) => {
                    tracing::error!(error = %error, "live block failed to render");
                    continue;
                }
            };
            self.last_version.clone_from(&live.version);
            return Some((Ok(Event::default().event("live").data(html)), self));
        }
    }
}

pub(super) async fn stream(
    State(state): State<AppState>,
    Extension(pages): Extension<Arc<PageCache>>,
    Path(user_id): Path<String>,
    Query(query): Query<LiveQuery>,
) -> Response {
    if let Err(page) = check_id("user", &user_id) {
        return *page;
    }
    let Some(changes) =
        state.watchers.watch(&EntityRef::new(state.features.shopper, user_id.clone()).cache_key())
    else {
        return too_many_streams();
    };
    let listener = Listener {
        pages,
        changes,
        index_seen: 0,
        next_index_check: Instant::now() + INDEX_RECHECK.mul_f64(rand::random::<f64>()),
        state,
        user_id,
        last_version: query.since.unwrap_or_default(),
        first: true,
    };
    sse(futures::stream::unfold(listener, Listener::next)).into_response()
}

fn too_many_streams() -> Response {
    let headers = [(header::RETRY_AFTER, RETRY_AFTER), (header::CACHE_CONTROL, "no-store")];
    (StatusCode::SERVICE_UNAVAILABLE, headers, "Too many live streams are open; retry shortly.\n")
        .into_response()
}

fn sse(
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + Send + 'static> {
    Sse::new(events).keep_alive(KeepAlive::default())
}
