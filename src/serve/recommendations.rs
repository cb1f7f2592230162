//! Recommendations for a user: ranked from the user's features, or popular products when the
//! features are missing, unreadable or slower than the caller can wait.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Bytes;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::AppState;
use super::evaluated::{Evaluated, read_now};
use super::features::FeatureRequest;
use crate::features::Features;
use crate::recommend::{self, ProductIndex, Recommendation, UserSignals};
use crate::store::{EntityRef, Freshness};

/// Where the ranking came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// From the user's features.
    Personalized,
    /// Popular products: the user has no history, or (see `degraded`) features could not be
    /// read in time.
    Popular,
}

/// Why an answer is not personalized though it might have been.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Degraded {
    /// Redis is unreachable and the user is not in L1.
    FeaturesUnavailable,
    /// The user's features did not arrive within the page's render deadline.
    FeaturesSlow,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Answer {
    pub user_id: String,
    pub at: DateTime<Utc>,
    pub freshness: Freshness,
    pub source: Source,
    pub degraded: Option<Degraded>,
    pub recommendations: Vec<Recommendation>,
    /// The user's features, when read (pages show recent activity from them).
    #[serde(skip)]
    #[schema(ignore)]
    pub evaluated: Option<Arc<Evaluated>>,
    /// The product index ranked from.
    #[serde(skip)]
    #[schema(ignore)]
    pub index: Arc<ProductIndex>,
    /// What the ranking read of the user (pages show the cart and recent views from it).
    #[serde(skip)]
    #[schema(ignore)]
    pub signals: UserSignals,
    #[serde(skip)]
    #[schema(ignore)]
    json: OnceLock<Bytes>,
}

impl Answer {
    /// The user's evaluated features, when read.
    pub fn features(&self) -> Option<&Features> {
        self.evaluated.as_ref().map(|evaluated| &evaluated.features.features)
    }

    /// The answer as JSON, serialized once.
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| {
            // Plain values and strings: serializing cannot fail.
            Bytes::from(serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec()))
        })
    }
}

/// Answers kept for reuse: an answer is a pure function of the user's evaluation, the product
/// index and the query, so an entry is reused exactly while the evaluation cache hands out the
/// same evaluation (same `Arc`) and the same index is current; it holds both, so neither
/// address can be reused by another.
pub struct RecommendationCache {
    entries: moka::sync::Cache<AnswerKey, Arc<Answer>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AnswerKey {
    user_id: String,
    limit: usize,
    category: Option<String>,
    /// Sorted.
    exclude: Vec<String>,
}

impl AnswerKey {
    fn new(user_id: &str, query: &recommend::Query) -> Self {
        let mut exclude: Vec<String> = query.exclude.iter().cloned().collect();
        exclude.sort_unstable();
        Self {
            user_id: user_id.to_string(),
            limit: query.limit,
            category: query.category.clone(),
            exclude,
        }
    }
}

impl RecommendationCache {
    /// Keeps about `max_bytes` of answers (0: none).
    pub fn new(max_bytes: u64) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &AnswerKey, answer: &Arc<Answer>| {
                let listed: usize = answer
                    .recommendations
                    .iter()
                    .map(|r| 160 + r.product_id.len() + r.reason_text.len() * 2)
                    .sum();
                // The JSON, once serialized, is about as large again.
                u32::try_from(2 * listed + key.user_id.len() + 512).unwrap_or(u32::MAX)
            })
            .time_to_idle(Duration::from_secs(30))
            .build();
        Self { entries }
    }

    fn get(
        &self,
        key: &AnswerKey,
        evaluated: &Arc<Evaluated>,
        index: &Arc<ProductIndex>,
    ) -> Option<Arc<Answer>> {
        self.entries.get(key).filter(|answer| {
            answer.evaluated.as_ref().is_some_and(|ours| Arc::ptr_eq(ours, evaluated))
                && Arc::ptr_eq(&answer.index, index)
        })
    }

    fn put(&self, key: AnswerKey, answer: Arc<Answer>) {
        self.entries.insert(key, answer);
    }
}

/// Ranks products for `user_id`. Never fails: without the user's features (Redis down, or
/// slower than `deadline`) the answer is popular products, marked degraded.
pub async fn recommend_for(
    state: &AppState,
    user_id: &str,
    query: &recommend::Query,
    deadline: Option<Duration>,
) -> Arc<Answer> {
    let shopper = state.features.shopper;
    let request = FeatureRequest { entity: EntityRef::new(shopper, user_id), names: None };
    let evaluated = match deadline {
        None => Some(read_now(state, request).await),
        Some(deadline) => tokio::time::timeout(deadline, read_now(state, request)).await.ok(),
    };
    let index = state.recommender.index();
    let roles = &state.features.recommendations;
    let price_bands = roles.price_band_clicks.as_ref().and_then(|name| state.features.get(name));
    let key = evaluated
        .as_ref()
        .filter(|read| read.features.freshness == Freshness::Live)
        .map(|read| (AnswerKey::new(user_id, query), Arc::clone(read)));
    if let Some((key, read)) = &key
        && let Some(answer) = state.recommendations.get(key, read, &index)
    {
        return answer;
    }
    let (at, freshness, degraded, evaluated) = match evaluated {
        None => (Utc::now(), Freshness::Unavailable, Some(Degraded::FeaturesSlow), None),
        Some(read) if read.features.freshness == Freshness::Unavailable => {
            (read.at, Freshness::Unavailable, Some(Degraded::FeaturesUnavailable), None)
        }
        Some(read) => (read.at, read.features.freshness, None, Some(read)),
    };
    let signals = evaluated
        .as_ref()
        .map(|read| UserSignals::from_features(&read.features.features, roles))
        .unwrap_or_default();
    let source = if degraded.is_some() || signals.is_cold() {
        Source::Popular
    } else {
        Source::Personalized
    };
    let recommendations = recommend::recommend(&signals, &index, price_bands, query);
    let answer = Arc::new(Answer {
        user_id: user_id.to_string(),
        at,
        freshness,
        source,
        degraded,
        recommendations,
        evaluated,
        index,
        signals,
        json: OnceLock::new(),
    });
    if let Some((key, _)) = key {
        state.recommendations.put(key, Arc::clone(&answer));
    }
    answer
}
