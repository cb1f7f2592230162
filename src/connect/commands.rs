//! `persona connector …`: each command works on one connector file or every file of a
//! directory, prints for people, and says through its exit status whether all is well.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::client::readable_trace;
use super::setup;
use super::validate::{self, Problem, Stage};
use super::{ConnectClient, ConnectError, ConnectorFile, Placeholder};
use crate::features::FeatureSet;

/// How long a FAILED state read after a restart, resume or update may be the one from before.
const STALE_STATUS_GRACE: Duration = Duration::from_secs(10);

/// One connector file, as committed (placeholders unresolved).
pub struct Loaded {
    pub path: PathBuf,
    pub file: ConnectorFile,
}

impl Loaded {
    /// The config with `${env:NAME}` placeholders replaced from persona's own environment, for
    /// the database checks only.
    pub fn resolve(&self) -> Result<BTreeMap<String, String>, ConnectError> {
        super::resolve(&self.path, &self.file, |name| std::env::var(name).ok())
    }

    pub fn placeholders(&self) -> Result<Vec<Placeholder>, ConnectError> {
        super::placeholders(&self.path, &self.file)
    }
}

/// Loads every connector file of `path`; an unreadable file is an error for all.
pub fn load_all(path: &Path) -> Result<Vec<Loaded>, ConnectError> {
    let paths = super::connector_paths(path)?;
    if paths.is_empty() {
        return Err(ConnectError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no connector JSON file"),
        });
    }
    paths
        .into_iter()
        .map(|path| {
            let file = super::load(&path)?;
            Ok(Loaded { path, file })
        })
        .collect()
}

