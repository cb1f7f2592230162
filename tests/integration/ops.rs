//! Ops on the real stack: `persona connector` against Postgres and Kafka Connect, the
//! consumed-events counters against a known workload, and the dead-letter topic.
//!
//! Tests that count events run on a capture of their own (`common::capture`), so that what
//! other tests write to the shared tables never reaches their topics.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::capture::{
    CONNECT_CONFIGS, Capture, PARTITIONS, TABLES, connector_file, consumer, create_publication,
    events_containing, hex, high_watermark, keys_written, partition_holding, persona, text,
};
use common::{DEADLINE, Persona, counter, env, eventually, insert_activity, legacy_db};
use rdkafka::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

#[tokio::test]
async fn validate_names_each_misconfiguration_and_its_fix() {
    let db = legacy_db().await;
    let id = hex();
    let table = format!("ops_{id}_visits");
    db.batch_execute(&format!(
        "CREATE TABLE {table} (id SERIAL PRIMARY KEY, user_id VARCHAR NOT NULL, amount NUMERIC(10, 2))"
    ))
    .await
    .expect("create table");
    let dir = tempfile::tempdir().expect("tempdir");
    // Keyed by user_id with REPLICA IDENTITY DEFAULT, decimals as bytes, and not in the
    // publication persona_cdc.
    let bad = connector_file(
        dir.path(),
        &format!("ops-{id}-bad"),
        &[
            ("table.include.list", Some(&format!("public.{table}"))),
            ("message.key.columns", Some(&format!("public.{table}:user_id"))),
            ("decimal.handling.mode", Some("precise")),
            ("slot.name", Some(&format!("ops_{id}_slot"))),
        ],
    );
    let output = persona(&["connector", "validate", bad.to_str().expect("path")], &[]);
    let report = text(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains(&format!("ALTER TABLE public.{table} REPLICA IDENTITY FULL")),
        "{report}"
    );
    assert!(report.contains("decimal.handling.mode") && report.contains("\"string\""), "{report}");
    assert!(
        report.contains(&format!("ALTER PUBLICATION persona_cdc ADD TABLE public.{table}")),
        "{report}"
    );

    // Fixing the database side leaves only the file's problem.
    db.batch_execute(&format!("ALTER TABLE {table} REPLICA IDENTITY FULL")).await.expect("alter");
    let output = persona(&["connector", "validate", bad.to_str().expect("path")], &[]);
    let report = text(&output);
    assert!(!report.contains("REPLICA IDENTITY"), "{report}");
    assert!(report.contains("decimal.handling.mode"), "{report}");

    // A variable the Connect worker does not have: named, and nothing is applied, even when
    // persona's own environment has it (the worker resolves placeholders, not persona).
    let variable = format!("OPS_{}_USER", id.to_uppercase());
    let name = format!("ops-{id}-env");
    let unset = connector_file(
        dir.path(),
        &name,
        &[
            ("database.user", Some(&format!("${{env:{variable}}}"))),
            ("slot.name", Some(&format!("ops_{id}_env"))),
        ],
    );
    let unset = unset.to_str().expect("path");
    let here = [(variable.clone(), "persona".to_string())];
    let output = persona(&["connector", "validate", unset], &here);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output)
            .contains(&format!("${{env:{variable}}}: the Kafka Connect worker cannot resolve it")),
        "{}",
        text(&output)
    );
    let output = persona(&["connector", "apply", unset], &here);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(text(&output).contains(&variable), "{}", text(&output));
    assert!(text(&output).contains("nothing was applied"), "{}", text(&output));
    let deployed = reqwest::get(format!("{}/connectors/{name}", env("PERSONA_CONNECT__URL")))
        .await
        .expect("GET connector");
    assert_eq!(deployed.status().as_u16(), 404, "the connector was created anyway");

    // A wrong password: a variable the worker has, holding something else. Connect refuses
    // the login, the reason is shown as text, and the hint names the variable.
    let wrong = connector_file(
        dir.path(),
        &format!("ops-{id}-wrong"),
        &[
            ("database.password", Some("${env:PERSONA_PG_DATABASE}")),
            ("slot.name", Some(&format!("ops_{id}_wrong"))),
        ],
    );
    let output = persona(&["connector", "apply", wrong.to_str().expect("path")], &[]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("password authentication failed"), "{}", text(&output));
    assert!(
        text(&output).contains("database.password = ${env:PERSONA_PG_DATABASE}"),
        "{}",
        text(&output)
    );
    assert!(
        !text(&output).contains("\\n"),
        "the reason is an escaped JSON string: {}",
        text(&output)
    );

    // The committed files pass.
    let output = persona(&["connector", "validate", "connect"], &[]);
    assert!(output.status.success(), "{}", text(&output));
    db.batch_execute(&format!("DROP TABLE {table}")).await.expect("drop table");
}

