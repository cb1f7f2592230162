//! What `/metrics` serves passes `promtool check metrics`: every family has a HELP text and is
//! named as Prometheus expects, once ingest, reads and pages have all recorded something.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{CATCH_UP, Persona, env, eventually, insert_activity, legacy_db};
use serde_json::json;

#[tokio::test]
async fn the_exposition_passes_promtool() {
    let persona = Persona::start("promtool").await;
    let db = legacy_db().await;
    let user = format!("promtool-{}", uuid::Uuid::new_v4().simple());
    insert_activity(&db, &user, "CLICK", None, 2).await;
    persona.wait_for_features_within(&user, &[("clicks_5m", json!(1))], CATCH_UP).await;
    persona.get(&format!("/api/v1/users/{user}/recommendations")).await;
    persona.get_text(&format!("/u/{user}")).await;
    let exposition = eventually("ingest, read and page metrics recorded", CATCH_UP, || async {
        let text = persona.metrics().await;
        let recorded = [
            "persona_events_consumed_total",
            "persona_http_request_duration_seconds",
            "persona_ingest_latency_seconds",
            "persona_ingest_queue_wait_seconds",
            "persona_ingest_batch_duration_seconds",
        ]
        .iter()
        .all(|name| text.contains(&format!("# TYPE {name} ")));
        if recorded { Ok(text) } else { Err(text.lines().take(5).collect::<Vec<_>>().join("\n")) }
    })
    .await;

    let mut promtool = Command::new(env("PERSONA_PROMTOOL"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    promtool.stdin.take().expect("stdin").write_all(exposition.as_bytes()).expect("write");
    let output = promtool.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let families = exposition.lines().filter(|line| line.starts_with("# TYPE ")).count();
    assert!(families >= 15, "only {families} metric families: {exposition}");
}
