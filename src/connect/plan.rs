//! What applying a connector file would change in the deployed config.

use std::collections::BTreeMap;
use std::fmt;

const MASK: &str = "****";

/// One key that differs between the file and what Connect runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Add { key: String, value: String },
    Remove { key: String, value: String },
    Update { key: String, from: String, to: String },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Add { key, value } => write!(f, "+ {key} = {value}"),
            Self::Remove { key, value } => write!(f, "- {key} = {value}"),
            Self::Update { key, from, to } => write!(f, "~ {key}: {from} -> {to}"),
        }
    }
}

/// How a value is shown: a placeholder as written (it holds no secret), a literal under a
/// credential's key masked.
fn shown(key: &str, value: &str) -> String {
    if value.contains("${env:") || !super::is_secret_key(key) {
        value.to_string()
    } else {
        MASK.to_string()
    }
}

/// The changes from `deployed` (`None`: not deployed) to the file's `config`, as sent:
/// placeholders unresolved on both sides, literal credentials masked.
pub fn plan(
    config: &BTreeMap<String, String>,
    deployed: Option<&BTreeMap<String, String>>,
) -> Vec<Change> {
    let empty = BTreeMap::new();
    let deployed = deployed.unwrap_or(&empty);
    let mut changes = Vec::new();
    for (key, value) in config {
        match deployed.get(key) {
            None => changes.push(Change::Add { key: key.clone(), value: shown(key, value) }),
            Some(current) if current != value => changes.push(Change::Update {
                key: key.clone(),
                from: shown(key, current),
                to: shown(key, value),
            }),
            Some(_) => {}
        }
    }
    for (key, value) in deployed.iter().filter(|(key, _)| !config.contains_key(*key)) {
        changes.push(Change::Remove { key: key.clone(), value: shown(key, value) });
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn nothing_to_do_when_deployed_matches() {
        let config = map(&[("a", "1"), ("database.password", "${env:PW}")]);
        assert!(plan(&config, Some(&config)).is_empty());
    }

    #[test]
    fn adds_updates_and_removes_with_literal_secrets_masked() {
        let config = map(&[
            ("a", "2"),
            ("database.password", "${env:PW}"),
            ("database.user", "${env:USER}"),
            ("pw.password", "new"),
        ]);
        // Deployed by an older persona that resolved placeholders before applying.
        let deployed = map(&[
            ("a", "1"),
            ("database.password", "s3cret"),
            ("database.user", "bob"),
            ("old", "z"),
            ("pw.password", "old"),
        ]);
        let changes = plan(&config, Some(&deployed));
        let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "~ a: 1 -> 2",
                "~ database.password: **** -> ${env:PW}",
                "~ database.user: bob -> ${env:USER}",
                "~ pw.password: **** -> ****",
                "- old = z"
            ]
        );
        let all = shown.join("\n");
        assert!(!all.contains("s3cret") && !all.contains("-> new"), "{all}");
    }

    #[test]
    fn everything_is_added_when_not_deployed() {
        let config = map(&[("a", "1"), ("b", "2")]);
        assert_eq!(plan(&config, None).len(), 2);
    }
}
