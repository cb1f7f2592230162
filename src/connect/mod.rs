//! Connector operations: the Debezium connector lives as JSON files in `connect/`
//! (`{"name": …, "config": {…}}`), with credentials as `${env:NAME}` placeholders. They stay
//! placeholders all the way: the Kafka Connect worker resolves them from its own environment
//! (Kafka's `EnvVarConfigProvider`) when it starts the connector, so no secret is committed,
//! written to Connect's config topic or shown by its REST API.
//!
//! - [`validate`]: the file offline, against Postgres (publication, replica identity, slot),
//!   against the worker (placeholders it cannot resolve) and the plugin's own validation in
//!   Connect; each problem comes with its fix.
//! - [`plan`]: what applying would change in the deployed config, secrets masked.
//! - [`commands`]: `persona connector validate|plan|apply|status|restart|pause|resume|delete`.
//!   Apply is idempotent (nothing is sent when the deployed config already matches) and waits
//!   until the connector and its tasks run.

mod client;
pub mod commands;
mod plan;
pub mod setup;
pub mod sources;
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
    #[error("{path}: environment variable(s) not set here: {}", names.join(", "))]
    MissingEnv { path: PathBuf, names: Vec<String> },
    #[error("{path}: malformed placeholder in {key:?} (expected ${{env:NAME}})")]
    BadPlaceholder { path: PathBuf, key: String },
    #[error(
        "{path}: the Kafka Connect worker cannot resolve {}: set the variable(s) in the worker's environment, with config.providers=env and an allowlist.pattern that admits them; nothing was applied",
        names.iter().map(|n| format!("${{env:{n}}}")).collect::<Vec<_>>().join(", ")
    )]
    Unresolvable { path: PathBuf, names: Vec<String> },
    #[error("kafka connect at {url} is unreachable: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("kafka connect rejected {name} (HTTP {status}):\n{body}")]
    Rejected { name: String, status: u16, body: String },
    #[error("kafka connect finds {name}'s config invalid; nothing was applied:\n{problems}")]
    Invalid { name: String, problems: String },
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

/// A piece of a config value: literal text, or the name of a `${env:NAME}` placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment<'a> {
    Text(&'a str),
    Variable(&'a str),
}

/// Splits `value` into text and placeholders; `None` for an unterminated or empty placeholder.
fn segments(value: &str) -> Option<Vec<Segment<'_>>> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("${env:") {
        out.push(Segment::Text(&rest[..start]));
        let after = &rest[start + "${env:".len()..];
        let end = after.find('}')?;
        if end == 0 {
            return None;
        }
        out.push(Segment::Variable(&after[..end]));
        rest = &after[end + 1..];
    }
    out.push(Segment::Text(rest));
    Some(out)
}

/// Each key of the file with its value split into segments; a malformed placeholder is an error.
fn parsed<'a>(
    path: &Path,
    file: &'a ConnectorFile,
) -> Result<Vec<(&'a String, Vec<Segment<'a>>)>, ConnectError> {
    file.config
        .iter()
        .map(|(key, value)| {
            segments(value).map(|parts| (key, parts)).ok_or_else(|| ConnectError::BadPlaceholder {
                path: path.to_path_buf(),
                key: key.clone(),
            })
        })
        .collect()
}

/// A `${env:NAME}` placeholder of a connector file: the key holding it and the variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub key: String,
    pub variable: String,
}

/// Every placeholder of the file, in key order; a malformed one is an error.
pub fn placeholders(path: &Path, file: &ConnectorFile) -> Result<Vec<Placeholder>, ConnectError> {
    let mut found = Vec::new();
    for (key, parts) in parsed(path, file)? {
        for part in parts {
            if let Segment::Variable(variable) = part {
                found.push(Placeholder { key: key.clone(), variable: variable.to_string() });
            }
        }
    }
    Ok(found)
}

/// A key whose value must never be shown: it names a credential.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "credential"].iter().any(|word| key.contains(word))
}

/// Replaces every `${env:NAME}` with the variable's value, looked up with `lookup`, as the
/// worker would. persona resolves only to check the database with the connector's own
/// credentials; what it sends to Connect keeps the placeholders. All missing names are
/// reported together.
pub fn resolve(
    path: &Path,
    file: &ConnectorFile,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, ConnectError> {
    let mut missing = Vec::new();
    let mut resolved = BTreeMap::new();
    for (key, parts) in parsed(path, file)? {
        let mut out = String::new();
        for part in parts {
            match part {
                Segment::Text(text) => out.push_str(text),
                Segment::Variable(name) => match lookup(name) {
                    Some(found) => out.push_str(&found),
                    None => missing.push(name.to_string()),
                },
            }
        }
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
    }

    #[test]
    fn placeholders_are_listed_by_key() {
        let f =
            file(&[("url", "jdbc:${env:HOST}:${env:PORT}/x"), ("database.password", "${env:PW}")]);
        let found = placeholders(Path::new("c.json"), &f).expect("well formed");
        let pairs: Vec<(&str, &str)> =
            found.iter().map(|p| (p.key.as_str(), p.variable.as_str())).collect();
        assert_eq!(pairs, vec![("database.password", "PW"), ("url", "HOST"), ("url", "PORT")]);
        let empty = file(&[("a", "${env:}")]);
        assert!(matches!(
            placeholders(Path::new("c.json"), &empty),
            Err(ConnectError::BadPlaceholder { .. })
        ));
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
