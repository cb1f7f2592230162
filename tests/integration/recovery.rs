//! Recovery on the real stack: persona notices when Redis lost its state and rebuilds it from the
//! topics by itself; `persona rebuild` builds fresh state while persona serves, then swaps it in;
//! a partition worker that dies is replaced without skipping anything; an instance paused past
//! its session cannot overwrite what the partition's new owner wrote.

use crate::common;

use std::process::Command;

use common::capture::Capture;
use common::{
    CATCH_UP, DEADLINE, Persona, counter, env, eventually, insert_activity, legacy_db, unique,
};
use fred::prelude::*;
use serde_json::json;

async fn redis() -> Client {
    let client = Builder::from_config(Config::from_url(&env("PERSONA_REDIS__URL")).expect("url"))
        .build()
        .expect("client");
    client.init().await.expect("connect to redis");
    client
}

async fn keys(redis: &Client, pattern: &str) -> Vec<String> {
    let mut cursor = "0".to_string();
    let mut keys = Vec::new();
    loop {
        let (next, page): (String, Vec<String>) = redis
            .custom(
                fred::cmd!("SCAN"),
                vec![cursor.clone(), "MATCH".into(), pattern.into(), "COUNT".into(), "1000".into()],
            )
            .await
            .expect("scan");
        keys.extend(page);
        if next == "0" {
            return keys;
        }
        cursor = next;
    }
}

#[tokio::test]
async fn state_lost_in_redis_is_noticed_and_rebuilt_from_the_topics() {
    let group = unique("emptied");
    let persona = Persona::start_with("emptied", &group, Vec::new()).await;
    let db = legacy_db().await;
    let user = unique("u");
    for _ in 0..3 {
        insert_activity(&db, &user, "CLICK", None, 5).await;
    }
    persona.wait_for_features(&user, &[("clicks_5m", json!(3))]).await;

    // What FLUSHALL (or a restart without persistence) does to this deployment's keys: the
    // entity hashes and the keys under the hash tag `{<key_prefix>}`.
    let redis = redis().await;
    let mut ours = keys(&redis, &format!("{group}:*")).await;
    ours.extend(keys(&redis, &format!("{{{group}}}:*")).await);
    assert!(ours.iter().any(|key| key.ends_with(":current")), "{ours:?}");
    let _: i64 = redis.del(ours).await.expect("delete");

    eventually("persona notices and rebuilds", DEADLINE, || async {
        let metrics = persona.metrics().await;
        let rebuilds = counter(&metrics, "persona_rebuilds_total", &["reason=\"redis_emptied\""]);
        if rebuilds >= 1.0 { Ok(()) } else { Err(format!("rebuilds: {rebuilds}")) }
    })
    .await;
    persona.wait_for_features(&user, &[("clicks_5m", json!(3))]).await;
    insert_activity(&db, &user, "CLICK", None, 5).await;
    persona.wait_for_features(&user, &[("clicks_5m", json!(4))]).await;
    let log = std::fs::read_to_string(&persona.log).expect("log");
    assert!(log.contains("redis lost persona's feature state"), "log: {}", persona.log.display());
}