fn code(ok: bool) -> ExitCode {
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Offline, Postgres and Connect checks, and the declared sources of `set` against the files and
/// the database; exit status 1 when any problem is found.
pub async fn validate(client: &ConnectClient, loaded: &[Loaded], set: &FeatureSet) -> ExitCode {
    let mut all_ok = true;
    let captures = setup::captures(set);
    let mut covered = Vec::new();
    for item in loaded {
        let name = &item.file.name;
        let mut problems: Vec<Problem> = validate::offline(&item.file.config);
        for (subject, message, fix) in
            setup::connector_mismatches(&item.file.config, &captures, &mut covered)
        {
            problems.push(Problem { stage: Stage::File, subject, message, fix });
        }
        let mut skipped: Vec<String> = Vec::new();
        let mut notes: Vec<String> = Vec::new();
        match item.placeholders() {
            Err(error) => problems.push(Problem {
                stage: Stage::File,
                subject: "${env:…}".into(),
                message: error.to_string(),
                fix: "write placeholders as ${env:NAME}".into(),
            }),
            Ok(placeholders) => {
                match validate::connect(client, name, &item.file.config, &placeholders).await {
                    Ok(report) => problems.extend(report.problems),
                    Err(error) => skipped.push(format!("connect checks skipped: {error}")),
                }
            }
        }
        match item.resolve() {
            Err(error) => skipped.push(format!(
                "postgres checks skipped: they log in with the connector's credentials, and {error}"
            )),
            Ok(resolved) => {
                match tokio_postgres::connect(
                    &validate::connection_string(&resolved),
                    tokio_postgres::NoTls,
                )
                .await
                {
                    Ok((db, connection)) => {
                        tokio::spawn(connection);
                        match validate::postgres(&db, &resolved).await {
                            Ok(report) => {
                                problems.extend(report.problems);
                                notes.extend(report.notes);
                            }
                            Err(error) => skipped.push(format!("postgres checks failed: {error}")),
                        }
                        match declared_in_database(&db, &captures, &resolved, &problems).await {
                            Ok(found) => problems.extend(found),
                            Err(error) => skipped.push(format!("postgres checks failed: {error}")),
                        }
                    }
                    Err(error) => problems.push(Problem {
                        stage: Stage::Postgres,
                        subject: "database.*".into(),
                        message: format!(
                            "cannot connect with the connector's settings: {}",
                            error.as_db_error().map_or_else(|| error.to_string(), |db| db.message().to_string())
                        ),
                        fix: "check database.hostname/port/user/password/dbname and that Postgres runs"
                            .into(),
                    }),
                }
            }
        }
        println!("{name} ({})", item.path.display());
        for line in &skipped {
            println!("  ! {line}");
        }
        for line in &notes {
            println!("  · {line}");
        }
        if problems.is_empty() {
            println!("  ok: no problem found");
        }
        for problem in &problems {
            println!("  {}", problem.to_string().replace('\n', "\n  "));
        }
        all_ok &= problems.is_empty() && skipped.is_empty();
    }
    let missing: Vec<&setup::Capture> =
        captures.iter().filter(|capture| !covered.contains(&capture.table)).collect();
    if !missing.is_empty() {
        println!("declared sources");
        for capture in &missing {
            let problem = Problem {
                stage: Stage::File,
                subject: "table.include.list".into(),
                message: format!(
                    "{} ({}) is declared but no connector file captures it: its changes never \
                     reach persona",
                    capture.table, capture.declared_as
                ),
                fix: format!(
                    "add {} to table.include.list (`persona sources plan` prints the whole list)",
                    capture.table
                ),
            };
            println!("  {}", problem.to_string().replace('\n', "\n  "));
        }
        all_ok = false;
    }
    code(all_ok)
}

/// The declared tables this connector captures, against its database: missing tables, columns
/// and types, and the statements `persona sources plan --apply` would run (those the connector
/// checks did not already name).
async fn declared_in_database(
    db: &tokio_postgres::Client,
    captures: &[setup::Capture],
    resolved: &BTreeMap<String, String>,
    found: &[Problem],
) -> Result<Vec<Problem>, tokio_postgres::Error> {
    let captured = validate::captured_tables(resolved);
    let mine: Vec<setup::Capture> =
        captures.iter().filter(|c| captured.contains(&c.table)).cloned().collect();
    let publication = resolved.get("publication.name").cloned().unwrap_or_default();
    let plan = setup::database_plan(db, &mine, &publication).await?;
    let unquoted = |text: &str| text.replace('"', "");
    let known: Vec<String> = found.iter().map(|problem| unquoted(&problem.fix)).collect();
    let mut problems: Vec<Problem> = plan
        .steps
        .into_iter()
        .filter(|step| !known.iter().any(|fix| fix.contains(&unquoted(&step.sql))))
        .map(|step| Problem {
            stage: Stage::Postgres,
            subject: "declared sources".into(),
            message: step.why,
            fix: step.sql,
        })
        .collect();
    problems.extend(plan.blockers.into_iter().map(|blocker| Problem {
        stage: Stage::Postgres,
        subject: "declared sources".into(),
        message: blocker,
        fix: "declare the table as it is (definitions file), or change the database".into(),
    }));
    Ok(problems)
}

/// The difference between each file and what Connect runs; exit status 0 either way (2 on
/// error), so scripts can read the output.
pub async fn plan(client: &ConnectClient, loaded: &[Loaded]) -> Result<ExitCode, ConnectError> {
    for item in loaded {
        item.placeholders()?;
        let deployed = client.config(&item.file.name).await?;
        let changes = super::plan(&item.file.config, deployed.as_ref());
        let name = &item.file.name;
        match (&deployed, changes.is_empty()) {
            (None, _) => println!("{name}: not deployed; apply creates it with:"),
            (Some(_), true) => println!("{name}: up to date"),
            (Some(_), false) => println!("{name}: {} change(s):", changes.len()),
        }
        for change in &changes {
            println!("  {change}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates or updates each connector whose deployed config differs, then waits until it runs.
/// A connector already up to date is left alone (nothing is sent to Connect). The config is
/// sent as written: the worker resolves its placeholders, and one it cannot resolve stops the
/// apply before anything is sent.
pub async fn apply(
    client: &ConnectClient,
    loaded: &[Loaded],
    timeout: Duration,
) -> Result<ExitCode, ConnectError> {
    // Every file must be well formed before anything is applied.
    let placeholders: Vec<Vec<Placeholder>> =
        loaded.iter().map(Loaded::placeholders).collect::<Result<_, _>>()?;
    for (item, placeholders) in loaded.iter().zip(&placeholders) {
        let name = &item.file.name;
        let config = &item.file.config;
        let deployed = client.config(name).await?;
        let changes = super::plan(config, deployed.as_ref());
        if deployed.is_some() && changes.is_empty() {
            let state = client.status(name).await?.map_or("unknown".into(), |s| describe(&s));
            println!("connector {name}: unchanged ({state})");
            continue;
        }
        // Connect validates a config it is given too, but its answer to an invalid one is not
        // always readable (Connect 4.3 answers HTTP 500 for some Debezium errors): validate
        // first, and send only what passes.
        let report = validate::connect(client, name, config, placeholders).await?;
        if !report.unresolved.is_empty() {
            return Err(ConnectError::Unresolvable {
                path: item.path.clone(),
                names: report.unresolved,
            });
        }
        if !report.problems.is_empty() {
            let problems: Vec<String> = report
                .problems
                .iter()
                .map(|p| format!("  {}", p.to_string().replace('\n', "\n  ")))
                .collect();
            return Err(ConnectError::Invalid {
                name: name.clone(),
                problems: problems.join("\n"),
            });
        }
        for change in &changes {
            println!("  {change}");
        }
        client.put_config(name, config).await?;
        // A connector that failed before an update may still report it for a moment.
        let grace = if deployed.is_some() { STALE_STATUS_GRACE } else { Duration::ZERO };
        client.wait_running(name, timeout, grace).await?;
        let verb = if deployed.is_some() { "updated" } else { "created" };
        println!("connector {name}: {verb}, RUNNING");
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(status: &super::ConnectorStatus) -> String {
    let tasks: Vec<String> = status.tasks.iter().map(|t| format!("{}:{}", t.id, t.state)).collect();
    format!("connector {}, tasks [{}]", status.state, tasks.join(" "))
}

/// A table of every named connector's state; exit status 1 when anything is not RUNNING.
pub async fn status(client: &ConnectClient, names: &[String]) -> Result<ExitCode, ConnectError> {
    let mut all_running = true;
    println!("{:<28} {:<12} {:<24} WORKER", "CONNECTOR", "STATE", "TASKS");
    for name in names {
        match client.status(name).await? {
            None => {
                all_running = false;
                println!("{name:<28} {:<12} {:<24} -", "MISSING", "-");
            }
            Some(status) => {
                all_running &= status.is_running();
                let tasks: Vec<String> =
                    status.tasks.iter().map(|t| format!("{}:{}", t.id, t.state)).collect();
                let tasks = if tasks.is_empty() { "none".to_string() } else { tasks.join(" ") };
                println!("{name:<28} {:<12} {tasks:<24} {}", status.state, status.worker);
                if status.state == "FAILED" {
                    println!("{}", readable_trace(status.trace.as_deref()));
                }
                for task in status.tasks.iter().filter(|t| t.state == "FAILED") {
                    println!(
                        "  task {} trace:\n{}",
                        task.id,
                        readable_trace(task.trace.as_deref())
                    );
                }
            }
        }
    }
    Ok(code(all_running))
}

/// What `restart`, `pause`, `resume` and `delete` do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Restart { only_failed: bool },
    Pause,
    Resume,
    Delete,
}

/// Runs `action` on each named connector and waits until it took effect.
pub async fn act(
    client: &ConnectClient,
    names: &[String],
    action: Action,
    timeout: Duration,
) -> Result<ExitCode, ConnectError> {
    for name in names {
        match action {
            Action::Restart { only_failed } => {
                client.restart(name, only_failed).await?;
                client.wait_running(name, timeout, STALE_STATUS_GRACE).await?;
                println!("connector {name}: restarted, RUNNING");
            }
            Action::Pause => {
                client.pause(name).await?;
                client.wait_state(name, "PAUSED", timeout).await?;
                println!("connector {name}: PAUSED");
            }
            Action::Resume => {
                client.resume(name).await?;
                client.wait_running(name, timeout, STALE_STATUS_GRACE).await?;
                println!("connector {name}: resumed, RUNNING");
            }
            Action::Delete => {
                client.delete(name).await?;
                println!(
                    "connector {name}: deleted (its replication slot stays until dropped: \
                     SELECT pg_drop_replication_slot('<slot.name>'))"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
