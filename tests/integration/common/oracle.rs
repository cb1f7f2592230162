//! The SQL oracle: a random workload goes through Postgres (inserts, updates, deletes, event
//! times out of order, rows moving between users, product price and category changes), and
//! every default feature of every user and product persona serves must equal its recomputation
//! by SQL on Postgres at the same `at`.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio_postgres::Client;

use super::{CATCH_UP, Persona, legacy_db};

pub const USERS: i32 = 40;
/// Products p0..p29 are in the catalog from the start; p30 arrives mid-workload (its earlier
/// activity must count once it does); p31 never does.
pub const CATALOG: i32 = 30;
pub const PRODUCTS: i32 = 32;
/// Features this oracle does not recompute: co-occurrence pairs only rows at most `history`
/// late (docs/FEATURES.md), and this workload writes event times up to 70 minutes back. Its
/// exactness is property-tested against a recomputation in `src/features/tests_pairs.rs`.
pub const NOT_COMPARED: [&str; 1] = ["viewed_together_24h"];

pub const KINDS: &str = "ARRAY['VIEW_PRODUCT','VIEW_PRODUCT','VIEW_PRODUCT','CLICK','CLICK','SEARCH','ADD_TO_CART','PURCHASE']";
pub const CATEGORIES: &str = "ARRAY['shoes','hats','bags','coats','socks']";
pub const BRANDS: &str = "ARRAY['acme','bolt','cora','dune','eon','fjord']";

