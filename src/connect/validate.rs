//! Checking a connector file before it silently corrupts features: offline (what persona needs
//! from the connector's settings), against Postgres (publication, replica identity, slot) and
//! against the plugin's own validation in Connect. Every problem names its fix.

use std::collections::BTreeMap;
use std::fmt;

use super::{ConnectClient, Placeholder};

mod postgres;
pub use postgres::{DatabaseReport, postgres};

/// Keys without which the connector cannot run or persona cannot read what it produces.
const REQUIRED: [&str; 11] = [
    "connector.class",
    "plugin.name",
    "database.hostname",
    "database.port",
    "database.user",
    "database.password",
    "database.dbname",
    "topic.prefix",
    "table.include.list",
    "publication.name",
    "slot.name",
];
const JSON_CONVERTER: &str = "org.apache.kafka.connect.json.JsonConverter";

/// Where a problem was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    File,
    Postgres,
    Connect,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::File => "file",
            Self::Postgres => "postgres",
            Self::Connect => "connect",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub stage: Stage,
    /// The config key or database object at fault.
    pub subject: String,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}\n    fix: {}", self.stage, self.subject, self.message, self.fix)
    }
}

fn problem(stage: Stage, subject: &str, message: String, fix: String) -> Problem {
    Problem { stage, subject: subject.to_string(), message, fix }
}

/// A table of `table.include.list`, `schema.table`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

fn table_name(text: &str) -> Option<TableName> {
    let (schema, table) = text.trim().split_once('.')?;
    (!schema.is_empty() && !table.is_empty() && !table.contains('.'))
        .then(|| TableName { schema: schema.to_string(), table: table.to_string() })
}

/// The captured tables (`table.include.list`; regular expressions are not supported here).
pub fn captured_tables(config: &BTreeMap<String, String>) -> Vec<TableName> {
    config
        .get("table.include.list")
        .map(|list| list.split(',').filter_map(table_name).collect())
        .unwrap_or_default()
}

/// `message.key.columns`: `schema.table:col[,col];…` → key columns per table, or the entry that
/// is malformed.
pub fn key_columns(
    config: &BTreeMap<String, String>,
) -> Result<BTreeMap<TableName, Vec<String>>, String> {
    let mut keys = BTreeMap::new();
    let Some(text) = config.get("message.key.columns") else { return Ok(keys) };
    for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (table, columns) = entry.split_once(':').ok_or_else(|| entry.to_string())?;
        let table = table_name(table).ok_or_else(|| entry.to_string())?;
        let columns: Vec<String> = columns.split(',').map(|c| c.trim().to_string()).collect();
        if columns.iter().any(String::is_empty) {
            return Err(entry.to_string());
        }
        keys.insert(table, columns);
    }
    Ok(keys)
}

