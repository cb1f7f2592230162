//! `GET /api/v1/users/{user_id}/features[?names=a,b]`: every feature of a user with its value,
//! event time and status. An unknown user is an answer (every feature missing), not an error.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{AppError, AppState};
use crate::features::{self, FeatureStatus, FeatureValue, UserFeatures, WINDOWS};
use crate::store::Freshness;

const MAX_USER_ID_LEN: usize = 128;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FeaturesQuery {
    /// Comma-separated feature names; all when absent.
    names: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct UserFeaturesResponse {
    user_id: String,
    /// The read time windows were evaluated at.
    at: DateTime<Utc>,
    /// `live`, `stale` (Redis unreachable, served from L1) or `unavailable`.
    freshness: Freshness,
    features: UserFeatures,
}

fn validate_user_id(user_id: &str) -> Result<(), AppError> {
    if user_id.is_empty() || user_id.len() > MAX_USER_ID_LEN {
        return Err(AppError::BadRequest(format!(
            "user_id must be 1 to {MAX_USER_ID_LEN} bytes long"
        )));
    }
    if user_id.chars().any(char::is_control) {
        return Err(AppError::BadRequest("user_id must not contain control characters".into()));
    }
    Ok(())
}

/// Known names, plus `<type>_count_<window>` for activity types outside the default list.
fn is_feature_name(name: &str) -> bool {
    if features::feature_names().binary_search_by(|known| known.as_str().cmp(name)).is_ok() {
        return true;
    }
    WINDOWS.iter().any(|window| {
        name.strip_suffix(&format!("_count_{}", window.label)).is_some_and(|kind| {
            !kind.is_empty() && kind.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
    })
}

fn parse_names(names: Option<&str>) -> Result<Option<Vec<String>>, AppError> {
    let Some(names) = names else { return Ok(None) };
    let names: Vec<String> =
        names.split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect();
    if names.is_empty() {
        return Err(AppError::BadRequest("names is empty".into()));
    }
    if let Some(unknown) = names.iter().find(|name| !is_feature_name(name)) {
        return Err(AppError::BadRequest(format!("unknown feature name {unknown:?}")));
    }
    Ok(Some(names))
}

pub(super) async fn user_features(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<FeaturesQuery>, QueryRejection>,
) -> Result<Json<UserFeaturesResponse>, AppError> {
    let Path(user_id) = path?;
    let Query(query) = query?;
    validate_user_id(&user_id)?;
    let names = parse_names(query.names.as_deref())?;

    let read = state.store.read_user(&user_id).await;
    let at = Utc::now();
    let user_state = read.user.as_ref().and_then(|user| user.state.as_ref());
    let mut features = features::evaluate(user_state, at);
    if read.freshness == Freshness::Stale {
        for value in features.values_mut() {
            if value.status == FeatureStatus::Present {
                value.status = FeatureStatus::Stale;
            }
        }
    }
    if let Some(names) = names {
        features.retain(|name, _| names.contains(name));
        for name in names {
            // A type the user has no events of is a zero count only for listed types.
            features.entry(name).or_insert_with(FeatureValue::missing);
        }
    }
    Ok(Json(UserFeaturesResponse { user_id, at, freshness: read.freshness, features }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_bounded_and_printable() {
        assert!(validate_user_id("u-42").is_ok());
        assert!(validate_user_id("").is_err());
        assert!(validate_user_id(&"x".repeat(MAX_USER_ID_LEN + 1)).is_err());
        assert!(validate_user_id("a\u{7}b").is_err());
    }

    #[test]
    fn names_must_be_known() {
        assert_eq!(
            parse_names(Some("click_count_1m, last_viewed_product")).expect("valid"),
            Some(vec!["click_count_1m".to_string(), "last_viewed_product".to_string()])
        );
        assert!(parse_names(Some("wishlist_count_5m")).is_ok());
        let error = parse_names(Some("click_count_2m")).expect_err("unknown");
        assert!(error.to_string().contains("click_count_2m"), "{error}");
        assert!(parse_names(Some(",")).is_err());
    }
}