#[tokio::test]
async fn apply_twice_is_a_no_op_and_status_fails_for_a_paused_connector() {
    let db = legacy_db().await;
    let capture = Capture::create(&db).await;
    let before = high_watermark(CONNECT_CONFIGS, 0);
    let created = capture.apply();
    assert!(String::from_utf8_lossy(&created.stdout).contains("created"), "{}", text(&created));
    // What a write of this connector's config looks like in the config topic.
    let written = keys_written(CONNECT_CONFIGS, before, high_watermark(CONNECT_CONFIGS, 0));
    assert!(written.iter().any(|key| key.contains(&capture.prefix)), "{written:?}");

    // The worker resolves the placeholders: the password is in neither the config topic nor
    // what the REST API shows, whose records of this connector keep the placeholder.
    let password = env("PERSONA_PG_PASSWORD");
    let records = events_containing(CONNECT_CONFIGS, 0, before, &capture.prefix).await;
    assert!(!records.is_empty(), "no config record of {} found", capture.prefix);
    for record in &records {
        let record = String::from_utf8_lossy(record);
        // The record itself is not printed: it would put the password in the test's output.
        assert!(!record.contains(&password), "the password is in a config topic record");
    }
    assert!(
        records.iter().any(|r| String::from_utf8_lossy(r).contains("${env:PERSONA_PG_PASSWORD}")),
        "no record keeps the placeholder"
    );
    let connect = env("PERSONA_CONNECT__URL");
    for path in ["config", "tasks", "status"] {
        let url = format!("{connect}/connectors/{}/{path}", capture.prefix);
        let body = reqwest::get(&url).await.expect("GET").text().await.expect("body");
        assert!(!body.contains(&password), "GET {url} shows the password");
    }

    // Connect records every config it is sent in its config topic (shared with other tests'
    // connectors): nothing about this one may be written by the second apply.
    let configs = high_watermark(CONNECT_CONFIGS, 0);
    let again = capture.apply();
    assert!(String::from_utf8_lossy(&again.stdout).contains("unchanged"), "{}", text(&again));
    let written = keys_written(CONNECT_CONFIGS, configs, high_watermark(CONNECT_CONFIGS, 0));
    assert!(
        !written.iter().any(|key| key.contains(&capture.prefix)),
        "apply wrote the config again: {written:?}"
    );
    let plan = persona(&["connector", "plan", capture.file()], &[]);
    assert!(String::from_utf8_lossy(&plan.stdout).contains("up to date"), "{}", text(&plan));

    let status = persona(&["connector", "status", capture.file()], &[]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let pause = persona(&["connector", "pause", capture.file()], &[]);
    assert!(pause.status.success(), "{}", text(&pause));
    let status = persona(&["connector", "status", capture.file()], &[]);
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    assert!(String::from_utf8_lossy(&status.stdout).contains("PAUSED"), "{}", text(&status));
    let resume = persona(&["connector", "resume", capture.file()], &[]);
    assert!(resume.status.success(), "{}", text(&resume));
    let status = persona(&["connector", "status", capture.file()], &[]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
}

#[tokio::test]
async fn a_failed_task_is_explained_and_restarted_once_fixed() {
    let db = legacy_db().await;
    let capture = Capture::create(&db).await;
    db.batch_execute(&format!("DROP PUBLICATION {}_pub", capture.prefix)).await.expect("drop");

    let apply = persona(&["connector", "apply", capture.file()], &[]);
    assert!(!apply.status.success(), "{}", text(&apply));
    assert!(text(&apply).contains("task 0 FAILED"), "{}", text(&apply));
    assert!(text(&apply).contains("Publication autocreation is disabled"), "{}", text(&apply));
    let status = persona(&["connector", "status", capture.file()], &[]);
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    assert!(String::from_utf8_lossy(&status.stdout).contains("0:FAILED"), "{}", text(&status));
    assert!(text(&status).contains("Publication autocreation is disabled"), "{}", text(&status));

    // The fix the message asks for, then a restart of the failed task.
    create_publication(&db, &capture.prefix).await;
    let restart = persona(&["connector", "restart", capture.file()], &[]);
    assert!(restart.status.success(), "{}", text(&restart));
    let status = persona(&["connector", "status", capture.file()], &[]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
}

/// Sums `persona_events_consumed_total` per `(topic, op)` over the capture's topics.
fn consumed(metrics: &str, capture: &Capture) -> BTreeMap<(String, String), f64> {
    let mut counts = BTreeMap::new();
    for table in TABLES {
        for op in ["c", "u", "d", "r", "tombstone"] {
            let topic = capture.topic(table);
            let value = counter(
                metrics,
                "persona_events_consumed_total",
                &[&format!("topic=\"{topic}\""), &format!("op=\"{op}\"")],
            );
            if value > 0.0 {
                counts.insert((table.to_string(), op.to_string()), value);
            }
        }
    }
    counts
}

#[tokio::test]
async fn counters_match_the_workload_and_poison_is_dead_lettered() {
    let db = legacy_db().await;
    let capture = Capture::create(&db).await;
    capture.apply();
    let persona_env = capture.persona_env();
    let mut service_env = persona_env.clone();
    service_env.push(("PERSONA_OPS__INTERVAL".into(), "1s".into()));
    let service = Persona::start_with("ops-counters", &common::unique("ops"), service_env).await;

    // A known workload: 4 activity inserts, 1 update, 1 delete; 2 cart rows; 1 order.
    let alice = capture.user("alice");
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(insert_activity(&db, &alice, "CLICK", None, 0).await);
    }
    db.execute("UPDATE user_activity SET activity_type = 'SEARCH' WHERE id = $1", &[&ids[0]])
        .await
        .expect("update");
    db.execute("DELETE FROM user_activity WHERE id = $1", &[&ids[1]]).await.expect("delete");
    for product in ["p1", "p2"] {
        db.execute(
            "INSERT INTO cart_items (user_id, product_id, quantity, unit_price, updated_at) \
             VALUES ($1, $2, 1, 10.00, now())",
            &[&alice, &product],
        )
        .await
        .expect("cart");
    }
    db.execute(
        "INSERT INTO orders (user_id, product_id, quantity, amount, status) VALUES ($1, 'p1', 1, 10.00, 'PAID')",
        &[&alice],
    )
    .await
    .expect("order");

    let expected: BTreeMap<(String, String), f64> = [
        (("cart_items", "c"), 2.0),
        (("orders", "c"), 1.0),
        (("user_activity", "c"), 4.0),
        (("user_activity", "d"), 1.0),
        (("user_activity", "tombstone"), 1.0),
        (("user_activity", "u"), 1.0),
    ]
    .into_iter()
    .map(|((t, o), n)| ((t.to_string(), o.to_string()), n))
    .collect();
    let total: f64 = expected.values().sum();
    let counts = eventually("every change of the workload consumed", DEADLINE, || async {
        let counts = consumed(&service.metrics().await, &capture);
        if counts.values().sum::<f64>() >= total { Ok(counts) } else { Err(format!("{counts:?}")) }
    })
    .await;
    assert_eq!(counts, expected);
    service
        .wait_for_features(&alice, &[("clicks_15m", json!(2)), ("cart_item_count", json!(2))])
        .await;

    // Poison in every partition of the activity topic, then a valid change behind it.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env("PERSONA_KAFKA__BROKERS"))
        .create()
        .expect("producer");
    let topic = capture.topic("user_activity");
    let mut poisoned = Vec::new();
    for partition in 0..PARTITIONS {
        let delivery = producer
            .send(
                FutureRecord::to(&topic)
                    .partition(partition)
                    .key(&alice)
                    .payload("{not json")
                    .headers(
                        OwnedHeaders::new().insert(Header { key: "origin", value: Some("test") }),
                    ),
                Duration::from_secs(10),
            )
            .await
            .expect("poison delivered");
        poisoned.push((delivery.partition, delivery.offset));
    }
    insert_activity(&db, &alice, "CLICK", None, 0).await;
    service.wait_for_features(&alice, &[("clicks_15m", json!(3))]).await;
    // The other partitions reach their poison in their own time.
    let metrics = eventually("the poison of every partition dead-lettered", DEADLINE, || async {
        let metrics = service.metrics().await;
        let dead = counter(&metrics, "persona_dead_letters_total", &["kind=\"invalid_json\""]);
        if dead >= 4.0 { Ok(metrics) } else { Err(format!("{dead} dead-lettered")) }
    })
    .await;
    assert_eq!(counter(&metrics, "persona_dead_letters_total", &["kind=\"invalid_json\""]), 4.0);
    assert_eq!(counter(&metrics, "persona_decode_errors_total", &["kind=\"invalid_json\""]), 4.0);

    // The other series ops read, for this capture: latency by route pattern (never a user id),
    // capture lag for every change, and the capture's slot and connector as polled.
    let route = "route=\"/api/v1/users/{user_id}/features\"";
    assert!(counter(&metrics, "persona_http_request_duration_seconds_count", &[route]) >= 1.0);
    assert!(!metrics.contains(&format!("route=\"/api/v1/users/{alice}")), "{metrics}");
    // One observation per change event: the workload's messages less its tombstone, plus the
    // insert after the poison, which makes `total` again.
    assert_eq!(counter(&metrics, "persona_capture_lag_seconds_count", &[]), total);
    let slot = format!("slot=\"{}_slot\"", capture.prefix);
    let connector = format!("connector=\"{}\"", capture.prefix);
    eventually("slot and connector polled", DEADLINE, || async {
        let metrics = service.metrics().await;
        let active = counter(&metrics, "persona_replication_slot_active", &[&slot]);
        let running =
            counter(&metrics, "persona_connector_state", &[&connector, "state=\"RUNNING\""]);
        let wal = metrics.lines().any(|line| {
            line.starts_with("persona_replication_slot_retained_wal_bytes") && line.contains(&slot)
        });
        if active == 1.0 && running == 1.0 && wal {
            Ok(())
        } else {
            Err(format!("slot active {active}, connector running {running}, WAL series {wal}"))
        }
    })
    .await;

    let letters = eventually("four dead letters listed", DEADLINE, || async {
        let output = persona(&["dlq", "list", "--json"], &persona_env);
        let letters: Vec<Value> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        if letters.len() == 4 { Ok(letters) } else { Err(text(&output)) }
    })
    .await;
    let mut sources: Vec<(i64, i64)> = letters
        .iter()
        .map(|l| {
            assert_eq!(l["source_topic"], json!(topic));
            assert_eq!(l["kind"], json!("invalid_json"));
            assert_eq!(l["payload"], json!("{not json"));
            (
                l["source_partition"].as_i64().expect("partition"),
                l["source_offset"].as_i64().expect("offset"),
            )
        })
        .collect();
    sources.sort();
    let mut poisoned: Vec<(i64, i64)> = poisoned.iter().map(|(p, o)| (i64::from(*p), *o)).collect();
    poisoned.sort();
    assert_eq!(sources, poisoned);

    // Re-driven unchanged, the poison fails again and says where it was re-driven from.
    let replay = persona(&["dlq", "replay", "--all"], &persona_env);
    assert!(replay.status.success(), "{}", text(&replay));
    eventually("re-driven poison dead-lettered again", DEADLINE, || async {
        let output = persona(&["dlq", "list", "--json"], &persona_env);
        let again = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|l| l["replay_of"].is_string())
            .count();
        if again == 4 { Ok(()) } else { Err(text(&output)) }
    })
    .await;
}

/// A change that was never applied, re-driven from the dead-letter topic twice, counts once —
/// although its source position is behind what the user's stream applied since.
#[tokio::test]
async fn a_redriven_dead_letter_is_applied_once() {
    let db = legacy_db().await;
    let capture = Capture::create(&db).await;
    // Written before the capture's slot exists (snapshot.mode no_data): never delivered to this
    // capture, only to the shared topic. It plays a change an older persona dead-lettered.
    let dave = capture.user("dave");
    let missed = insert_activity(&db, &dave, "CLICK", None, 0).await;
    capture.apply();
    let persona_env = capture.persona_env();
    let service =
        Persona::start_with("ops-replay", &common::unique("ops"), persona_env.clone()).await;
    insert_activity(&db, &dave, "CLICK", None, 0).await;
    insert_activity(&db, &dave, "CLICK", None, 0).await;
    service.wait_for_features(&dave, &[("clicks_15m", json!(2))]).await;
    let event = shared_event_for(&missed.to_string()).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env("PERSONA_KAFKA__BROKERS"))
        .create()
        .expect("producer");
    let source = capture.topic("user_activity");
    let partition = partition_holding(&source, &dave).await;
    let partition_text = partition.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header { key: "persona.error", value: Some("not decodable by an older persona") })
        .insert(Header { key: "persona.error.kind", value: Some("invalid_field") })
        .insert(Header { key: "persona.source.topic", value: Some(source.as_str()) })
        .insert(Header { key: "persona.source.partition", value: Some(partition_text.as_str()) })
        .insert(Header { key: "persona.source.offset", value: Some("0") });
    let delivery = producer
        .send(
            FutureRecord::to(&capture.dlq()).key(&dave).payload(&event).headers(headers),
            Duration::from_secs(10),
        )
        .await
        .expect("dead letter written");
    let offset = delivery.offset.to_string();
    for _ in 0..2 {
        let replay = persona(&["dlq", "replay", "--offset", &offset], &persona_env);
        assert!(replay.status.success(), "{}", text(&replay));
    }
    let topic = format!("topic=\"{source}\"");
    eventually("both re-driven copies consumed", DEADLINE, || async {
        let metrics = service.metrics().await;
        let creates = counter(&metrics, "persona_events_consumed_total", &[&topic, "op=\"c\""]);
        if creates >= 4.0 { Ok(()) } else { Err(format!("{creates} creates consumed")) }
    })
    .await;
    let features = service.wait_for_features(&dave, &[("clicks_15m", json!(3))]).await;
    let metrics = service.metrics().await;
    assert_eq!(counter(&metrics, "persona_events_consumed_total", &[&topic, "op=\"c\""]), 4.0);
    assert_eq!(counter(&metrics, "persona_duplicate_events_total", &[&topic]), 1.0, "{features}");
}

/// The create event Debezium published on the shared topic for the activity row `id`.
async fn shared_event_for(id: &str) -> Vec<u8> {
    let topic = "persona.public.user_activity";
    eventually("the shared topic carries the row's create event", DEADLINE, || async {
        for partition in 0..PARTITIONS {
            let (_, high) = consumer()
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            for payload in events_containing(topic, partition, high - 200, id).await {
                let event: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
                if event["op"] == "c" && event["after"]["id"] == json!(id) {
                    return Ok(payload);
                }
            }
        }
        Err("not found yet".to_string())
    })
    .await
}