/// What the file says, on its own. `committed` is the file before placeholders are resolved.
pub fn offline(committed: &BTreeMap<String, String>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let file =
        |subject: &str, message: String, fix: String| problem(Stage::File, subject, message, fix);
    for key in
        REQUIRED.iter().filter(|key| committed.get(**key).is_none_or(|v| v.trim().is_empty()))
    {
        problems.push(file(key, "is missing".into(), format!("set \"{key}\" in the file")));
    }
    if let Some(password) = committed.get("database.password")
        && !password.trim().is_empty()
        && !password.contains("${env:")
    {
        problems.push(file(
            "database.password",
            "holds a literal secret, which would be committed".into(),
            "use \"${env:PERSONA_PG_PASSWORD}\" and set the variable where apply runs".into(),
        ));
    }
    if let Some(plugin) = committed.get("plugin.name").filter(|p| p.as_str() != "pgoutput") {
        problems.push(file(
            "plugin.name",
            format!("is {plugin:?}; persona's migrations set up a pgoutput publication"),
            "set \"plugin.name\": \"pgoutput\"".into(),
        ));
    }
    for side in ["key", "value"] {
        let converter = format!("{side}.converter");
        if committed.get(&converter).map(String::as_str) != Some(JSON_CONVERTER) {
            problems.push(file(
                &converter,
                format!(
                    "is {:?}; persona decodes JSON change events",
                    committed
                        .get(&converter)
                        .map_or("unset (the worker's default)", |v| v.as_str())
                ),
                format!("set \"{converter}\": \"{JSON_CONVERTER}\""),
            ));
        }
        let schemas = format!("{side}.converter.schemas.enable");
        if committed.get(&schemas).map(String::as_str) != Some("false") {
            problems.push(file(
                &schemas,
                "is not \"false\": events would be wrapped in a schema envelope persona does not read"
                    .into(),
                format!("set \"{schemas}\": \"false\""),
            ));
        }
    }
    let decimal =
        committed.get("decimal.handling.mode").map_or("precise (default)", |v| v.as_str());
    if decimal != "string" {
        problems.push(file(
            "decimal.handling.mode",
            format!("is {decimal}: prices would arrive as base64 bytes and be misread"),
            "set \"decimal.handling.mode\": \"string\"".into(),
        ));
    }
    if let Some(mode) = committed.get("time.precision.mode")
        && !matches!(mode.as_str(), "adaptive" | "adaptive_time_microseconds")
    {
        problems.push(file(
            "time.precision.mode",
            format!("is {mode:?}; persona reads TIMESTAMP columns as microseconds"),
            "remove it (the default, adaptive, is what persona reads)".into(),
        ));
    }
    // Debezium skips truncates unless told otherwise ("t" is its default).
    let skipped = committed.get("skipped.operations").map_or("t (default)", |v| v.as_str());
    if skipped.split(',').any(|op| op.trim() == "t" || op.trim() == "t (default)") {
        problems.push(file(
            "skipped.operations",
            format!(
                "is {skipped}: a TRUNCATE of a captured table never reaches persona, so every \
                 feature the table fed keeps counting the rows it removed (until `persona rebuild`)"
            ),
            "set \"skipped.operations\": \"none\"".into(),
        ));
    }
    let tables = captured_tables(committed);
    if let Some(list) = committed.get("table.include.list")
        && tables.len() != list.split(',').filter(|t| !t.trim().is_empty()).count()
    {
        problems.push(file(
            "table.include.list",
            format!("{list:?} has entries that are not schema.table"),
            "list tables as schema.table, comma-separated".into(),
        ));
    }
    match key_columns(committed) {
        Err(entry) => problems.push(file(
            "message.key.columns",
            format!("entry {entry:?} is malformed"),
            "write schema.table:column[,column] entries separated by ';'".into(),
        )),
        Ok(keys) => {
            for table in keys.keys().filter(|t| !tables.contains(t)) {
                problems.push(file(
                    "message.key.columns",
                    format!("names {table}, which table.include.list does not capture"),
                    format!("add {table} to table.include.list or drop its key entry"),
                ));
            }
        }
    }
    problems
}

/// What the Kafka Connect worker makes of a connector file: the placeholders it cannot resolve,
/// and the plugin's own validation of the config as the worker resolves it.
#[derive(Debug, Default)]
pub struct WorkerReport {
    /// Variables the worker leaves unresolved (sorted).
    pub unresolved: Vec<String>,
    pub problems: Vec<Problem>,
}

/// Asks the worker to validate the file's config, placeholders unresolved, as apply sends it.
///
/// Whether the worker resolves a placeholder shows in the values Connect echoes: the probe
/// puts the placeholders into `name`, one of Connect's own keys, and reads back which stayed
/// literal. Only variables of keys that hold no credential are probed that way, so no secret
/// appears in the answer; a credential's placeholder the worker cannot resolve shows as the
/// login failing, and the problem then names its variable.
pub async fn connect(
    client: &ConnectClient,
    name: &str,
    committed: &BTreeMap<String, String>,
    placeholders: &[Placeholder],
) -> Result<WorkerReport, super::ConnectError> {
    // A variable that also feeds a credential is not probed: its value would be echoed.
    let secret = |variable: &str| {
        placeholders.iter().any(|p| p.variable == variable && super::is_secret_key(&p.key))
    };
    let mut probed: Vec<&str> = placeholders
        .iter()
        .map(|p| p.variable.as_str())
        .filter(|variable| !secret(variable))
        .collect();
    probed.sort_unstable();
    probed.dedup();
    let mut config = committed.clone();
    let probe = if probed.is_empty() {
        name.to_string()
    } else {
        probed.iter().map(|v| format!("${{env:{v}}}")).collect::<Vec<_>>().join(" ")
    };
    config.insert("name".into(), probe);
    let validation = client.validate(&config).await?;
    let echoed = validation.values.get("name").cloned().unwrap_or_default();
    let unresolved: Vec<String> = probed
        .iter()
        .filter(|v| echoed.contains(&format!("${{env:{v}}}")))
        .map(|v| v.to_string())
        .collect();
    let mut problems: Vec<Problem> = unresolved
        .iter()
        .map(|variable| {
            let keys: Vec<&str> = placeholders
                .iter()
                .filter(|p| &p.variable == variable)
                .map(|p| p.key.as_str())
                .collect();
            problem(
                Stage::Connect,
                &format!("${{env:{variable}}}"),
                format!("the Kafka Connect worker cannot resolve it (used by {})", keys.join(", ")),
                unresolved_fix(variable),
            )
        })
        .collect();
    for error in validation.errors.iter().filter(|e| e.key != "name") {
        let fix = credential_hint(placeholders, &error.message)
            .unwrap_or_else(|| format!("correct \"{}\" in the file", error.key));
        problems.push(problem(Stage::Connect, &error.key, error.message.clone(), fix));
    }
    Ok(WorkerReport { unresolved, problems })
}

