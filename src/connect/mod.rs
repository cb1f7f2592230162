//! Connector operations: the Debezium connector lives as JSON files in `connect/`
//! (`{"name": …, "config": {…}}`), with credentials as `${env:NAME}` placeholders that are
//! resolved here, at apply time, so nothing secret is committed.
//!
//! - [`validate`]: the file offline, against Postgres (publication, replica identity, slot) and
//!   against the plugin's own validation in Connect; each problem comes with its fix.
//! - [`plan`]: what applying would change in the deployed config, secrets masked.
//! - [`commands`]: `persona connector validate|plan|apply|status|restart|pause|resume|delete`.
//!   Apply is idempotent (nothing is sent when the deployed config already matches) and waits
//!   until the connector and its tasks run.

mod client;
pub mod commands;
mod plan;
pub mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use client::{ConnectClient, ConnectorStatus, TaskStatus};
pub use plan::{Change, plan};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a connector file ({{\"name\", \"config\"}}): {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path}: environment variable(s) not set: {}; nothing was applied", names.join(", "))]
    MissingEnv { path: PathBuf, names: Vec<String> },
    #[error("{path}: malformed placeholder in {key:?} (expected ${{env:NAME}})")]
    BadPlaceholder { path: PathBuf, key: String },
    #[error("kafka connect at {url} is unreachable: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("kafka connect rejected {name} (HTTP {status}):\n{body}")]
    Rejected { name: String, status: u16, body: String },
    #[error("connector {name} is not running after {waited:?}: {detail}")]
    NotRunning { name: String, waited: Duration, detail: String },
    #[error("kafka connect answered {what} with something unexpected: {detail}")]
    Unexpected { what: String, detail: String },
}

/// A connector file as committed: placeholders unresolved.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorFile {
    pub name: String,
    pub config: BTreeMap<String, String>,
}

/// The `.json` files of a directory (sorted), or the file itself.
pub fn connector_paths(path: &Path) -> Result<Vec<PathBuf>, ConnectError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let read = |source| ConnectError::Read { path: path.to_path_buf(), source };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    Ok(paths)
}

pub fn load(path: &Path) -> Result<ConnectorFile, ConnectError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConnectError::Read { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text)
        .map_err(|source| ConnectError::Parse { path: path.to_path_buf(), source })
}

/// Replaces every `${env:NAME}` with the variable's value, looked up with `lookup`. All
/// missing names are reported together.
pub fn resolve(
    path: &Path,
    file: &ConnectorFile,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, ConnectError> {
    let mut missing = Vec::new();
    let mut resolved = BTreeMap::new();
    for (key, value) in &file.config {
        let mut out = String::with_capacity(value.len());
        let mut rest = value.as_str();
        while let Some(start) = rest.find("${env:") {
            out.push_str(&rest[..start]);
            let after = &rest[start + "${env:".len()..];
            let end = after.find('}').ok_or_else(|| ConnectError::BadPlaceholder {
                path: path.to_path_buf(),
                key: key.clone(),
            })?;
            let name = &after[..end];
            if name.is_empty() {
                return Err(ConnectError::BadPlaceholder {
                    path: path.to_path_buf(),
                    key: key.clone(),
                });
            }
            match lookup(name) {
                Some(found) => out.push_str(&found),
                None => missing.push(name.to_string()),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        resolved.insert(key.clone(), out);
    }
    if !missing.is_empty() {
        missing.sort();
        missing.dedup();
        return Err(ConnectError::MissingEnv { path: path.to_path_buf(), names: missing });
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(pairs: &[(&str, &str)]) -> ConnectorFile {
        ConnectorFile {
            name: "c".into(),
            config: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn placeholders_are_resolved() {
        let f =
            file(&[("database.password", "${env:PW}"), ("url", "jdbc:${env:HOST}:${env:PORT}/x")]);
        let env = |name: &str| match name {
            "PW" => Some("s3cret".to_string()),
            "HOST" => Some("db".to_string()),
            "PORT" => Some("5432".to_string()),
            _ => None,
        };
        let resolved = resolve(Path::new("c.json"), &f, env).expect("resolves");
        assert_eq!(resolved["database.password"], "s3cret");
        assert_eq!(resolved["url"], "jdbc:db:5432/x");
    }

    #[test]
    fn every_missing_variable_is_named() {
        let f = file(&[("a", "${env:ONE}"), ("b", "${env:TWO}"), ("c", "plain")]);
        let error = resolve(Path::new("c.json"), &f, |_| None).expect_err("missing");
        let message = error.to_string();
        assert!(message.contains("ONE") && message.contains("TWO"), "{message}");
        assert!(message.contains("nothing was applied"), "{message}");
    }

    #[test]
    fn unterminated_placeholder_is_an_error() {
        let f = file(&[("a", "${env:ONE")]);
        assert!(matches!(
            resolve(Path::new("c.json"), &f, |_| Some("x".into())),
            Err(ConnectError::BadPlaceholder { .. })
        ));
    }

    #[test]
    fn committed_connector_files_parse_and_hold_no_literal_secret() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("connect");
        let paths = connector_paths(&dir).expect("lists");
        assert!(!paths.is_empty());
        for path in paths {
            let f = load(&path).expect("parses");
            assert_eq!(f.config["database.password"], "${env:PERSONA_PG_PASSWORD}", "{path:?}");
            assert_eq!(f.config["decimal.handling.mode"], "string");
            assert_eq!(f.config["value.converter.schemas.enable"], "false");
        }
    }
}
