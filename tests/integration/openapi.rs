//! The API answers as its OpenAPI document says: schemathesis (from PyPI; `scripts/stack`
//! installs it) generates requests from `/openapi.json` against a running persona, and checks
//! that none gets a server error and that every response's status, content type and body
//! conform to the document.

use crate::common;

use std::process::Command;

use common::{Persona, env};

#[tokio::test]
async fn the_api_conforms_to_its_openapi_document() {
    let persona = Persona::start("schemathesis").await;
    let (status, _, docs) = persona.get_text("/docs").await;
    assert_eq!(status, 200);
    assert!(docs.contains("/openapi.json"), "{docs}");

    let url = format!("{}/openapi.json", persona.base_url);
    let schemathesis = env("PERSONA_SCHEMATHESIS");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis)
            .args(["run", &url])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                "--max-examples",
                "60",
                "--seed",
                "1",
            ])
            .env("NO_COLOR", "1")
            .output()
    })
    .await
    .expect("join")
    .expect("run schemathesis");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n(log: {})",
        persona.log.display()
    );
    eprintln!(
        "{}",
        report
            .lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
