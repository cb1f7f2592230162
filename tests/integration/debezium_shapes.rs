//! The decoder against what Debezium really publishes: rows written with SQL are read back raw
//! from the CDC topics and decoded with persona's decoder.

use crate::common;

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use common::{env, legacy_db, unique};
use persona::decode::envelope::{self, CdcMessage, Op};
use persona::decode::{change, rows};
use persona::features::{FeatureSet, Product, Scalar};
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

/// The shipped definitions, which declare the reference schema.
static REFERENCE: LazyLock<FeatureSet> =
    LazyLock::new(|| FeatureSet::load(None).expect("shipped definitions"));

fn product_row(event: &envelope::ChangeEvent) -> Product {
    let dimension = REFERENCE.item_dimension().expect("the products dimension");
    rows::dimension_row(dimension, event.after.as_ref().expect("after"), |_| None).expect("decodes")
}

fn change(message: &OwnedMessage) -> envelope::ChangeEvent<'_> {
    match envelope::decode(message.payload()) {
        Ok(CdcMessage::Change(event)) => *event,
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
    let product = product_row(&created);
    assert_eq!(product.price, Some(Decimal::new(123456, 2)));
    assert_eq!(product.name.as_deref(), Some("Trail <shoe>"));
    let updated_at = DateTime::<Utc>::from_naive_utc_and_offset(updated_at, Utc);
    assert_eq!(product.attribute("updated_at"), &Scalar::Time(updated_at.timestamp_micros()));
    assert!(created.source.ts_ms.is_some());

    let updated = change(&messages[1]);
    assert_eq!(updated.op, Op::Update);
    let product = product_row(&updated);
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
    let created =
        change::source_change(&REFERENCE, &change(&messages[0])).expect("decodes").expect("row");
    let row = created.after.expect("after image");
    assert_eq!(row.text("user_id"), Some(user.as_str()));
    assert_eq!(row.key.to_string(), id.to_string());

    // REPLICA IDENTITY FULL: the delete's before image still names the user.
    let deleted = change(&messages[1]);
    assert_eq!(deleted.op, Op::Delete);
    let deleted = change::source_change(&REFERENCE, &deleted).expect("decodes").expect("row");
    assert!(deleted.after.is_none());
    assert_eq!(deleted.before.expect("before image").text("user_id"), Some(user.as_str()));
    assert!(
        deleted.position > created.position,
        "{:?} then {:?}",
        created.position,
        deleted.position
    );

    assert_eq!(envelope::decode(messages[2].payload()), Ok(CdcMessage::Tombstone));
}

/// The deduplication key: positions must grow in delivery order even when transactions
/// interleave (change LSNs then do not), and a primary-key update's delete and insert share an
/// LSN but must still be told apart.
#[tokio::test]
async fn positions_grow_in_delivery_order_across_interleaved_transactions() {
    let consumer = consumer("persona.public.user_activity");
    let mut first = legacy_db().await;
    let mut second = legacy_db().await;
    let user = unique("u");
    let insert = "INSERT INTO user_activity (id, user_id, activity_type, product_id, activity_timestamp) \
                  VALUES (gen_random_uuid(), $1, $2, NULL, now())";
    let early = first.transaction().await.expect("begin");
    early.execute(insert, &[&user, &"EARLY_1"]).await.expect("insert");
    let late = second.transaction().await.expect("begin");
    late.execute(insert, &[&user, &"LATE"]).await.expect("insert");
    late.commit().await.expect("commit");
    early.execute(insert, &[&user, &"EARLY_2"]).await.expect("insert");
    early.commit().await.expect("commit");
    let db = legacy_db().await;
    // A primary-key update keeps the message key (user_id): one update with both row keys.
    db.execute(
        "UPDATE user_activity SET id = gen_random_uuid() WHERE user_id = $1 AND activity_type = 'LATE'",
        &[&user],
    )
    .await
    .expect("primary key update");
    // Moving the row to another user changes the message key: a delete (and tombstone) under
    // the old key and a create under the new one, at one LSN.
    let moved = format!("{user}-moved");
    db.execute(
        "UPDATE user_activity SET user_id = $2 WHERE user_id = $1 AND activity_type = 'LATE'",
        &[&user, &moved],
    )
    .await
    .expect("move");

    // LATE committed first, so it is delivered first although its LSN is higher.
    let messages = messages_keyed(&consumer, &user, 7).await;
    let decoded = |m: &OwnedMessage| match envelope::decode(m.payload()) {
        Ok(CdcMessage::Change(event)) => {
            Some(change::source_change(&REFERENCE, &event).expect("decodes").expect("row"))
        }
        _ => None,
    };
    let exact_key = format!("\"{user}\"");
    let partition = messages
        .iter()
        .find(|m| m.key().is_some_and(|k| String::from_utf8_lossy(k).contains(&exact_key)))
        .expect("a message keyed by the user")
        .partition();
    let changes: Vec<_> =
        messages.iter().filter(|m| m.partition() == partition).filter_map(decoded).collect();
    let kind = |c: &persona::features::SourceChange| {
        let row = c.after.as_ref().or(c.before.as_ref()).expect("a row image");
        (row.text("activity_type").unwrap_or("").to_string(), c.after.is_some())
    };
    let kinds: Vec<(String, bool)> = changes.iter().map(kind).collect();
    let expected_prefix =
        [("LATE", true), ("EARLY_1", true), ("EARLY_2", true), ("LATE", true), ("LATE", false)];
    for (index, (name, has_after)) in expected_prefix.iter().enumerate() {
        assert_eq!(kinds.get(index), Some(&(name.to_string(), *has_after)), "{kinds:?}");
    }
    let lsn = |i: usize| changes[i].position.expect("position").1;
    assert!(lsn(0) > lsn(1), "interleaving: the later-committed change has the lower LSN");
    for pair in changes.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "{:?} then {:?}",
            pair[0].position,
            pair[1].position
        );
    }
    let pk_update = &changes[3];
    assert_ne!(pk_update.before.as_ref().map(|r| &r.key), pk_update.after.as_ref().map(|r| &r.key));

    let create = messages
        .iter()
        .filter_map(decoded)
        .find(|c| c.after.as_ref().and_then(|r| r.text("user_id")) == Some(moved.as_str()))
        .expect("the create under the new key");
    let delete = &changes[4];
    let (delete_position, create_position) =
        (delete.position.expect("p"), create.position.expect("p"));
    assert_eq!(delete_position.1, create_position.1, "one LSN for the delete and the create");
    assert!(delete_position < create_position, "the delete ranks first");
}
