//! The decoder against what Debezium really publishes: rows written with SQL are read back raw
//! from the CDC topics and decoded with persona's decoder.

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use common::{env, legacy_db, unique};
use persona::cdc::envelope::{self, CdcMessage, Op};
use persona::features::ActivityChange;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rust_decimal::Decimal;

fn consumer(topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", env("PERSONA_KAFKA__BROKERS"))
        .set("group.id", unique("shapes"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// Reads until `count` messages whose key contains `needle` were seen (in partition order).
async fn messages_keyed(
    consumer: &StreamConsumer,
    needle: &str,
    count: usize,
) -> Vec<OwnedMessage> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut found = Vec::new();
    while found.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "only {} of {count} messages keyed {needle}", found.len());
        if let Ok(Ok(message)) = tokio::time::timeout(left, consumer.recv()).await {
            let key = message.key().map(String::from_utf8_lossy).unwrap_or_default();
            if key.contains(needle) {
                found.push(message.detach());
            }
        }
    }
    found
}

fn change(message: &OwnedMessage) -> envelope::ChangeEvent {
    match envelope::decode(message.payload()) {
        Ok(CdcMessage::Change(event)) => event,
        other => panic!("expected a change event, got {other:?}"),
    }
}

#[tokio::test]
async fn products_carry_numeric_strings_and_timestamp_micros() {
    let consumer = consumer("persona.public.products");
    let db = legacy_db().await;
    let id = unique("p");
    let updated_at =
        NaiveDateTime::parse_from_str("2026-11-22 10:11:12.345678", "%Y-%m-%d %H:%M:%S%.f")
            .expect("timestamp");
    db.execute(
        "INSERT INTO products (id, name, category, brand, price, updated_at) \
         VALUES ($1, 'Trail <shoe>', 'shoes', 'Acme', 1234.56, $2)",
        &[&id, &updated_at],
    )
    .await
    .expect("insert");
    db.execute("UPDATE products SET price = 0.99 WHERE id = $1", &[&id]).await.expect("update");

    let messages = messages_keyed(&consumer, &id, 2).await;
    let created = change(&messages[0]);
    assert_eq!(created.op, Op::Create);
    let product = envelope::product_row(created.after.as_ref().expect("after")).expect("decodes");
    assert_eq!(product.price, Some(Decimal::new(123456, 2)));
    assert_eq!(product.name.as_deref(), Some("Trail <shoe>"));
    assert_eq!(
        product.updated_at,
        Some(DateTime::<Utc>::from_naive_utc_and_offset(updated_at, Utc))
    );
    assert!(created.source.ts_ms.is_some());

    let updated = change(&messages[1]);
    assert_eq!(updated.op, Op::Update);
    let product = envelope::product_row(updated.after.as_ref().expect("after")).expect("decodes");
    assert_eq!(product.price, Some(Decimal::new(99, 2)));
}

#[tokio::test]
async fn activity_deletes_keep_their_user_and_are_followed_by_a_tombstone() {
    let consumer = consumer("persona.public.user_activity");
    let db = legacy_db().await;
    let user = unique("u");
    let id = common::insert_activity(&db, &user, "VIEW_PRODUCT", Some("p1"), 0).await;
    db.execute("DELETE FROM user_activity WHERE id = $1", &[&id]).await.expect("delete");

    let messages = messages_keyed(&consumer, &user, 3).await;
    let created = change(&messages[0]);
    let changes = envelope::activity_changes(&created).expect("decodes");
    let [(owner, ActivityChange::Upsert(activity))] = changes.as_slice() else {
        panic!("expected one upsert, got {changes:?}");
    };
    assert_eq!(owner, &user);
    assert_eq!(activity.id, id.to_string());

    // REPLICA IDENTITY FULL: the delete's before image still names the user.
    let deleted = change(&messages[1]);
    assert_eq!(deleted.op, Op::Delete);
    let changes = envelope::activity_changes(&deleted).expect("decodes");
    assert_eq!(changes, vec![(user.clone(), ActivityChange::Delete { id: id.to_string() })]);

    assert_eq!(envelope::decode(messages[2].payload()), Ok(CdcMessage::Tombstone));
}
