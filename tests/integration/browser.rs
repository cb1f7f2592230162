//! The storefront in a real browser: Debian's headless Chromium driven through chromedriver
//! (WebDriver). The first HTML already holds the recommendations; rows inserted with SQL then
//! change the page in place through SSE, without a reload, within two seconds. Screenshots go to
//! `target/screenshots/` (not committed).

use crate::common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    CATCH_UP, DEADLINE, DEFAULT_PARTITIONS, Persona, eventually, free_port, insert_activity,
    legacy_db, unique, upsert_product,
};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// How soon after the insert the page must show it (the requirement).
const LIVE_UPDATE_WITHIN: Duration = Duration::from_secs(2);

struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    fn start() -> Self {
        let binary =
            std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let port = free_port();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary} ({e}): install Debian's chromium and chromium-driver (scripts/stack up does)")
            });
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < DEADLINE, "chromedriver did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &ChromeDriver, profile: &std::path::Path) -> Client {
    let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": binary,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::native()
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session in headless Chromium")
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("target"), |target| target.to_path_buf())
        .join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    let path = screenshots().join(name);
    std::fs::write(&path, png).expect("write screenshot");
    println!("screenshot: {}", path.display());
}

/// `[version of the live block, the marker set before the change, whether the user's recent
/// activity names the text]`.
async fn observe(client: &Client, text: &str) -> Value {
    client
        .execute(
            "const live = document.getElementById('live');
             const activity = document.getElementById('activity');
             return [live ? live.getAttribute('data-version') : null,
                     window.__sameDocument || null,
                     activity ? activity.textContent.includes(arguments[0]) : false];",
            vec![json!(text)],
        )
        .await
        .expect("run script")
}

