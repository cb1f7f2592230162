//! A legacy shop unlike the reference schema (tests/fixtures/legacy-shop), created by a test under
//! a schema of its own and declared in a definitions file: no Rust is written for it.

use std::path::{Path, PathBuf};

use super::capture::{hex, persona, text};

/// A legacy shop of the test's own: its schema, and its definitions file.
pub struct Shop {
    pub schema: String,
    pub definitions: PathBuf,
    pub dir: tempfile::TempDir,
}

pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy-shop").join(name);
    std::fs::read_to_string(path).expect("fixture")
}

impl Shop {
    pub async fn create(db: &tokio_postgres::Client) -> Self {
        let schema = format!("shop_{}", hex());
        db.batch_execute(&fixture("schema.sql").replace("legacy_shop", &schema))
            .await
            .expect("the shop's migration");
        let dir = tempfile::tempdir().expect("tempdir");
        let definitions = dir.path().join("features.toml");
        std::fs::write(&definitions, fixture("features.toml").replace("legacy_shop", &schema))
            .expect("write definitions");
        Self { schema, definitions, dir }
    }

    pub fn publication(&self) -> String {
        format!("{}_pub", self.schema)
    }

    pub fn env(&self) -> Vec<(String, String)> {
        let path = self.definitions.to_str().expect("utf-8 path").to_string();
        vec![("PERSONA_FEATURES__DEFINITIONS".into(), path)]
    }

    pub fn plan(&self, apply: bool) -> (Option<i32>, String) {
        let publication = self.publication();
        let mut args = vec!["sources", "plan", "--publication", &publication];
        if apply {
            args.push("--apply");
        }
        let output = persona(&args, &self.env());
        (output.status.code(), text(&output))
    }

    pub fn table(&self, table: &str) -> String {
        format!("\"{}\".\"{table}\"", self.schema)
    }

    pub async fn drop(self, db: &tokio_postgres::Client) {
        let sql = format!(
            "DROP PUBLICATION IF EXISTS \"{}\"; DROP SCHEMA \"{}\" CASCADE",
            self.publication(),
            self.schema
        );
        db.batch_execute(&sql).await.expect("clean up");
    }
}
