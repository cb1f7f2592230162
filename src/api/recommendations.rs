//! `GET /api/v1/users/{id}/recommendations?limit=&category=&exclude=`: ranked products for one
//! user, each with a score and a reason, from the user's live features (one Redis read at most,
//! none on an L1 hit) and the in-memory product index. Also what the storefront pages render.

use std::collections::HashSet;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::features::validate_id;
use super::{AppError, AppState};
use crate::features::{Entity, Features, ReadContext, evaluate};
use crate::recommend::{self, DEFAULT_LIMIT, MAX_LIMIT, Recommendation, UserSignals};
use crate::store::{EntityRef, Freshness};

/// Most ids one `exclude` may list.
const MAX_EXCLUDE: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecommendationsQuery {
    limit: Option<String>,
    category: Option<String>,
    /// Comma-separated product ids.
    exclude: Option<String>,
}

/// Where the ranking came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// From the user's features.
    Personalized,
    /// Popular products: the user has no history, or (see `degraded`) features could not be
    /// read in time.
    Popular,
}

/// Why an answer is not personalized though it might have been.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Degraded {
    /// Redis is unreachable and the user is not in L1.
    FeaturesUnavailable,
    /// The user's features did not arrive within the page's render deadline.
    FeaturesSlow,
}

#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub user_id: String,
    pub at: DateTime<Utc>,
    pub freshness: Freshness,
    pub source: Source,
    pub degraded: Option<Degraded>,
    pub recommendations: Vec<Recommendation>,
    /// The user's features, when read (pages show recent activity from them).
    #[serde(skip)]
    pub features: Option<Features>,
}

pub(super) async fn user_recommendations(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<RecommendationsQuery>, QueryRejection>,
) -> Result<Json<Answer>, AppError> {
    let Path(user_id) = path?;
    let Query(query) = query?;
    validate_id("user", &user_id)?;
    let query = parse_query(query)?;
    Ok(Json(recommend_for(&state, &user_id, &query, None).await))
}

fn parse_query(query: RecommendationsQuery) -> Result<recommend::Query, AppError> {
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => limit,
            _ => {
                return Err(AppError::BadRequest(format!(
                    "limit {text:?} must be a whole number from 1 to {MAX_LIMIT}"
                )));
            }
        },
    };
    let category = query.category.map(|c| c.trim().to_string()).filter(|c| !c.is_empty());
    if category.as_ref().is_some_and(|c| c.len() > 128 || c.chars().any(char::is_control)) {
        return Err(AppError::BadRequest(
            "category must be at most 128 printable characters".into(),
        ));
    }
    let exclude: HashSet<String> = query
        .exclude
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(String::from)
        .collect();
    if exclude.len() > MAX_EXCLUDE {
        return Err(AppError::BadRequest(format!(
            "exclude lists {} products; at most {MAX_EXCLUDE}",
            exclude.len()
        )));
    }
    for id in &exclude {
        validate_id("exclude product", id)?;
    }
    Ok(recommend::Query { limit, category, exclude })
}

/// Ranks products for `user_id`. Never fails: without the user's features (Redis down, or
/// slower than `deadline`) the answer is popular products, marked degraded.
pub async fn recommend_for(
    state: &AppState,
    user_id: &str,
    query: &recommend::Query,
    deadline: Option<Duration>,
) -> Answer {
    let at = Utc::now();
    let entity = EntityRef::user(user_id);
    let read = match deadline {
        None => Some(state.store.read(&entity).await),
        Some(deadline) => tokio::time::timeout(deadline, state.store.read(&entity)).await.ok(),
    };
    let index = state.recommender.index();
    let price_bands = state.features.get(recommend::PRICE_BANDS);
    let (freshness, degraded, features) = match read {
        None => (Freshness::Unavailable, Some(Degraded::FeaturesSlow), None),
        Some(read) if read.freshness == Freshness::Unavailable => {
            (Freshness::Unavailable, Some(Degraded::FeaturesUnavailable), None)
        }
        Some(read) => {
            let features = state.catalog.read(|catalog| {
                evaluate(
                    &state.features,
                    Entity::User,
                    user_id,
                    read.state.as_deref(),
                    None,
                    &ReadContext { at, catalog, ranking: &|_| None },
                )
            });
            (read.freshness, None, Some(features))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn query(limit: Option<&str>, exclude: Option<&str>) -> RecommendationsQuery {
        RecommendationsQuery {
            limit: limit.map(String::from),
            category: None,
            exclude: exclude.map(String::from),
        }
    }

    #[test]
    fn limits_and_exclusions_are_checked() {
        assert_eq!(parse_query(query(None, None)).expect("defaults").limit, DEFAULT_LIMIT);
        assert_eq!(parse_query(query(Some("5"), None)).expect("valid").limit, 5);
        for bad in ["0", "51", "-1", "ten"] {
            let error = parse_query(query(Some(bad), None)).expect_err(bad).to_string();
            assert!(error.contains("limit"), "{error}");
        }
        let parsed = parse_query(query(None, Some("p1, p2,,p1"))).expect("valid");
        assert_eq!(parsed.exclude, ["p1".to_string(), "p2".to_string()].into());
        let many = (0..=MAX_EXCLUDE).map(|i| format!("p{i}")).collect::<Vec<_>>().join(",");
        assert!(parse_query(query(None, Some(&many))).is_err());
    }
}
