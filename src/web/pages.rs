//! Storefront views kept per recommendation answer. A storefront (its live block and the page
//! around it) is a pure function of the answer it shows, and the answer holds the user's
//! evaluation and the product index it ranked from: so a view is reused exactly while the
//! service hands out the same answer (the same `Arc`), and built again as soon as it does not.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use askama::Template;

use super::views::{self, LiveView, StorefrontPage};
use crate::serve::Answer;

/// A user not shown for this long leaves the cache.
const IDLE: Duration = Duration::from_secs(30);

pub struct PageCache {
    entries: moka::sync::Cache<String, Arc<Storefront>>,
}

/// One user's storefront as built from one answer.
pub struct Storefront {
    answer: Arc<Answer>,
    pub live: LiveView,
    html: OnceLock<String>,
}

/// Roughly what a rendered storefront takes (its HTML, ~12 KB, and the view it came from).
const PAGE_BYTES: u32 = 24 * 1024;

impl PageCache {
    /// Keeps about `max_bytes` of storefronts.
    pub fn new(max_bytes: u64) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, _: &Arc<Storefront>| PAGE_BYTES)
            .time_to_idle(IDLE)
            .build();
        Self { entries }
    }

    /// The storefront built from `answer`: the one kept, when it was built from this very
    /// answer.
    pub fn storefront(&self, answer: Arc<Answer>) -> Arc<Storefront> {
        if let Some(kept) = self.entries.get(&answer.user_id)
            && Arc::ptr_eq(&kept.answer, &answer)
        {
            return kept;
        }
        let storefront = Arc::new(Storefront {
            live: views::live_view(&answer),
            answer: Arc::clone(&answer),
            html: OnceLock::new(),
        });
        self.entries.insert(answer.user_id.clone(), Arc::clone(&storefront));
        storefront
    }
}

impl Storefront {
    /// The whole page, rendered once.
    pub fn html(&self) -> Result<&str, askama::Error> {
        if let Some(html) = self.html.get() {
            return Ok(html);
        }
        let user_id = &self.answer.user_id;
        let page = StorefrontPage {
            user_id,
            live_url: format!("{}/live", views::storefront_href(user_id)),
            live: &self.live,
        };
        let html = page.render()?;
        Ok(self.html.get_or_init(|| html))
    }
}