/// Runs a statement and returns how many rows (changes) it made.
pub async fn changes(db: &Client, sql: &str, prefix: &str) -> u64 {
    db.execute(sql, &[&prefix]).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub async fn seed_products(db: &Client, prefix: &str, from: i32, to: i32) -> u64 {
    let sql = format!(
        "INSERT INTO products (id, name, category, brand, price, updated_at) \
         SELECT $1 || '-p' || i, 'Product ' || i, ({CATEGORIES})[1 + i % 5], ({BRANDS})[1 + i % 6], \
                round((5 + random() * 300)::numeric, 2), now()::timestamp \
         FROM generate_series({from}, {to}) i"
    );
    changes(db, &sql, prefix).await
}

/// One round of the legacy application's writes, in several transactions.
pub async fn round(db: &Client, prefix: &str, inserts: i32) -> u64 {
    let user = format!("$1 || '-u' || floor(random() * {USERS})::int");
    let product = format!("$1 || '-p' || floor(random() * {PRODUCTS})::int");
    let mut total = 0;
    // Activity, with event times up to 70 minutes back in any order.
    total += changes(
        db,
        &format!(
            "INSERT INTO user_activity (id, user_id, activity_type, product_id, activity_timestamp) \
             SELECT gen_random_uuid(), {user}, ({KINDS})[1 + floor(random() * 8)::int], {product}, \
                    now() - random() * interval '70 minutes' \
             FROM generate_series(1, {inserts})"
        ),
        prefix,
    )
    .await;
    // Updates: type, product and event time change; a few rows move to another user.
    total += changes(
        db,
        &format!(
            "UPDATE user_activity SET activity_type = ({KINDS})[1 + floor(random() * 8)::int], \
                    product_id = {product}, \
                    activity_timestamp = now() - random() * interval '70 minutes' \
             WHERE user_id LIKE $1 || '-u%' AND random() < 0.04"
        ),
        prefix,
    )
    .await;
    total += changes(
        db,
        &format!(
            "UPDATE user_activity SET user_id = {user} \
             WHERE user_id LIKE $1 || '-u%' AND random() < 0.005"
        ),
        prefix,
    )
    .await;
    total += changes(
        db,
        "DELETE FROM user_activity WHERE user_id LIKE $1 || '-u%' AND random() < 0.03",
        prefix,
    )
    .await;
    // Carts: rows added, quantities and prices changed, rows removed.
    total += changes(
        db,
        &format!(
            "INSERT INTO cart_items (user_id, product_id, quantity, unit_price, updated_at) \
             SELECT $1 || '-u' || u, $1 || '-p' || p, 1 + floor(random() * 4)::int, \
                    round((1 + random() * 200)::numeric, 2), now()::timestamp \
             FROM generate_series(0, {USERS} - 1) u, generate_series(0, {PRODUCTS} - 1) p \
             WHERE random() < 0.03 \
             ON CONFLICT (user_id, product_id) DO UPDATE \
             SET quantity = EXCLUDED.quantity, unit_price = EXCLUDED.unit_price"
        ),
        prefix,
    )
    .await;
    total += changes(
        db,
        "UPDATE cart_items SET quantity = 1 + floor(random() * 5)::int, updated_at = now()::timestamp \
         WHERE user_id LIKE $1 || '-u%' AND random() < 0.2",
        prefix,
    )
    .await;
    total += changes(
        db,
        "DELETE FROM cart_items WHERE user_id LIKE $1 || '-u%' AND random() < 0.15",
        prefix,
    )
    .await;
    // Orders over the last 29 days; some change status, a few are deleted.
    total += changes(
        db,
        &format!(
            "INSERT INTO orders (user_id, product_id, quantity, amount, status, created_at) \
             SELECT {user}, {product}, 1, round((5 + random() * 300)::numeric, 2), 'paid', \
                    now() - random() * interval '29 days' \
             FROM generate_series(1, {})",
            inserts / 10
        ),
        prefix,
    )
    .await;
    total += changes(
        db,
        "UPDATE orders SET status = 'shipped' WHERE user_id LIKE $1 || '-u%' AND random() < 0.1",
        prefix,
    )
    .await;
    total += changes(
        db,
        "DELETE FROM orders WHERE user_id LIKE $1 || '-u%' AND random() < 0.03",
        prefix,
    )
    .await;
    // The dimension changes under the facts: prices and categories move.
    total += changes(
        db,
        &format!(
            "UPDATE products SET price = round((5 + random() * 300)::numeric, 2), \
                    category = ({CATEGORIES})[1 + floor(random() * 5)::int], updated_at = now()::timestamp \
             WHERE id LIKE $1 || '-p%' AND random() < 0.3"
        ),
        prefix,
    )
    .await;
    total
}

/// A light round, as an application that is never idle writes: a few rows of each fact table
/// added, changed and removed (existing rows among them).
pub async fn trickle(db: &Client, prefix: &str) -> u64 {
    let user = format!("$1 || '-u' || floor(random() * {USERS})::int");
    let product = format!("$1 || '-p' || floor(random() * {PRODUCTS})::int");
    let some = |table: &str, key: &str, limit: i32| {
        format!(
            "{key} IN (SELECT {key} FROM {table} WHERE user_id LIKE $1 || '-u%' \
             ORDER BY random() LIMIT {limit})"
        )
    };
    let statements = [
        format!(
            "INSERT INTO user_activity (id, user_id, activity_type, product_id, activity_timestamp) \
             SELECT gen_random_uuid(), {user}, ({KINDS})[1 + floor(random() * 8)::int], {product}, \
                    now() - random() * interval '70 minutes' \
             FROM generate_series(1, 10)"
        ),
        format!(
            "UPDATE user_activity SET activity_type = ({KINDS})[1 + floor(random() * 8)::int], \
                    activity_timestamp = now() - random() * interval '70 minutes' WHERE {}",
            some("user_activity", "id", 5)
        ),
        format!("DELETE FROM user_activity WHERE {}", some("user_activity", "id", 3)),
        format!(
            "INSERT INTO cart_items (user_id, product_id, quantity, unit_price, updated_at) \
             VALUES ({user}, {product}, 1 + floor(random() * 4)::int, \
                     round((1 + random() * 200)::numeric, 2), now()::timestamp) \
             ON CONFLICT (user_id, product_id) DO UPDATE \
             SET quantity = EXCLUDED.quantity, unit_price = EXCLUDED.unit_price"
        ),
        format!(
            "DELETE FROM cart_items WHERE {}",
            some("cart_items", "(user_id, product_id)", 1)
                .replace("SELECT (user_id, product_id)", "SELECT user_id, product_id")
        ),
        format!(
            "INSERT INTO orders (user_id, product_id, quantity, amount, status, created_at) \
             SELECT {user}, {product}, 1, round((5 + random() * 300)::numeric, 2), 'paid', \
                    now() - random() * interval '29 days' FROM generate_series(1, 2)"
        ),
        format!("UPDATE orders SET status = 'shipped' WHERE {}", some("orders", "id", 3)),
        format!("DELETE FROM orders WHERE {}", some("orders", "id", 1)),
    ];
    let mut total = 0;
    for statement in &statements {
        total += changes(db, statement, prefix).await;
    }
    total
}

pub async fn workload(prefix: &str, rounds: usize, inserts: i32) -> u64 {
    let db = legacy_db().await;
    let mut total = 0;
    for _ in 0..rounds {
        total += round(&db, prefix, inserts).await;
    }
    total
}

pub fn stack(command: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack");
    let status = Command::new("bash").arg(script).arg(command).status().expect("run scripts/stack");
    assert!(status.success(), "scripts/stack {command} failed");
}

// ---- the oracle ----------------------------------------------------------------------------

/// `ts` falls in the 60-bucket window ending with the bucket of `$2` (see docs/FEATURES.md).
pub fn window(column: &str, bucket_us: i64) -> String {
    let bucket =
        |expr: &str| format!("((extract(epoch from {expr}) * 1000000)::bigint / {bucket_us})");
    format!(
        "{b} > {end} - 60 AND {b} <= {end}",
        b = bucket(column),
        end = bucket("$2::timestamptz")
    )
}

pub const SECOND: i64 = 1_000_000;
pub const MINUTE: i64 = 60 * SECOND;

pub type Expected = BTreeMap<(String, String), Value>;

pub async fn rows(
    db: &Client,
    sql: &str,
    prefix: &str,
    at: DateTime<Utc>,
) -> Vec<tokio_postgres::Row> {
    db.query(sql, &[&prefix, &at]).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Every default feature of every user and product, recomputed from Postgres at `at`.
/// What SQL says every compared feature of the workload's users and products is at `at`.
/// `whole_catalog`: the persona compared reads every product (the shared products topic), so
/// percentiles rank among all of them; otherwise among the workload's own.
pub async fn expected(
    db: &Client,
    prefix: &str,
    at: DateTime<Utc>,
    whole_catalog: bool,
) -> Expected {
    let mut expected = Expected::new();
    let users: Vec<String> = (0..USERS).map(|u| format!("{prefix}-u{u}")).collect();
    let products: Vec<String> = (0..PRODUCTS).map(|p| format!("{prefix}-p{p}")).collect();
    let of_user = "a.user_id LIKE $1 || '-u%'";

    let counts = [
        ("clicks_1m", "CLICK", SECOND),
        ("clicks_5m", "CLICK", 5 * SECOND),
        ("clicks_15m", "CLICK", 15 * SECOND),
        ("views_1m", "VIEW_PRODUCT", SECOND),
        ("views_5m", "VIEW_PRODUCT", 5 * SECOND),
        ("views_15m", "VIEW_PRODUCT", 15 * SECOND),
        ("searches_15m", "SEARCH", 15 * SECOND),
        ("add_to_carts_15m", "ADD_TO_CART", 15 * SECOND),
    ];
    for (name, kind, bucket) in counts {
        for user in &users {
            expected.insert((user.clone(), name.into()), json!(0));
        }
        let sql = format!(
            "SELECT a.user_id, count(*) FROM user_activity a WHERE {of_user} \
             AND a.activity_type = '{kind}' AND {} GROUP BY 1",
            window("a.activity_timestamp", bucket)
        );
        for row in rows(db, &sql, prefix, at).await {
            expected.insert((row.get(0), name.into()), json!(row.get::<_, i64>(1)));
        }
    }

    let sql = format!(
        "SELECT DISTINCT ON (a.user_id) a.user_id, a.product_id FROM user_activity a \
         WHERE {of_user} AND a.activity_type = 'VIEW_PRODUCT' AND a.product_id IS NOT NULL \
         AND a.activity_timestamp <= $2 \
         ORDER BY a.user_id, a.activity_timestamp DESC, a.product_id COLLATE \"C\" DESC"
    );
    for row in rows(db, &sql, prefix, at).await {
        expected.insert((row.get(0), "last_viewed_product".into()), json!(row.get::<_, String>(1)));
    }

    // Histograms over joined product attributes, as the products are now.
    let histograms = [
        ("category_views_1h", "VIEW_PRODUCT", "p.category", "p.category IS NOT NULL", MINUTE),
        ("category_views_10m", "VIEW_PRODUCT", "p.category", "p.category IS NOT NULL", 10 * SECOND),
        ("category_clicks_1h", "CLICK", "p.category", "p.category IS NOT NULL", MINUTE),
        (
            "clicks_by_price_band_1h",
            "CLICK",
            "CASE WHEN p.price < 25 THEN '<25' WHEN p.price < 50 THEN '25-50' \
             WHEN p.price < 100 THEN '50-100' WHEN p.price < 250 THEN '100-250' ELSE '250+' END",
            "p.price IS NOT NULL",
            MINUTE,
        ),
    ];
    for (name, kind, label, known, bucket) in histograms {
        let mut maps: BTreeMap<String, serde_json::Map<String, Value>> =
            users.iter().map(|u| (u.clone(), serde_json::Map::new())).collect();
        let sql = format!(
            "SELECT a.user_id, {label}, count(*) FROM user_activity a JOIN products p ON p.id = a.product_id \
             WHERE {of_user} AND a.activity_type = '{kind}' AND {known} AND {} GROUP BY 1, 2",
            window("a.activity_timestamp", bucket)
        );
        for row in rows(db, &sql, prefix, at).await {
            let user: String = row.get(0);
            maps.entry(user).or_default().insert(row.get(1), json!(row.get::<_, i64>(2)));
        }
        for (user, map) in maps {
            expected.insert((user, name.into()), Value::Object(map));
        }
    }

    // The newest distinct values, newest first. Rows of the same time order by the value their
    // facts store (the product id), as facts of a source with a time column keep no row key
    // (docs/FEATURES.md, "State layout"); `cart_items`, dated by its commit time where
    // `updated_at` is NULL, keeps them and orders by row key.
    let recents = [
        (
            "recent_categories_10m",
            "p.category",
            "JOIN products p ON p.id = a.product_id AND p.category IS NOT NULL",
            window("a.activity_timestamp", 10 * SECOND),
            10,
        ),
        (
            "recent_products_viewed",
            "a.product_id",
            "",
            "a.product_id IS NOT NULL AND a.activity_timestamp <= $2".to_string(),
            20,
        ),
    ];
    for (name, value, join, condition, n) in recents {
        for user in &users {
            expected.insert((user.clone(), name.into()), json!([]));
        }
        let sql = format!(
            "WITH v AS (SELECT a.user_id, {value} AS value, a.activity_timestamp AS t, a.product_id AS k \
                        FROM user_activity a {join} \
                        WHERE {of_user} AND a.activity_type = 'VIEW_PRODUCT' AND {condition}), \
                  newest AS (SELECT *, row_number() OVER (PARTITION BY user_id, value \
                                ORDER BY t DESC, k COLLATE \"C\" DESC) AS r FROM v), \
                  ranked AS (SELECT *, row_number() OVER (PARTITION BY user_id \
                                ORDER BY t DESC, k COLLATE \"C\" DESC) AS r2 FROM newest WHERE r = 1) \
             SELECT user_id, json_agg(value ORDER BY r2)::text FROM ranked WHERE r2 <= {n} GROUP BY 1"
        );
        for row in rows(db, &sql, prefix, at).await {
            let list: Value = serde_json::from_str(&row.get::<_, String>(1)).expect("json");
            expected.insert((row.get(0), name.into()), list);
        }
    }

    // Funnel counts; the rates follow from them.
    let sql = format!(
        "SELECT a.user_id, count(*) FILTER (WHERE a.activity_type = 'SEARCH'), \
                count(*) FILTER (WHERE a.activity_type = 'CLICK'), \
                count(*) FILTER (WHERE a.activity_type = 'ADD_TO_CART') \
         FROM user_activity a WHERE {of_user} AND {} GROUP BY 1",
        window("a.activity_timestamp", MINUTE)
    );
    let mut funnels: BTreeMap<String, [i64; 3]> =
        users.iter().map(|u| (u.clone(), [0; 3])).collect();
    for row in rows(db, &sql, prefix, at).await {
        funnels.insert(row.get(0), [row.get(1), row.get(2), row.get(3)]);
    }
    for (user, [search, click, cart]) in funnels {
        let rate = |a: i64, b: i64| if a == 0 { Value::Null } else { json!(b as f64 / a as f64) };
        expected.insert(
            (user, "search_click_cart_conversion_1h".into()),
            json!({"counts": {"SEARCH": search, "CLICK": click, "ADD_TO_CART": cart},
                   "rates": [rate(search, click), rate(click, cart)]}),
        );
    }

    // Current state of the carts.
    for user in &users {
        expected.insert((user.clone(), "cart_total".into()), json!(0));
        expected.insert((user.clone(), "cart_item_count".into()), json!(0));
    }
    let sql = "SELECT user_id, sum(quantity * unit_price)::float8, sum(quantity)::bigint \
               FROM cart_items WHERE user_id LIKE $1 || '-u%' AND $2::timestamptz IS NOT NULL GROUP BY 1";
    for row in rows(db, sql, prefix, at).await {
        expected.insert((row.get(0), "cart_total".into()), json!(row.get::<_, f64>(1)));
        expected.insert((row.get(0), "cart_item_count".into()), json!(row.get::<_, i64>(2)));
    }

    // The products in the cart, most recently changed first (`updated_at` is stored as UTC).
    let lists = [
        (
            "cart_products",
            "SELECT user_id, product_id, updated_at AT TIME ZONE 'UTC', user_id || '/' || product_id \
             FROM cart_items WHERE user_id LIKE $1 || '-u%' AND updated_at AT TIME ZONE 'UTC' <= $2"
                .to_string(),
        ),
        (
            "purchased_products_30d",
            format!(
                "SELECT o.user_id, o.product_id, o.created_at, o.product_id FROM orders o \
                 WHERE o.user_id LIKE $1 || '-u%' AND {}",
                window("o.created_at", 12 * 60 * MINUTE)
            ),
        ),
    ];
    for (name, source) in lists {
        for user in &users {
            expected.insert((user.clone(), name.into()), json!([]));
        }
        let sql = format!(
            "WITH v(user_id, value, t, k) AS ({source}), \
                  newest AS (SELECT *, row_number() OVER (PARTITION BY user_id, value \
                                ORDER BY t DESC, k COLLATE \"C\" DESC) AS r FROM v), \
                  ranked AS (SELECT *, row_number() OVER (PARTITION BY user_id \
                                ORDER BY t DESC, k COLLATE \"C\" DESC) AS r2 FROM newest WHERE r = 1) \
             SELECT user_id, json_agg(value ORDER BY r2)::text FROM ranked WHERE r2 <= 50 GROUP BY 1"
        );
        for row in rows(db, &sql, prefix, at).await {
            let list: Value = serde_json::from_str(&row.get::<_, String>(1)).expect("json");
            expected.insert((row.get(0), name.into()), list);
        }
    }

    // Orders: top brands over 30 days (12 h buckets), intervals between the last three.
    for user in &users {
        expected.insert((user.clone(), "top_brands_purchased_30d".into()), json!([]));
    }
    let sql = format!(
        "WITH b AS (SELECT o.user_id, p.brand, count(*) AS n FROM orders o JOIN products p ON p.id = o.product_id \
                    WHERE o.user_id LIKE $1 || '-u%' AND p.brand IS NOT NULL AND {} GROUP BY 1, 2), \
              r AS (SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY n DESC, brand COLLATE \"C\") AS r FROM b) \
         SELECT user_id, json_agg(json_build_object('value', brand, 'count', n) ORDER BY r)::text FROM r WHERE r <= 3 GROUP BY 1",
        window("o.created_at", 12 * 60 * MINUTE)
    );
    for row in rows(db, &sql, prefix, at).await {
        let list: Value = serde_json::from_str(&row.get::<_, String>(1)).expect("json");
        expected.insert((row.get(0), "top_brands_purchased_30d".into()), list);
    }
    let sql = "WITH r AS (SELECT user_id, created_at, row_number() OVER (PARTITION BY user_id \
                          ORDER BY created_at DESC, id::text COLLATE \"C\" DESC) AS r \
                          FROM orders WHERE user_id LIKE $1 || '-u%' AND created_at <= $2) \
               SELECT a.user_id, extract(epoch from a.created_at - b.created_at)::float8 \
               FROM r a JOIN r b ON a.user_id = b.user_id AND b.r = a.r + 1 WHERE a.r < 3 ORDER BY a.user_id, a.r";
    let mut intervals: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for row in rows(db, sql, prefix, at).await {
        intervals.entry(row.get(0)).or_default().push(json!(row.get::<_, f64>(1)));
    }
    for (user, list) in intervals {
        expected.insert((user, "purchase_intervals".into()), Value::Array(list));
    }

    // Products: views and viewers over an hour, and the percent rank of views among all
    // products of the catalog (whatever their activity).
    for product in &products {
        expected.insert((product.clone(), "trending_score".into()), json!(0.0));
        expected.insert((product.clone(), "views_1h".into()), json!(0));
        expected.insert((product.clone(), "unique_viewers_1h".into()), json!(0));
    }
    let sql = format!(
        "SELECT product_id, count(*), count(DISTINCT user_id) FROM user_activity \
         WHERE product_id LIKE $1 || '-p%' AND activity_type = 'VIEW_PRODUCT' AND {} GROUP BY 1",
        window("activity_timestamp", MINUTE)
    );
    for row in rows(db, &sql, prefix, at).await {
        expected.insert((row.get(0), "views_1h".into()), json!(row.get::<_, i64>(1)));
        expected.insert((row.get(0), "unique_viewers_1h".into()), json!(row.get::<_, i64>(2)));
    }
    // Time decay: a bucket's views count 0.5^(age of its end / 10 minutes).
    let sql = format!(
        "WITH b AS (SELECT product_id, (extract(epoch from activity_timestamp) * 1000000)::bigint / {MINUTE} AS b, \
                           count(*) AS n FROM user_activity \
                    WHERE product_id LIKE $1 || '-p%' AND activity_type = 'VIEW_PRODUCT' AND {} GROUP BY 1, 2) \
         SELECT product_id, sum(n * power(0.5, greatest(0, (extract(epoch from $2::timestamptz) * 1000000)::bigint \
                                - (b + 1) * {MINUTE})::float8 / 600e6))::float8 FROM b GROUP BY 1",
        window("activity_timestamp", MINUTE)
    );
    for row in rows(db, &sql, prefix, at).await {
        expected.insert((row.get(0), "trending_score".into()), json!(row.get::<_, f64>(1)));
    }
    let catalog = if whole_catalog { "true" } else { "p.id LIKE $1 || '-p%'" };
    let sql = format!(
        "WITH v AS (SELECT p.id, count(a.id) AS views FROM products p \
                    LEFT JOIN user_activity a ON a.product_id = p.id AND a.activity_type = 'VIEW_PRODUCT' \
                         AND {} WHERE {catalog} GROUP BY p.id), \
              r AS (SELECT id, rank() OVER (ORDER BY views) - 1 AS below, count(*) OVER () AS n FROM v) \
         SELECT id, CASE WHEN n = 1 THEN 0 ELSE (below * 100 / (n - 1)) / 10 * 10 END FROM r \
         WHERE id LIKE $1 || '-p%'",
        window("a.activity_timestamp", MINUTE)
    );
    for row in rows(db, &sql, prefix, at).await {
        expected.insert((row.get(0), "popularity_percentile".into()), json!(row.get::<_, i64>(1)));
    }
    expected
}

/// Whether a served value matches the recomputed one: numbers within float rounding, distinct
/// counts within the HyperLogLog++ error bound (2% here, far above its 0.81% standard error).
pub fn matches(name: &str, served: &Value, expected: &Value) -> bool {
    match (served, expected) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap_or(f64::NAN), b.as_f64().unwrap_or(f64::NAN));
            let tolerance = if name.starts_with("unique_") {
                (0.02 * b).max(1.0)
            } else if name.starts_with("trending_") {
                // Served rounded to 6 decimals, from a float sum in another order.
                1e-5
            } else {
                1e-6
            };
            (a - b).abs() <= tolerance
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| matches(name, x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| matches(name, v, w)))
        }
        _ => served == expected,
    }
}

