//! `GET /api/v1/users/{id}/recommendations?limit=&category=&exclude=`: ranked products for one
//! user, each with a score and a reason, from the user's live features (one Redis read at most,
//! none on an L1 hit) and the in-memory product index. Also what the storefront pages render.

use std::collections::HashSet;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppError;
use super::error::ErrorResponses;
use super::features::{check_entity, validate_id};
use crate::recommend::{self, DEFAULT_LIMIT, MAX_LIMIT};
use crate::serve::{Answer, AppState, recommend_for};

/// Most ids one `exclude` may list.
const MAX_EXCLUDE: usize = 100;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct RecommendationsQuery {
    /// How many products, 1 to 50 (10 when absent).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 50)]
    limit: Option<String>,
    /// Only products of this category.
    category: Option<String>,
    /// Comma-separated product ids.
    exclude: Option<String>,
}

/// Products ranked for a user from the user's live features; popular products (marked as such)
/// for a user without history or whose features cannot be read.
#[utoipa::path(
    get,
    path = "/api/v1/users/{user_id}/recommendations",
    tag = "recommendations",
    params(("user_id" = String, Path, description = "The user's id", min_length = 1, max_length = 128), RecommendationsQuery),
    responses(
        (status = 200, description = "Ranked products, each with a score and a reason", body = Answer),
        ErrorResponses,
    )
)]
pub(super) async fn user_recommendations(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<RecommendationsQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Path(user_id) = path?;
    let Query(query) = query?;
    check_entity(&state.features, state.features.shopper, &user_id)?;
    let query = parse_query(query)?;
    let answer = recommend_for(&state, &user_id, &query, None).await;
    Ok(([(header::CONTENT_TYPE, "application/json")], answer.json().clone()).into_response())
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
