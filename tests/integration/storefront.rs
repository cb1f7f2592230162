//! Recommendations and the server-rendered storefront on the real stack: rows written to the
//! legacy tables change what a user is recommended and what their page shows; purchases and cart
//! contents are left out; a cold user gets popular products; markup from the database is escaped;
//! live updates arrive over SSE; a page still renders when Redis is slow or down.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    DEADLINE, OwnRedis, Persona, counter, eventually, free_port, insert_activity, legacy_db,
    next_live_event, unique, upsert_product,
};
use serde_json::Value;

const MARKUP: &str = "<script>alert(1)</script>";

struct Shop {
    shoes_category: String,
    hats_category: String,
    shoes: Vec<String>,
    hats: Vec<String>,
    markup: String,
}

/// Four shoes and four hats in categories of this test's own, and a hat named with markup.
async fn seed_shop(db: &tokio_postgres::Client, prefix: &str) -> Shop {
    let shoes_category = format!("{prefix}-shoes");
    let hats_category = format!("{prefix}-hats");
    let mut shop = Shop {
        shoes: Vec::new(),
        hats: Vec::new(),
        markup: format!("{prefix}-x"),
        shoes_category,
        hats_category,
    };
    for i in 1..=4 {
        let shoe = format!("{prefix}-s{i}");
        let hat = format!("{prefix}-h{i}");
        let price = format!("{}.00", 20 * i + 10);
        upsert_product(db, &shoe, &format!("Shoe {i}"), &shop.shoes_category, &price).await;
        upsert_product(db, &hat, &format!("Hat {i}"), &shop.hats_category, &price).await;
        shop.shoes.push(shoe);
        shop.hats.push(hat);
    }
    upsert_product(db, &shop.markup, MARKUP, &shop.hats_category, "15.00").await;
    shop
}

