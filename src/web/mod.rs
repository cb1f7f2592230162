//! The server-rendered storefront (askama templates and static files in `frontend/`): a user
//! picker at `/`, a user's storefront at `/u/{user_id}`, a product page at `/p/{product_id}`,
//! and the storefront's live updates at `/u/{user_id}/live` (Server-Sent Events); for ops, the
//! pipeline dashboard at `/ops` and a user's feature inspector at `/ops/users/{user_id}`.
//!
//! A page renders in one pass with its personalized content in the first response. It waits for
//! the user's features at most `recommend.render_deadline`; past that, or with Redis down, it
//! renders popular products and says so. Pages work without JavaScript; `live.js` only swaps in
//! the live block when the server pushes a new one.

mod dashboard;
mod live;
mod pages;
pub mod views;

use std::sync::Arc;
use std::time::Instant;

use askama::Template;
use axum::Extension;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::config::ApiConfig;
use crate::recommend;
use crate::serve::{AppState, recommend_for};
use pages::{PageCache, Storefront};
use views::{ErrorPage, IndexPage, ProductPage};

const MAX_ID_LEN: usize = 128;
const CSS: &str = include_str!("../../frontend/static/persona.css");
const LIVE_JS: &str = include_str!("../../frontend/static/live.js");

pub fn routes(config: &ApiConfig) -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/u", get(pick_user))
        .route("/u/{user_id}", get(storefront))
        .route("/u/{user_id}/live", get(live::stream))
        .route("/p/{product_id}", get(product))
        .route("/ops", get(dashboard::dashboard))
        .route("/ops/users", get(dashboard::pick_user))
        .route("/ops/users/{user_id}", get(dashboard::inspector))
        .route("/static/persona.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route(
            "/static/live.js",
            get(|| async { asset("text/javascript; charset=utf-8", LIVE_JS) }),
        )
        .layer(Extension(Arc::new(PageCache::new(config.cache_bytes))))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=300")], body)
        .into_response()
}

/// An HTML error page (the JSON API has its own errors).
fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    match (ErrorPage { title, message }).render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(_) => (status, message.to_string()).into_response(),
    }
}

fn render(template: &impl Template, started: Instant) -> Response {
    html_response(template.render(), started)
}

/// A rendered page with how long it took (`server-timing`), or the error page.
fn html_response(rendered: Result<impl Into<String>, askama::Error>, started: Instant) -> Response {
    match rendered {
        Ok(html) => {
            let mut response = Html(html.into()).into_response();
            let timing = format!("render;dur={:.1}", started.elapsed().as_secs_f64() * 1000.0);
            if let Ok(value) = HeaderValue::from_str(&timing) {
                response.headers_mut().insert("server-timing", value);
            }
            response
        }
        Err(error) => {
            tracing::error!(error = %error, "template failed to render");
            error_page(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong", "Please retry.")
        }
    }
}

fn check_id(kind: &str, id: &str) -> Result<(), Box<Response>> {
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(Box::new(error_page(
            StatusCode::BAD_REQUEST,
            "Not a valid id",
            &format!("A {kind} id is 1 to {MAX_ID_LEN} printable characters."),
        )));
    }
    Ok(())
}

async fn index(State(state): State<AppState>) -> Response {
    let active = state
        .active_users
        .recent()
        .into_iter()
        .map(|id| {
            let href = views::storefront_href(&id);
            (id, href)
        })
        .collect();
    render(&IndexPage { active }, Instant::now())
}

#[derive(Debug, Deserialize)]
struct PickUser {
    user_id: Option<String>,
}

/// The picker's form submits here (GET, so it works without JavaScript).
async fn pick_user(Query(pick): Query<PickUser>) -> Response {
    let user_id = pick.user_id.unwrap_or_default().trim().to_string();
    if let Err(page) = check_id("user", &user_id) {
        return *page;
    }
    Redirect::to(&views::storefront_href(&user_id)).into_response()
}

/// `user_id`'s storefront, as of now.
async fn storefront_now(
    state: &AppState,
    pages: &PageCache,
    user_id: &str,
    deadline: Option<std::time::Duration>,
) -> Arc<Storefront> {
    let query = recommend::Query { limit: views::SHELF, ..recommend::Query::default() };
    pages.storefront(recommend_for(state, user_id, &query, deadline).await)
}

async fn storefront(
    State(state): State<AppState>,
    Extension(pages): Extension<Arc<PageCache>>,
    Path(user_id): Path<String>,
) -> Response {
    let started = Instant::now();
    if let Err(page) = check_id("user", &user_id) {
        return *page;
    }
    let storefront = storefront_now(&state, &pages, &user_id, Some(state.render_deadline)).await;
    html_response(storefront.html(), started)
}

#[derive(Debug, Deserialize)]
struct ProductQuery {
    u: Option<String>,
}

/// A product and what goes with it, from the product index: no Redis read.
async fn product(
    State(state): State<AppState>,
    Path(product_id): Path<String>,
    Query(query): Query<ProductQuery>,
) -> Response {
    let started = Instant::now();
    if let Err(page) = check_id("product", &product_id) {
        return *page;
    }
    let user_id = query.u.unwrap_or_default();
    if !user_id.is_empty()
        && let Err(page) = check_id("user", &user_id)
    {
        return *page;
    }
    let index = state.recommender.index();
    let Some(entry) = index.get(&product_id) else {
        return error_page(
            StatusCode::NOT_FOUND,
            "No such product",
            &format!("There is no product {product_id:?} in the catalog."),
        );
    };
    let product = &entry.product;
    let category = product.category.clone().unwrap_or_default();
    let skip = |id: &str| id == product_id;
    let together = views::together_cards(&index, &product_id, &skip, &user_id, views::SHELF);
    let more = views::trending_cards(&index, &category, &skip, &user_id, views::SHELF / 2);
    let page = ProductPage {
        back_href: if user_id.is_empty() { "/".into() } else { views::storefront_href(&user_id) },
        user_id,
        name: product.name.clone().unwrap_or_else(|| product.id.clone()),
        category,
        brand: product.brand.clone().unwrap_or_default(),
        price: views::price(product.price),
        stats: format!(
            "Trending score {:.1} (recent views, halving every 10 minutes)",
            entry.trending
        ),
        together,
        more,
    };
    render(&page, started)
}
