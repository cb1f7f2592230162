//! Recommendations for a user: ranked from the user's features, or popular products when the
//! features are missing, unreadable or slower than the caller can wait.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::AppState;
use super::evaluated::read_now;
use super::features::FeatureRequest;
use crate::features::Features;
use crate::recommend::{self, Recommendation, UserSignals};
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

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    pub features: Option<Features>,
}

/// Ranks products for `user_id`. Never fails: without the user's features (Redis down, or
/// slower than `deadline`) the answer is popular products, marked degraded.
pub async fn recommend_for(
    state: &AppState,
    user_id: &str,
    query: &recommend::Query,
    deadline: Option<Duration>,
) -> Answer {
    let request = FeatureRequest { entity: EntityRef::user(user_id), names: None };
    let evaluated = match deadline {
        None => Some(read_now(state, request).await),
        Some(deadline) => tokio::time::timeout(deadline, read_now(state, request)).await.ok(),
    };
    let index = state.recommender.index();
    let price_bands = state.features.get(recommend::PRICE_BANDS);
    let (at, freshness, degraded, features) = match evaluated {
        None => (Utc::now(), Freshness::Unavailable, Some(Degraded::FeaturesSlow), None),
        Some(read) if read.features.freshness == Freshness::Unavailable => {
            (read.at, Freshness::Unavailable, Some(Degraded::FeaturesUnavailable), None)
        }
        Some(read) => {
            (read.at, read.features.freshness, None, Some(read.features.features.clone()))
        }
    };
    let signals = features.as_ref().map(UserSignals::from_features).unwrap_or_default();
    let source = if degraded.is_some() || signals.is_cold() {
        Source::Popular
    } else {
        Source::Personalized
    };
    let recommendations = recommend::recommend(&signals, &index, price_bands, query);
    Answer {
        user_id: user_id.to_string(),
        at,
        freshness,
        source,
        degraded,
        recommendations,
        features,
    }
}