#[tokio::test]
async fn rebuild_swaps_in_fresh_state_while_persona_serves() {
    let group = unique("rebuild");
    let persona = Persona::start_with("rebuild", &group, Vec::new()).await;
    let db = legacy_db().await;
    let user = unique("u");
    let deleted = insert_activity(&db, &user, "CLICK", None, 5).await;
    insert_activity(&db, &user, "CLICK", None, 5).await;
    insert_activity(&db, &user, "VIEW_PRODUCT", Some("p-rebuild"), 5).await;
    db.execute("DELETE FROM user_activity WHERE id = $1", &[&deleted]).await.expect("delete");
    persona
        .wait_for_features(
            &user,
            &[("clicks_5m", json!(1)), ("last_viewed_product", json!("p-rebuild"))],
        )
        .await;
    let redis = redis().await;
    let before: Option<String> = redis.get(format!("{{{group}}}:current")).await.expect("get");

    let output = Command::new(env!("CARGO_BIN_EXE_persona"))
        .args(["rebuild", "--grace", "2s"])
        .env("PERSONA_KAFKA__GROUP_ID", &group)
        .env("PERSONA_REDIS__KEY_PREFIX", &group)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run persona rebuild");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("rebuilt feature state generation"), "{stdout}");
    assert!(stdout.contains("changes applied"), "{stdout}");

    let after: Option<String> = redis.get(format!("{{{group}}}:current")).await.expect("get");
    assert_ne!(after, before, "a new generation is current");
    let old = before.expect("there was a generation");
    assert!(keys(&redis, &format!("{group}:{old}:*")).await.is_empty(), "old state deleted");
    assert!(keys(&redis, &format!("{{{group}}}:{old}:*")).await.is_empty(), "old marks deleted");

    // Serving continues from the new state, and what happens next lands in it once.
    insert_activity(&db, &user, "CLICK", None, 5).await;
    persona
        .wait_for_features(
            &user,
            &[("clicks_5m", json!(2)), ("last_viewed_product", json!("p-rebuild"))],
        )
        .await;
    let metrics = persona.metrics().await;
    assert!(
        counter(&metrics, "persona_rebuilds_total", &["reason=\"rebuild_command\""]) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_feature_added_to_the_file_is_served_and_the_change_is_flagged() {
    let group = unique("definitions");
    let mut persona = Persona::start_with("definitions", &group, Vec::new()).await;
    persona.stop().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("features.toml");
    let shipped = include_str!("../../features.toml");
    let added = "\n[[feature]]\nname = \"wishlist_adds_5m\"\nentity = \"user\"\n\
                 source = \"user_activity\"\nfilter = { activity_type = \"WISHLIST\" }\n\
                 aggregation = \"count\"\nwindow = \"5m\"\n";
    std::fs::write(&file, format!("{shipped}{added}")).expect("write definitions");
    let env = vec![("PERSONA_FEATURES__DEFINITIONS".to_string(), file.display().to_string())];
    let persona = Persona::start_with("definitions", &group, env).await;

    let db = legacy_db().await;
    let user = unique("u");
    insert_activity(&db, &user, "WISHLIST", None, 5).await;
    insert_activity(&db, &user, "WISHLIST", None, 5).await;
    persona.wait_for_features(&user, &[("wishlist_adds_5m", json!(2))]).await;
    let log = std::fs::read_to_string(&persona.log).expect("log");
    assert!(log.contains("feature definitions changed"), "log: {}", persona.log.display());
}

/// A panic in a partition's worker (injected through a hook that only debug builds have) loses
/// what it had queued and in flight; the partition is read again from its first change not yet
/// written, so every change is still applied exactly once.
#[tokio::test]
async fn a_worker_that_panics_is_replaced_and_its_partition_read_again() {
    let marker = unique("panic-on");
    let hook = vec![("PERSONA_TEST_PANIC_ON".to_string(), marker.clone())];
    let persona = Persona::start_with("worker-panic", &unique("worker-panic"), hook).await;
    let db = legacy_db().await;
    let user = unique("u");
    for _ in 0..5 {
        insert_activity(&db, &user, "CLICK", None, 2).await;
    }
    // The worker that gets this row panics, with whatever it holds after it.
    insert_activity(&db, &user, "VIEW_PRODUCT", Some(&marker), 2).await;
    for _ in 0..5 {
        insert_activity(&db, &user, "CLICK", None, 2).await;
    }
    let expected =
        [("clicks_5m", json!(10)), ("views_15m", json!(1)), ("last_viewed_product", json!(marker))];
    persona.wait_for_features_within(&user, &expected, CATCH_UP).await;
    let metrics = persona.metrics().await;
    assert_eq!(
        counter(&metrics, "persona_partition_worker_deaths_total", &[]),
        1.0,
        "the hook did not fire once: {metrics}"
    );
    let log = std::fs::read_to_string(&persona.log).expect("log");
    assert!(log.contains("partition worker died"), "log: {}", persona.log.display());
}

#[tokio::test]
async fn a_stale_owner_paused_past_its_session_is_fenced() {
    let db = legacy_db().await;
    let capture = Capture::create(&db).await;
    capture.apply();
    let user = capture.user("zombie");
    let marker = format!("{}-stop-here", capture.prefix);
    let group = unique("fence");
    let mut settings = capture.persona_env();
    settings.push(("PERSONA_KAFKA__SESSION_TIMEOUT".into(), "6s".into()));
    settings.push(("PERSONA_KAFKA__DRAIN_TIMEOUT".into(), "2s".into()));
    let mut hooked = settings.clone();
    hooked.push(("PERSONA_TEST_STOP_BEFORE_WRITE".into(), marker.clone()));

    let stale = Persona::start_with("fence-stale", &group, hooked).await;
    for _ in 0..3 {
        insert_activity(&db, &user, "CLICK", None, 2).await;
    }
    stale.wait_for_features(&user, &[("clicks_5m", json!(3))]).await;
    let before = stale.metrics().await;
    let written_before = counter(&before, "persona_state_writes_total", &[]);
    let duplicates = "persona_duplicate_events_total";
    let duplicates_before = counter(&before, duplicates, &[]);
    // The batch holding this row stops the process between loading the user's state and
    // writing it back.
    insert_activity(&db, &user, "VIEW_PRODUCT", Some(&marker), 2).await;
    eventually("the first instance stopped mid-write", DEADLINE, || async {
        if stale.is_stopped() { Ok(()) } else { Err("running".to_string()) }
    })
    .await;

    // The second instance gets the partitions once the first one's session has expired, applies
    // the change the first one holds, and then more.
    let owner = Persona::start_with("fence-owner", &group, settings).await;
    for _ in 0..2 {
        insert_activity(&db, &user, "CLICK", None, 2).await;
    }
    let expected = [("clicks_5m", json!(5)), ("views_15m", json!(1))];
    owner.wait_for_features_within(&user, &expected, CATCH_UP).await;

    // The stall also outlasts the Redis command timeout, so the held write may fail as a
    // timeout first; its retry loads the states again. Either way the stale instance must not
    // write: its write is refused by the fence, or the reload finds its batch already applied
    // by the new owner and there is nothing left to write.
    stale.signal("CONT");
    // Writes the stale instance counts are no evidence either way: it may have written other
    // partitions' batches after `before` was read and before it stopped. Its held batch ends in
    // a refusal or in finding its changes applied; a stale write that went through shows as
    // neither (and as a wrong value below).
    let found_applied =
        eventually("the stale instance done with the batch it held", DEADLINE, || async {
            let metrics = stale.metrics().await;
            let refused = counter(&metrics, "persona_stale_writes_refused_total", &[]);
            let found_applied = counter(&metrics, duplicates, &[]) > duplicates_before;
            let written = counter(&metrics, "persona_state_writes_total", &[]);
            if refused >= 1.0 || found_applied {
                Ok(found_applied && refused < 1.0)
            } else {
                // What tells a stale write that went through from a held batch that never ended.
                let drains =
                    |outcome: &str| counter(&metrics, "persona_partition_drains_total", &[outcome]);
                let owner_duplicates = counter(&owner.metrics().await, duplicates, &[]);
                Err(format!(
                    "neither refused nor found applied: {refused} refused, {written} written \
                     ({written_before} before); drains {} drained, {} timed out; the new owner \
                     skipped {owner_duplicates} duplicates",
                    drains("outcome=\"drained\""),
                    drains("outcome=\"timed_out\""),
                ))
            }
        })
        .await;
    // What the new owner wrote stands, and it goes on.
    insert_activity(&db, &user, "CLICK", None, 2).await;
    let rows: i64 = db
        .query_one(
            "SELECT count(*) FROM user_activity WHERE user_id = $1 AND activity_type = 'CLICK'",
            &[&user],
        )
        .await
        .expect("count")
        .get(0);
    owner.wait_for_features(&user, &[("clicks_5m", json!(rows)), ("views_15m", json!(1))]).await;
    if !found_applied {
        let refused = counter(&stale.metrics().await, "persona_stale_writes_refused_total", &[]);
        assert!(refused >= 1.0, "no refused write counted");
        let log = std::fs::read_to_string(&stale.log).expect("log");
        assert!(
            log.contains("another instance owns this partition"),
            "log: {}",
            stale.log.display()
        );
    }
}

#[tokio::test]
async fn an_unreadable_state_is_set_aside_and_rebuilt_from_its_partition() {
    let db = legacy_db().await;
    let capture = Capture::create(&db).await;
    capture.apply();
    let group = unique("unreadable");
    let mut persona = Persona::start_with("unreadable", &group, capture.persona_env()).await;
    let user = capture.user("garbled");
    for _ in 0..3 {
        insert_activity(&db, &user, "CLICK", None, 2).await;
    }
    persona.wait_for_features(&user, &[("clicks_5m", json!(3))]).await;

    // Garbled while no instance owns its partition (as a newer persona's value is met after a
    // rollback): the owner keeps the shares it wrote, and reads a share from Redis when it first
    // needs it.
    persona.stop().await;
    let redis = redis().await;
    let hashes = keys(&redis, &format!("{group}:*:user:{user}")).await;
    let [hash] = hashes.as_slice() else { panic!("one state hash expected: {hashes:?}") };
    let fields: Vec<String> = redis.hkeys(hash).await.expect("hkeys");
    let [stream] = fields.as_slice() else { panic!("one share expected: {fields:?}") };
    let _: () = redis.hset(hash, (stream.as_str(), "{\"rev\": garbled")).await.expect("hset");
    persona.restart().await;

    insert_activity(&db, &user, "CLICK", None, 2).await;
    let clicks: i64 = db
        .query_one("SELECT count(*) FROM user_activity WHERE user_id = $1", &[&user])
        .await
        .expect("count")
        .get(0);
    persona.wait_for_features_within(&user, &[("clicks_5m", json!(clicks))], CATCH_UP).await;
    let metrics = persona.metrics().await;
    assert!(counter(&metrics, "persona_unreadable_states_total", &["path=\"ingest\""]) >= 1.0);
    let quarantine =
        hash.rsplit_once(":user:").map(|(namespace, _)| format!("{namespace}:quarantine"));
    let kept: Option<String> =
        redis.hget(quarantine.expect("namespace"), format!("{hash} {stream}")).await.expect("hget");
    assert_eq!(kept.as_deref(), Some("{\"rev\": garbled"), "the unreadable value is kept aside");
}
