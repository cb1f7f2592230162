//! What applying a connector file would change in the deployed config.

use std::collections::BTreeMap;
use std::fmt;

const MASK: &str = "****";

/// One key that differs between the file (resolved) and what Connect runs.
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

/// A value that must not be shown: it came from a `${env:…}` placeholder, or its key names a
/// credential.
fn is_secret(key: &str, committed: Option<&String>) -> bool {
    let key = key.to_ascii_lowercase();
    committed.is_some_and(|value| value.contains("${env:"))
        || ["password", "secret", "token", "credential"].iter().any(|word| key.contains(word))
}

/// The changes from `deployed` (`None`: not deployed) to `resolved`, secrets masked. `committed`
/// is the file as written, which says which values came from placeholders.
pub fn plan(
    committed: &BTreeMap<String, String>,
    resolved: &BTreeMap<String, String>,
    deployed: Option<&BTreeMap<String, String>>,
) -> Vec<Change> {
    let empty = BTreeMap::new();
    let deployed = deployed.unwrap_or(&empty);
    let show = |key: &str, value: &str| {
        if is_secret(key, committed.get(key)) { MASK.to_string() } else { value.to_string() }
    };
    let mut changes = Vec::new();
    for (key, value) in resolved {
        match deployed.get(key) {
            None => changes.push(Change::Add { key: key.clone(), value: show(key, value) }),
            Some(current) if current != value => changes.push(Change::Update {
                key: key.clone(),
                from: show(key, current),
                to: show(key, value),
            }),
            Some(_) => {}
        }
    }
    for (key, value) in deployed.iter().filter(|(key, _)| !resolved.contains_key(*key)) {
        changes.push(Change::Remove { key: key.clone(), value: show(key, value) });
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
        let config = map(&[("a", "1"), ("database.password", "s3cret")]);
        assert!(plan(&config, &config, Some(&config)).is_empty());
    }

    #[test]
    fn adds_updates_and_removes_with_secrets_masked() {
        let committed = map(&[("a", "2"), ("database.user", "${env:USER}"), ("pw.password", "x")]);
        let resolved = map(&[("a", "2"), ("database.user", "alice"), ("pw.password", "new")]);
        let deployed =
            map(&[("a", "1"), ("database.user", "bob"), ("old", "z"), ("pw.password", "old")]);
        let changes = plan(&committed, &resolved, Some(&deployed));
        let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "~ a: 1 -> 2",
                "~ database.user: **** -> ****",
                "~ pw.password: **** -> ****",
                "- old = z"
            ]
        );
        assert!(!shown.join("\n").contains("alice") && !shown.join("\n").contains("new"));
    }

    #[test]
    fn everything_is_added_when_not_deployed() {
        let config = map(&[("a", "1"), ("b", "2")]);
        assert_eq!(plan(&config, &config, None).len(), 2);
    }
}
