//! Redis goes away under a running persona: reads keep answering from L1, marked stale; ingest
//! holds its offsets and catches up when Redis returns — nothing is lost.
//!
//! Runs its own Redis (a real `redis-server`, with an append-only file so a restart keeps data)
//! so it can stop it without disturbing the other tests.

mod common;

use std::process::{Child, Command, Stdio};

use common::{DEADLINE, Persona, eventually, insert_activity, legacy_db, unique};
use serde_json::json;

struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnRedis {
    fn start(port: u16, dir: tempfile::TempDir) -> Self {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        Self { port, dir, child: Some(child) }
    }

    fn stop(mut self) -> (u16, tempfile::TempDir) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: redis flushes its append-only file and exits.
            Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
            child.wait().expect("wait redis");
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        (self.port, dir)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port()
}

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

    insert_activity(&db, &user, "CLICK", None, 2).await;
    let body = persona.wait_for_features(&user, &[("click_count_5m", json!(1))]).await;
    assert_eq!(body["freshness"], "live");

    let (port, dir) = redis.stop();
    let stale = eventually("reads marked stale", DEADLINE, || async {
        let body = persona.features(&user).await;
        if body["freshness"] == "stale" { Ok(body) } else { Err(body.to_string()) }
    })
    .await;
    assert_eq!(stale["features"]["click_count_5m"]["value"], json!(1), "{stale}");
    assert_eq!(stale["features"]["click_count_5m"]["status"], "stale", "{stale}");
    let (status, _) = persona.get("/readyz").await;
    assert_eq!(status, 503, "not ready without redis");

    // Written while Redis is down: must not be lost.
    insert_activity(&db, &user, "CLICK", None, 1).await;
    insert_activity(&db, &user, "SEARCH", None, 1).await;

    let _redis = OwnRedis::start(port, dir);
    let body = persona
        .wait_for_features(&user, &[("click_count_5m", json!(2)), ("search_count_5m", json!(1))])
        .await;
    assert_eq!(body["freshness"], "live");
}