fn unresolved_fix(variable: &str) -> String {
    format!(
        "set {variable} in the Connect worker's environment; the worker needs \
         config.providers=env, config.providers.env.class=\
         org.apache.kafka.common.config.provider.EnvVarConfigProvider and a \
         config.providers.env.param.allowlist.pattern that admits {variable}"
    )
}

/// When the database refused the connector's login and its credentials are placeholders, what
/// to check: the worker's value of each variable (it resolves them, not persona).
pub fn credential_hint(placeholders: &[Placeholder], message: &str) -> Option<String> {
    let refused = ["password authentication failed", "no password was provided"]
        .iter()
        .any(|needle| message.contains(needle));
    let credentials: Vec<String> = placeholders
        .iter()
        .filter(|p| super::is_secret_key(&p.key) || p.key == "database.user")
        .map(|p| format!("{} = ${{env:{}}}", p.key, p.variable))
        .collect();
    (refused && !credentials.is_empty()).then(|| {
        format!(
            "the worker resolves {}: check that its environment has each variable, that \
             config.providers.env.param.allowlist.pattern admits it, and that the value is right",
            credentials.join(", ")
        )
    })
}

/// A libpq-style connection to the connector's own database, with the connector's own user.
pub fn connection_string(resolved: &BTreeMap<String, String>) -> String {
    let get = |key: &str| resolved.get(key).map(String::as_str).unwrap_or_default();
    let quote = |value: &str| format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"));
    format!(
        "host={} port={} user={} password={} dbname={} connect_timeout=10",
        quote(get("database.hostname")),
        quote(get("database.port")),
        quote(get("database.user")),
        quote(get("database.password")),
        quote(get("database.dbname")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn committed() -> BTreeMap<String, String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("connect/persona-postgres.json");
        super::super::load(&path).expect("committed connector file").config
    }

    fn subjects(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.subject.as_str()).collect()
    }

    #[test]
    fn the_committed_file_passes() {
        assert_eq!(offline(&committed()), Vec::new());
    }

    #[test]
    fn decimals_as_bytes_and_schema_envelopes_are_caught() {
        let mut config = committed();
        config.insert("decimal.handling.mode".into(), "precise".into());
        config.insert("value.converter.schemas.enable".into(), "true".into());
        let problems = offline(&config);
        assert_eq!(
            subjects(&problems),
            vec!["value.converter.schemas.enable", "decimal.handling.mode"]
        );
        assert!(problems[1].fix.contains("\"string\""), "{}", problems[1]);
    }

    #[test]
    fn missing_keys_literal_secrets_and_bad_key_columns_are_caught() {
        let mut config = committed();
        config.remove("slot.name");
        config.insert("database.password".into(), "hunter2".into());
        config.insert("message.key.columns".into(), "public.user_activity;public.nope:id".into());
        let problems = offline(&config);
        assert_eq!(
            subjects(&problems),
            vec!["slot.name", "database.password", "message.key.columns"]
        );
        assert!(!problems.iter().any(|p| p.to_string().contains("hunter2")));
    }

    #[test]
    fn a_connector_skipping_truncates_is_caught() {
        let mut config = committed();
        config.remove("skipped.operations");
        let problems = offline(&config);
        assert_eq!(subjects(&problems), vec!["skipped.operations"]);
        assert!(problems[0].message.contains("default"), "{}", problems[0]);
        config.insert("skipped.operations".into(), "u,t".into());
        assert_eq!(subjects(&offline(&config)), vec!["skipped.operations"]);
        config.insert("skipped.operations".into(), "none".into());
        assert_eq!(offline(&config), Vec::new());
    }

    #[test]
    fn key_columns_must_name_captured_tables() {
        let mut config = committed();
        config.insert("message.key.columns".into(), "public.elsewhere:user_id".into());
        let problems = offline(&config);
        assert_eq!(subjects(&problems), vec!["message.key.columns"]);
        assert!(problems[0].message.contains("public.elsewhere"));
    }

    #[test]
    fn key_columns_parse() {
        let keys = key_columns(&committed()).expect("well formed");
        let activity = TableName { schema: "public".into(), table: "user_activity".into() };
        assert_eq!(keys[&activity], vec!["user_id".to_string()]);
        assert_eq!(keys.len(), 4);
    }
}