async fn recommendations(persona: &Persona, user: &str, query: &str) -> Value {
    let (status, body) =
        persona.get(&format!("/api/v1/users/{user}/recommendations?{query}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn ids(body: &Value) -> Vec<String> {
    body["recommendations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["product_id"].as_str().map(String::from))
        .collect()
}

async fn round_trips(persona: &Persona) -> f64 {
    counter(&persona.metrics().await, "persona_redis_round_trips_total", &["op=\"entity_read\""])
}

#[tokio::test]
async fn recommendations_and_pages_follow_what_users_do() {
    let prefix = unique("shop");
    let persona = Persona::start("storefront").await;
    let db = legacy_db().await;
    let shop = seed_shop(&db, &prefix).await;

    // The crowd makes hat 1 the most viewed, then hat 2.
    for i in 0..6 {
        insert_activity(
            &db,
            &format!("{prefix}-crowd{}", i % 3),
            "VIEW_PRODUCT",
            Some(&shop.hats[0]),
            0,
        )
        .await;
    }
    for i in 0..2 {
        insert_activity(&db, &format!("{prefix}-crowd{i}"), "VIEW_PRODUCT", Some(&shop.hats[1]), 0)
            .await;
    }

    // A user with no history gets the most popular products, marked so.
    let hats = format!("category={}&limit=10", shop.hats_category);
    eventually("a cold user gets popular hats, most viewed first", DEADLINE, || async {
        let body = recommendations(&persona, &format!("{prefix}-nobody"), &hats).await;
        let list = ids(&body);
        let popular = body["source"] == "popular"
            && body["recommendations"]
                .as_array()
                .is_some_and(|items| items.iter().all(|item| item["reason"]["kind"] == "popular"));
        if popular && list.first() == Some(&shop.hats[0]) && list.get(1) == Some(&shop.hats[1]) {
            Ok(())
        } else {
            Err(body.to_string())
        }
    })
    .await;

    // A user who viewed only shoes gets shoes first.
    let alice = format!("{prefix}-alice");
    for shoe in &shop.shoes[..3] {
        insert_activity(&db, &alice, "VIEW_PRODUCT", Some(shoe), 0).await;
    }
    eventually("shoes first for a user who viewed shoes", DEADLINE, || async {
        let body = recommendations(&persona, &alice, "limit=20").await;
        let first = &body["recommendations"][0];
        let includes_both =
            ids(&body).contains(&shop.shoes[1]) && ids(&body).contains(&shop.shoes[2]);
        if body["source"] == "personalized"
            && first["category"] == shop.shoes_category.as_str()
            && includes_both
        {
            Ok(())
        } else {
            Err(body.to_string())
        }
    })
    .await;

    // A purchased product, and one in the cart, are left out.
    db.execute(
        "INSERT INTO orders (user_id, product_id, quantity, amount, status) VALUES ($1, $2, 1, 50, 'paid')",
        &[&alice, &shop.shoes[1]],
    )
    .await
    .expect("order");
    db.execute(
        "INSERT INTO cart_items (user_id, product_id, quantity, unit_price, updated_at) \
         VALUES ($1, $2, 1, 70, now() AT TIME ZONE 'UTC')",
        &[&alice, &shop.shoes[2]],
    )
    .await
    .expect("cart row");
    eventually("the purchased and the carted shoe are left out", DEADLINE, || async {
        let body = recommendations(&persona, &alice, "limit=50").await;
        let list = ids(&body);
        if !list.contains(&shop.shoes[1])
            && !list.contains(&shop.shoes[2])
            && list.contains(&shop.shoes[3])
        {
            Ok(())
        } else {
            Err(body.to_string())
        }
    })
    .await;

    // The storefront carries the recommendations in its first response; markup is text.
    insert_activity(&db, &alice, "VIEW_PRODUCT", Some(&shop.markup), 0).await;
    let page =
        eventually("the storefront shows the product named with markup", DEADLINE, || async {
            let (status, _, html) = persona.get_text(&format!("/u/{alice}")).await;
            if status == 200 && html.contains("&#60;script&#62;alert(1)&#60;/script&#62;") {
                Ok(html)
            } else {
                Err(format!("{status}: {html}"))
            }
        })
        .await;
    assert!(!page.contains(MARKUP), "raw markup in the page:\n{page}");
    assert!(page.contains("Recommended for you") && page.contains("class=\"card\""), "{page}");
    assert!(page.contains("Your recent activity") && page.contains("Shoe 1"), "{page}");
    let (status, _, product) = persona.get_text(&format!("/p/{}?u={alice}", shop.markup)).await;
    assert_eq!(status, 200, "{product}");
    assert!(product.contains("&#60;script&#62;") && !product.contains(MARKUP), "{product}");
    let (status, _, missing) = persona.get_text(&format!("/p/{prefix}-none")).await;
    assert_eq!(status, 404, "{missing}");

    // At most one Redis round trip for a user not in L1, none once it is.
    let fresh = format!("{prefix}-fresh");
    let before = round_trips(&persona).await;
    recommendations(&persona, &fresh, "limit=5").await;
    let after_miss = round_trips(&persona).await;
    let (status, _, _) = persona.get_text(&format!("/u/{fresh}")).await;
    assert_eq!(status, 200);
    let after_hit = round_trips(&persona).await;
    assert_eq!(after_miss - before, 1.0, "Redis round trips for an L1 miss");
    assert_eq!(after_hit - after_miss, 0.0, "Redis round trips for an L1 hit");
}

#[tokio::test]
async fn the_live_stream_pushes_a_new_block_when_the_user_acts() {
    let prefix = unique("live");
    let mut persona = Persona::start("live").await;
    let db = legacy_db().await;
    let shop = seed_shop(&db, &prefix).await;
    let user = format!("{prefix}-bob");
    insert_activity(&db, &user, "VIEW_PRODUCT", Some(&shop.shoes[0]), 0).await;
    let version = eventually("bob's storefront reflects his view", DEADLINE, || async {
        let (_, _, html) = persona.get_text(&format!("/u/{user}")).await;
        match html.split("data-version=\"").nth(1).and_then(|rest| rest.split('"').next()) {
            Some(version) if html.contains("Shoe 1") => Ok(version.to_string()),
            _ => Err(html),
        }
    })
    .await;

    let client = reqwest::Client::new();
    let response = client
        .get(format!("{}/u/{user}/live?since={version}", persona.base_url))
        .send()
        .await
        .expect("open the live stream");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/event-stream")
    );
    let mut stream = response;
    let mut buffer = String::new();

    let started = Instant::now();
    insert_activity(&db, &user, "VIEW_PRODUCT", Some(&shop.hats[2]), 0).await;
    let block = tokio::time::timeout(DEADLINE, async {
        loop {
            let block = next_live_event(&mut stream, &mut buffer).await;
            if block.contains("Hat 3") {
                return block;
            }
        }
    })
    .await
    .expect("a live block naming the newly viewed hat");
    println!("live block arrived {:?} after the insert", started.elapsed());
    assert!(block.starts_with("<div id=\"live\""), "{block}");
    assert!(!block.contains(&format!("data-version=\"{version}\"")), "same version sent again");

    // An open live stream does not hold up a graceful shutdown: it ends when draining starts.
    tokio::time::timeout(DEADLINE, persona.stop())
        .await
        .expect("persona stops within the deadline with a live stream open");
    let rest =
        tokio::time::timeout(DEADLINE, async { while let Ok(Some(_)) = stream.chunk().await {} })
            .await;
    assert!(rest.is_ok(), "the live stream stayed open after shutdown");
}

#[tokio::test]
async fn pages_render_popular_products_when_redis_is_slow_or_down() {
    let prefix = unique("degraded");
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let persona = Persona::start_with(
        "degraded",
        &unique("degraded"),
        vec![("PERSONA_REDIS__URL".into(), redis.url())],
    )
    .await;
    let db = legacy_db().await;
    let shop = seed_shop(&db, &prefix).await;
    eventually("the catalog has the shop", DEADLINE, || async {
        let (status, _, html) = persona.get_text(&format!("/p/{}", shop.hats[0])).await;
        if status == 200 { Ok(()) } else { Err(html) }
    })
    .await;

    // Slow: Redis blocked in DEBUG SLEEP. The page waits its render deadline, not Redis.
    let port = redis.port.to_string();
    let mut sleeper = Command::new("redis-cli")
        .args(["-p", &port, "debug", "sleep", "4"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-cli debug sleep");
    eventually("redis is blocked", Duration::from_secs(5), || async {
        let ping = Command::new("timeout")
            .args(["0.3", "redis-cli", "-p", &port, "ping"])
            .output()
            .expect("redis-cli ping");
        if ping.status.success() { Err("redis still answers".into()) } else { Ok(()) }
    })
    .await;
    let started = Instant::now();
    let (status, headers, html) = persona.get_text(&format!("/u/{prefix}-slowpoke")).await;
    let took = started.elapsed();
    println!("page with Redis blocked: {took:?}, server-timing {:?}", headers.get("server-timing"));
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("class=\"card\""), "no products:\n{html}");
    assert!(
        html.contains("took too long") || html.contains("unavailable right now"),
        "no notice:\n{html}"
    );
    sleeper.wait().expect("debug sleep ends");

    // Down: Redis stopped.
    let (_port, _dir) = redis.stop();
    eventually("the page says recommendations are unavailable", DEADLINE, || async {
        let (status, _, html) = persona.get_text(&format!("/u/{prefix}-downcast")).await;
        if status == 200
            && html.contains("unavailable right now")
            && html.contains("class=\"card\"")
        {
            Ok(())
        } else {
            Err(format!("{status}: {html}"))
        }
    })
    .await;
}