#[tokio::test]
async fn the_storefront_renders_server_side_and_updates_in_place() {
    let prefix = unique("browser");
    let persona = Persona::start("browser").await;
    let db = legacy_db().await;
    let (shoes, hats) = (format!("{prefix}-shoes"), format!("{prefix}-hats"));
    for i in 1..=4 {
        upsert_product(&db, &format!("{prefix}-s{i}"), &format!("Shoe {i}"), &shoes, "40.00").await;
        upsert_product(&db, &format!("{prefix}-h{i}"), &format!("Hat {i}"), &hats, "25.00").await;
    }
    let user = format!("{prefix}-carol");
    insert_activity(&db, &user, "VIEW_PRODUCT", Some(&format!("{prefix}-s1")), 0).await;
    insert_activity(&db, &user, "VIEW_PRODUCT", Some(&format!("{prefix}-s2")), 0).await;

    // Without JavaScript: the first response already holds the personalized content.
    let page = format!("/u/{user}");
    eventually("the first HTML holds recommendations", DEADLINE, || async {
        let (status, _, html) = persona.get_text(&page).await;
        if status == 200 && html.contains("class=\"card\"") && html.contains("Shoe 2") {
            Ok(())
        } else {
            Err(html)
        }
    })
    .await;

    // The two seconds are for an instance that keeps up, not one still reading the topics'
    // history as a new consumer group does.
    persona.wait_caught_up(DEFAULT_PARTITIONS, CATCH_UP).await;

    let driver = ChromeDriver::start();
    let profile = tempfile::tempdir().expect("browser profile");
    let client = browser(&driver, profile.path()).await;
    client.goto(&format!("{}{page}", persona.base_url)).await.expect("open the storefront");
    let cards = client.find_all(Locator::Css("#recommended .card")).await.expect("cards");
    assert!(!cards.is_empty(), "no recommendation cards in the browser");
    screenshot(&client, "storefront-initial.png").await;

    let before = client
        .execute(
            "window.__sameDocument = 'yes'; return document.getElementById('live').getAttribute('data-version');",
            vec![],
        )
        .await
        .expect("mark the document");
    assert!(
        !observe(&client, "Hat 3").await[2].as_bool().unwrap_or(true),
        "Hat 3 already in the recent activity"
    );

    let inserted = Instant::now();
    insert_activity(&db, &user, "VIEW_PRODUCT", Some(&format!("{prefix}-h3")), 0).await;
    let mut last = Value::Null;
    while inserted.elapsed() < LIVE_UPDATE_WITHIN {
        last = observe(&client, "Hat 3").await;
        if last[0] != before && last[2] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = inserted.elapsed();
    println!("the page showed the new activity {took:?} after the insert");
    screenshot(&client, "storefront-updated.png").await;
    assert!(
        last[0] != before && last[2] == true,
        "the live block did not change within {LIVE_UPDATE_WITHIN:?} of the insert: {last}"
    );
    assert_eq!(last[1], "yes", "the page was reloaded instead of updated in place");
    client.close().await.expect("close the browser");
}

/// A live stream refused for being past the stream budget is tried again by the page, later each
/// time, until it gets a place; the page then updates in place as usual.
#[tokio::test]
async fn a_refused_live_stream_is_retried_until_it_gets_a_place() {
    let prefix = unique("retry");
    let budget = vec![("PERSONA_API__MAX_STREAMS".to_string(), "1".to_string())];
    let persona = Persona::start_with("browser-retry", &unique("browser-retry"), budget).await;
    let db = legacy_db().await;
    let category = format!("{prefix}-shoes");
    for i in 1..=3 {
        upsert_product(&db, &format!("{prefix}-s{i}"), &format!("Shoe {i}"), &category, "40.00")
            .await;
    }
    let user = format!("{prefix}-dave");
    insert_activity(&db, &user, "VIEW_PRODUCT", Some(&format!("{prefix}-s1")), 0).await;
    let page = format!("/u/{user}");
    eventually("the first HTML holds recommendations", DEADLINE, || async {
        let (status, _, html) = persona.get_text(&page).await;
        if status == 200 && html.contains("class=\"card\"") { Ok(()) } else { Err(html) }
    })
    .await;
    persona.wait_caught_up(DEFAULT_PARTITIONS, CATCH_UP).await;

    // Another page holds the only place.
    let holder = reqwest::Client::new()
        .get(format!("{}/u/{prefix}-erin/live", persona.base_url))
        .send()
        .await
        .expect("the first stream");
    assert_eq!(holder.status(), 200, "the first stream is admitted");

    let driver = ChromeDriver::start();
    let profile = tempfile::tempdir().expect("browser profile");
    let client = browser(&driver, profile.path()).await;
    client.goto(&format!("{}{page}", persona.base_url)).await.expect("open the storefront");
    let live_state = || async {
        let state = client
            .execute(
                "const html = document.documentElement;
                 return [html.getAttribute('data-live-state'),
                         Number(html.getAttribute('data-live-retries') || 0)];",
                vec![],
            )
            .await
            .expect("run script");
        (state[0].as_str().map(String::from), state[1].as_u64().unwrap_or(0))
    };
    let refused = eventually("the page's stream is refused and retried", DEADLINE, || async {
        match live_state().await {
            (state, retries) if retries >= 2 => Ok((state, retries)),
            observed => Err(format!("{observed:?}")),
        }
    })
    .await;
    assert_ne!(refused.0.as_deref(), Some("open"), "the stream was admitted past the budget");

    // The place is freed (the server notices at its next keep-alive): the page gets it.
    drop(holder);
    eventually("the page's stream is admitted once a place is free", DEADLINE, || async {
        match live_state().await {
            (Some(state), _) if state == "open" => Ok(()),
            observed => Err(format!("{observed:?}")),
        }
    })
    .await;
    insert_activity(&db, &user, "VIEW_PRODUCT", Some(&format!("{prefix}-s3")), 0).await;
    eventually("the retried stream updates the page", DEADLINE, || async {
        let observed = observe(&client, "Shoe 3").await;
        if observed[2] == true { Ok(()) } else { Err(observed.to_string()) }
    })
    .await;
    client.close().await.expect("close the browser");
}

/// The ops dashboard after a workload: server-rendered charts with data, readable in Chromium.
#[tokio::test]
async fn the_dashboard_draws_charts_after_a_workload() {
    let user = unique("dash");
    let persona = Persona::start_with(
        "dashboard",
        &unique("dashboard"),
        vec![("PERSONA_OPS__INTERVAL".into(), "1s".into())],
    )
    .await;
    let db = legacy_db().await;
    for _ in 0..5 {
        insert_activity(&db, &user, "CLICK", None, 0).await;
    }
    persona.wait_for_features(&user, &[("clicks_1m", json!(5))]).await;
    // The sampler needs two samples around the workload for a rate; it takes one a second.
    eventually("the dashboard charts events and freshness", DEADLINE, || async {
        let (status, _, html) = persona.get_text("/ops").await;
        let freshness_charted = html
            .split("<figure")
            .any(|figure| figure.contains("Freshness p50") && figure.contains("<polyline"));
        if status == 200 && freshness_charted && html.contains("persona-postgres") {
            Ok(())
        } else {
            Err(format!("status {status}, freshness charted: {freshness_charted}"))
        }
    })
    .await;

    let driver = ChromeDriver::start();
    let profile = tempfile::tempdir().expect("browser profile");
    let client = browser(&driver, profile.path()).await;
    client.goto(&format!("{}/ops", persona.base_url)).await.expect("open the dashboard");
    let lines = client.find_all(Locator::Css(".chart polyline")).await.expect("charts");
    assert!(lines.len() >= 4, "{} charts drawn", lines.len());
    for line in &lines {
        let points = line.attr("points").await.expect("points").unwrap_or_default();
        assert!(!points.trim().is_empty(), "an empty chart line");
    }
    let events_chart = client
        .find(Locator::XPath("//figure[figcaption[contains(., 'Events per second')]]"))
        .await
        .expect("events chart");
    let caption = events_chart.text().await.expect("caption");
    assert!(!caption.contains("max 0.0/s"), "no event rate charted: {caption}");
    let events: f64 = client
        .find(Locator::Id("events-total"))
        .await
        .expect("events tile")
        .text()
        .await
        .expect("text")
        .parse()
        .expect("a number");
    assert!(events >= 5.0, "{events} events counted");
    let connector = client.find(Locator::Css("#connectors")).await.expect("connector table");
    assert!(connector.text().await.expect("text").contains("RUNNING"));
    screenshot(&client, "dashboard.png").await;

    client.goto(&format!("{}/ops/users/{user}", persona.base_url)).await.expect("inspector");
    let row = client
        .find(Locator::XPath("//table[@id='features']//tr[td[1]='clicks_1m']"))
        .await
        .expect("clicks_1m row");
    let text = row.text().await.expect("text");
    assert!(text.contains("present") && text.contains('5'), "{text}");
    screenshot(&client, "inspector.png").await;
    client.close().await.expect("close the browser");
}