/// Compares everything served at `at` with the oracle; the mismatches, described.
pub async fn mismatches(
    persona: &Persona,
    db: &Client,
    prefix: &str,
    at: DateTime<Utc>,
    whole_catalog: bool,
) -> Vec<String> {
    let expected = expected(db, prefix, at, whole_catalog).await;
    let mut entities: Vec<Value> =
        (0..USERS).map(|u| json!({"entity": "user", "id": format!("{prefix}-u{u}")})).collect();
    entities.extend(
        (0..PRODUCTS).map(|p| json!({"entity": "product", "id": format!("{prefix}-p{p}")})),
    );
    let body = json!({"at": at.to_rfc3339(), "entities": entities});
    let (status, served) = persona.post("/api/v1/features/batch", &body).await;
    if status != 200 {
        return vec![format!("batch answered {status}: {served}")];
    }
    compare(&served, &expected, &NOT_COMPARED)
}

/// What a batch answer gets wrong against `expected`, described: values that differ, features
/// served as present that SQL says are missing (or the other way), and expected values not
/// served at all. Features named in `skip` are not compared.
pub fn compare(served: &Value, expected: &Expected, skip: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut unserved: BTreeMap<&(String, String), &Value> = expected.iter().collect();
    for result in served["results"].as_array().into_iter().flatten() {
        let id = result["id"].as_str().unwrap_or_default();
        for (name, feature) in result["features"].as_object().into_iter().flatten() {
            let key = (id.to_string(), name.clone());
            unserved.remove(&key);
            if skip.contains(&name.as_str()) {
                continue;
            }
            let want = expected.get(&key);
            let ok = match want {
                Some(want) => {
                    feature["status"] == "present" && matches(name, &feature["value"], want)
                }
                None => feature["status"] == "missing",
            };
            if !ok {
                problems.push(format!("{id} {name}: served {feature}, SQL says {want:?}"));
            }
        }
    }
    problems.extend(
        unserved
            .iter()
            .map(|((id, name), want)| format!("{id} {name}: not served, SQL says {want}")),
    );
    problems
}

pub async fn assert_no_mismatch(
    persona: &Persona,
    db: &Client,
    prefix: &str,
    whole_catalog: bool,
    when: &str,
) {
    assert_converges(persona, when, |at| mismatches(persona, db, prefix, at, whole_catalog)).await;
}

/// Compares at one read time, again and again, until `mismatches` finds none; panics with the
/// last ones after [`CATCH_UP`].
pub async fn assert_converges<F, Fut>(persona: &Persona, when: &str, mut mismatches: F)
where
    F: FnMut(DateTime<Utc>) -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let at = Utc::now();
    let mut last = Vec::new();
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    while tokio::time::Instant::now() < deadline {
        last = mismatches(at).await;
        if last.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "{when}: {} mismatches after {CATCH_UP:?}, for example:\n{}\n(log: {})",
        last.len(),
        last.iter().take(20).cloned().collect::<Vec<_>>().join("\n"),
        persona.log.display()
    );
}
