//! Redis goes away under a running persona: reads keep answering from L1, marked stale; ingest
//! holds its offsets and catches up when Redis returns — nothing is lost.
//!
//! Runs its own Redis (see [`common::OwnRedis`]) so it can stop it without disturbing the other
//! tests.

use crate::common;

use common::capture::Capture;
use common::{
    CATCH_UP, DEADLINE, DEFAULT_PARTITIONS, OwnRedis, Persona, counter, eventually, free_port,
    insert_activity, legacy_db, unique,
};
use serde_json::json;

#[tokio::test]
async fn reads_go_stale_and_ingest_holds_while_redis_is_down() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let persona = Persona::start_with(
        "outage",
        &unique("outage"),
        vec![("PERSONA_REDIS__URL".into(), redis_url), ("PERSONA_CACHE__TTL".into(), "10m".into())],
    )
    .await;
    let db = legacy_db().await;
    let user = unique("u");

    // A new group first reads the topics' history; the outage must hit an instance that is
    // current, or what follows measures the history rather than the outage.
    persona.wait_caught_up(DEFAULT_PARTITIONS, CATCH_UP).await;
    insert_activity(&db, &user, "CLICK", None, 2).await;
    let body = persona.wait_for_features(&user, &[("clicks_5m", json!(1))]).await;
    assert_eq!(body["freshness"], "live");

    let (port, dir) = redis.stop();
    let stale = eventually("reads marked stale", DEADLINE, || async {
        let body = persona.features(&user).await;
        if body["freshness"] == "stale" { Ok(body) } else { Err(body.to_string()) }
    })
    .await;
    assert_eq!(stale["features"]["clicks_5m"]["value"], json!(1), "{stale}");
    assert_eq!(stale["features"]["clicks_5m"]["status"], "stale", "{stale}");
    let (status, _) = persona.get("/readyz").await;
    assert_eq!(status, 503, "not ready without redis");

    // Written while Redis is down: must not be lost.
    insert_activity(&db, &user, "CLICK", None, 1).await;
    insert_activity(&db, &user, "SEARCH", None, 1).await;

    // Whatever every partition received during the outage is applied now; how long that takes
    // on a loaded machine is not what this test checks, only that nothing is lost.
    let _redis = OwnRedis::start(port, dir);
    let body = persona
        .wait_for_features_within(
            &user,
            &[("clicks_5m", json!(2)), ("searches_15m", json!(1))],
            CATCH_UP,
        )
        .await;
    assert_eq!(body["freshness"], "live");
}

/// Redis comes up only after persona: persona waits for it (`redis.startup_timeout`) instead of
/// failing, and then serves what was written meanwhile.
#[tokio::test]
async fn persona_waits_at_start_for_a_redis_that_comes_up_later() {
    let port = free_port();
    let db = legacy_db().await;
    let user = unique("u");
    insert_activity(&db, &user, "CLICK", None, 2).await;
    // The delay is the scenario (Redis starting late), not a wait for a condition.
    let redis = tokio::task::spawn_blocking(move || {
        std::thread::sleep(std::time::Duration::from_secs(3));
        OwnRedis::start(port, tempfile::tempdir().expect("tempdir"))
    });
    let persona = Persona::start_with(
        "late-redis",
        &unique("late-redis"),
        vec![("PERSONA_REDIS__URL".into(), format!("redis://127.0.0.1:{port}"))],
    )
    .await;
    let _redis = redis.await.expect("redis started");
    // The click is part of the history a new group reads first, however long that is.
    let body = persona.wait_for_features_within(&user, &[("clicks_5m", json!(1))], CATCH_UP).await;
    assert_eq!(body["freshness"], "live");
}

