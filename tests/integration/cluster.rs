//! persona past one machine: three instances in one consumer group, on three Kafka brokers and a
//! Redis Cluster of three primaries with one replica each (`scripts/stack up --cluster`). The
//! SQL oracle (tests/integration/common/oracle.rs) holds on every instance while, in turn and with
//! the application writing, a broker, the Redis primary holding the marks and a persona instance
//! are killed with -9 and started again.
//!
//! Runs in scripts/test's cluster stage, against a stack of its own (`.stack-cluster`).

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::oracle::{CATALOG, assert_no_mismatch, seed_products, workload};
use common::{
    DEADLINE, Persona, env, eventually, insert_activity, legacy_db, next_live_event, unique,
};

/// `scripts/stack` with arguments, against the stack the environment names.
fn stack(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack");
    let status = Command::new("bash").arg(script).args(args).status().expect("run scripts/stack");
    assert!(status.success(), "scripts/stack {args:?} failed");
}

/// The stack's Redis Cluster nodes, in the order `scripts/stack redis-kill` numbers them.
fn redis_ports() -> Vec<u16> {
    let url = env("PERSONA_REDIS_CLUSTER_URL");
    url.split(['/', '?', '&', '='])
        .filter_map(|part| part.strip_prefix("127.0.0.1:"))
        .map(|port| port.parse().expect("port"))
        .collect()
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The stack number (1-based) of the live primary serving `key`: the one that answers for it
/// rather than redirecting (`MOVED`); `None` while no live primary does (a failover under way).
fn primary_of(key: &str) -> Option<usize> {
    let ports = redis_ports();
    (0..ports.len())
        .find(|i| {
            redis_cli(ports[*i], &["role"]).starts_with("master")
                && !redis_cli(ports[*i], &["type", key]).starts_with("MOVED")
        })
        .map(|i| i + 1)
}

/// What a storefront page or live block lists under "Viewed recently".
fn viewed_recently(html: &str) -> &str {
    html.split("Viewed recently</dt><dd>")
        .nth(1)
        .and_then(|rest| rest.split("</dd>").next())
        .unwrap_or("")
}

/// Every slot served, as the live nodes see it.
fn cluster_healthy() -> Result<(), String> {
    let live: Vec<u16> =
        redis_ports().into_iter().filter(|port| redis_cli(*port, &["ping"]) == "PONG").collect();
    let states: Vec<String> = live
        .iter()
        .map(|port| redis_cli(*port, &["cluster", "info"]))
        .map(|info| {
            info.lines().find(|line| line.starts_with("cluster_state")).unwrap_or("").to_string()
        })
        .collect();
    if !live.is_empty() && states.iter().all(|state| state.trim() == "cluster_state:ok") {
        Ok(())
    } else {
        Err(format!("{states:?} on {live:?}"))
    }
}

#[tokio::test]
async fn three_instances_stay_exact_through_a_broker_a_redis_primary_and_an_instance_killed() {
    let group = unique("cluster");
    let prefix = unique("c");
    let settings = vec![
        ("PERSONA_REDIS__URL".to_string(), env("PERSONA_REDIS_CLUSTER_URL")),
        ("PERSONA_REDIS__MIN_REPLICA_ACKS".to_string(), "1".to_string()),
        // L1 keeps what it read for longer than any wait below: an instance that did not ingest
        // a change sees it through the invalidation it was sent, or not at all.
        ("PERSONA_CACHE__TTL".to_string(), "10m".to_string()),
    ];
    let mut instances = Vec::new();
    for name in ["cluster-a", "cluster-b", "cluster-c"] {
        instances.push(Persona::start_with(name, &group, settings.clone()).await);
    }
    let db = legacy_db().await;
    seed_products(&db, &prefix, 0, CATALOG - 1).await;
    workload(&prefix, 2, 1_000).await;
    for persona in &instances {
        assert_no_mismatch(persona, &db, &prefix, true, "three instances, nothing failed").await;
    }

    // A broker, killed with -9 mid-workload: its partitions' leadership moves to the others.
    let writer = tokio::spawn({
        let prefix = prefix.clone();
        async move { workload(&prefix, 2, 1_000).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::spawn_blocking(|| stack(&["broker-kill", "2"])).await.expect("join");
    writer.await.expect("workload");
    for persona in &instances {
        assert_no_mismatch(persona, &db, &prefix, true, "after kill -9 of a broker").await;
    }
    tokio::task::spawn_blocking(|| stack(&["broker-start", "2"])).await.expect("join");

    // The Redis primary holding the owners, the marks and the invalidation channel, killed with
    // -9 mid-workload: its replica takes over; writes wait for a replica until it is back.
    let marks = format!("{{{group}}}:owners");
    let victim = primary_of(&marks).expect("a primary serves the marks");
    let writer = tokio::spawn({
        let prefix = prefix.clone();
        async move { workload(&prefix, 2, 1_000).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let id = victim.to_string();
    tokio::task::spawn_blocking(move || stack(&["redis-kill", &id])).await.expect("join");
    eventually("a replica promoted", DEADLINE, || async {
        match primary_of(&marks) {
            Some(primary) if primary != victim => cluster_healthy(),
            other => Err(format!("the marks' primary is {other:?}")),
        }
    })
    .await;
    let id = victim.to_string();
    tokio::task::spawn_blocking(move || stack(&["redis-start", &id])).await.expect("join");
    writer.await.expect("workload");
    // A restarted primary first believes it still owns its slots; gossip turns it into a replica.
    eventually("the old primary rejoined as a replica", DEADLINE, || async {
        let role = redis_cli(redis_ports()[victim - 1], &["role"]);
        if role.starts_with("slave") { Ok(()) } else { Err(role) }
    })
    .await;
    for persona in &instances {
        assert_no_mismatch(persona, &db, &prefix, true, "after kill -9 of a Redis primary").await;
    }

    // A persona instance, killed with -9 mid-workload: the others take its partitions at once
    // (a rebalance), and it takes some back when restarted.
    let writer = tokio::spawn({
        let prefix = prefix.clone();
        async move { workload(&prefix, 2, 1_000).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    instances[1].kill();
    instances[1].restart().await;
    writer.await.expect("workload");
    for persona in &instances {
        assert_no_mismatch(persona, &db, &prefix, true, "after kill -9 of an instance").await;
    }

    // A live storefront open on every instance follows its user, whichever instance ingested
    // the change: the announcement reaches the others over the cluster's sharded channel.
    let user = format!("{prefix}-live");
    insert_activity(&db, &user, "VIEW_PRODUCT", Some(&format!("{prefix}-p17")), 0).await;
    let mut streams = Vec::new();
    for persona in &instances {
        let version = eventually("the storefront lists the first view", DEADLINE, || async {
            let (_, _, html) = persona.get_text(&format!("/u/{user}")).await;
            let version = html.split("data-version=\"").nth(1).and_then(|r| r.split('"').next());
            match version {
                Some(version) if viewed_recently(&html).contains("Product 17") => {
                    Ok(version.to_string())
                }
                _ => Err(viewed_recently(&html).to_string()),
            }
        })
        .await;
        let stream = reqwest::Client::new()
            .get(format!("{}/u/{user}/live?since={version}", persona.base_url))
            .send()
            .await
            .expect("open the live stream");
        assert_eq!(stream.status(), 200);
        streams.push((stream, String::new()));
    }
    insert_activity(&db, &user, "VIEW_PRODUCT", Some(&format!("{prefix}-p29")), 0).await;
    for (instance, (stream, buffer)) in streams.iter_mut().enumerate() {
        tokio::time::timeout(DEADLINE, async {
            while !viewed_recently(&next_live_event(stream, buffer).await).contains("Product 29") {}
        })
        .await
        .unwrap_or_else(|_| panic!("instance {instance}'s live stream never showed the new view"));
    }
}