/// Invalidations published while persona's subscription is down are lost, so when it comes
/// back persona subscribes again and empties L1: a cached user is read from Redis next.
#[tokio::test]
async fn a_lost_invalidation_subscription_is_renewed_and_l1_emptied() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let persona = Persona::start_with(
        "resubscribe",
        &unique("resubscribe"),
        vec![
            ("PERSONA_REDIS__URL".into(), redis.url()),
            ("PERSONA_CACHE__TTL".into(), "10m".into()),
        ],
    )
    .await;
    let channel = format!("{{{}}}:l1-invalidate", persona.group);
    let subscribed = || redis.subscribers(&channel) == 1;
    // Subscribed as Redis sees it, and done with the L1 clear that follows a subscription (else
    // that clear may land between the two reads below).
    eventually("persona subscribed to invalidations", DEADLINE, || async {
        let metrics = persona.metrics().await;
        let cleared = counter(&metrics, "persona_l1_clears_total", &["reason=\"resubscribed\""]);
        if subscribed() && cleared >= 1.0 {
            Ok(())
        } else {
            Err(format!("subscribed: {}, L1 cleared {cleared} times", subscribed()))
        }
    })
    .await;

    let user = unique("u");
    // Read until L1 answers: that is the copy the lost subscription makes suspect. (A read from
    // Redis is not cached when an invalidation of another key of its shard came meanwhile, as
    // the ingest of the shared topics' history sends many.)
    eventually("the user is answered from L1", DEADLINE, || async {
        let l1 = |metrics: &str| counter(metrics, "persona_cache_lookups_total", &["tier=\"l1\""]);
        let before = l1(&persona.metrics().await);
        persona.features(&user).await;
        let after = l1(&persona.metrics().await);
        if after > before { Ok(()) } else { Err(format!("{after} L1 answers")) }
    })
    .await;
    let metrics = persona.metrics().await;
    let from_redis = counter(&metrics, "persona_cache_lookups_total", &["tier=\"redis\""]);
    let clears = counter(&metrics, "persona_l1_clears_total", &["reason=\"resubscribed\""]);

    redis.kill_clients("pubsub");
    eventually("persona resubscribed and emptied L1", DEADLINE, || async {
        let metrics = persona.metrics().await;
        let now = counter(&metrics, "persona_l1_clears_total", &["reason=\"resubscribed\""]);
        if now > clears && subscribed() {
            Ok(())
        } else {
            Err(format!("{now} clears after resubscribing, subscribed: {}", subscribed()))
        }
    })
    .await;
    persona.features(&user).await;
    let metrics = persona.metrics().await;
    assert_eq!(
        counter(&metrics, "persona_cache_lookups_total", &["tier=\"redis\""]),
        from_redis + 1.0,
        "the user cached before is read from Redis again"
    );
}

/// Redis refuses writes (out of memory): a failure that needs someone to act. It is reported as
/// such (log, metric, `/readyz`) while ingest holds its offsets; once memory is freed, nothing
/// is lost.
#[tokio::test]
async fn a_redis_that_refuses_writes_is_reported_and_nothing_is_lost() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let db = legacy_db().await;
    let capture = Capture::create(&db).await;
    capture.apply();
    let mut settings = capture.persona_env();
    settings.push(("PERSONA_REDIS__URL".into(), format!("redis://127.0.0.1:{}", redis.port)));
    let persona = Persona::start_with("oom", &unique("oom"), settings).await;
    let user = capture.user("oom");
    insert_activity(&db, &user, "CLICK", None, 2).await;
    persona.wait_for_features(&user, &[("clicks_5m", json!(1))]).await;

    redis.command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis.command(&["CONFIG", "SET", "maxmemory", "1"]);
    insert_activity(&db, &user, "CLICK", None, 1).await;
    insert_activity(&db, &user, "CLICK", None, 1).await;
    let readiness = eventually("ingest reported failing", DEADLINE, || async {
        let (status, body) = persona.get("/readyz").await;
        let failing = body["checks"]["ingest"].as_str().is_some_and(|s| s.contains("OOM"));
        if status == 200 && body["status"] == "degraded" && failing {
            Ok(body)
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    let metrics = persona.metrics().await;
    let permanent =
        counter(&metrics, "persona_feature_write_failures_total", &["class=\"permanent\""]);
    assert!(permanent >= 1.0, "not counted as permanent: {readiness}");

    redis.command(&["CONFIG", "SET", "maxmemory", "0"]);
    persona.wait_for_features_within(&user, &[("clicks_5m", json!(3))], CATCH_UP).await;
    let (_, body) = persona.get("/readyz").await;
    assert_eq!(body["checks"]["ingest"], "ok", "{body}");
}
