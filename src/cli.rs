//! The command line: every subcommand and flag `persona` accepts, with the help text ops read.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Real-time personalization features from a legacy application's Postgres writes.
#[derive(Parser)]
#[command(name = "persona", version, about)]
pub struct Cli {
    /// TOML configuration file (settings not in it come from defaults and PERSONA_<SECTION>__<KEY>).
    #[arg(long, short, global = true, env = "PERSONA_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Consume the CDC topics and serve the HTTP API until SIGTERM or Ctrl-C.
    Serve,
    /// Apply the database migrations (reference schema if missing, and the CDC setup).
    Migrate,
    /// The change data capture the declared sources need (definitions file, `[[source]]` and
    /// `[[dimension]]`).
    Sources {
        #[command(subcommand)]
        command: SourcesCommand,
    },
    /// Manage the Debezium connector defined by JSON files.
    Connector {
        #[command(subcommand)]
        command: ConnectorCommand,
    },
    /// Replay every feature topic from the beginning into fresh state, then make it current
    /// (serving instances switch to it within a second); prints a summary.
    Rebuild {
        /// How long serving instances get to switch before the old state is deleted.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
    /// Play the legacy application: seed a product catalog, then write shopper sessions
    /// (browse, click, add to cart, purchase) into its tables at a steady rate until Ctrl-C.
    Simulate {
        /// Shoppers, `sim-u0001` onwards, each with one or two favourite categories.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        users: u32,
        /// Products `sim-p0001` onwards, inserted where missing.
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        products: u32,
        /// Writes per second.
        #[arg(long, default_value_t = 20.0, value_parser = parse_rate)]
        rate: f64,
        /// Stop after this long (e.g. 30s, 5m); runs until Ctrl-C otherwise.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Seeds the catalog and the shoppers' choices: the same seed writes the same sessions.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Inspect and re-drive the dead-letter topic (change events that could not be decoded
    /// or applied).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Print the effective configuration (secrets redacted) and exit.
    Config,
}

#[derive(Subcommand)]
pub enum SourcesCommand {
    /// Print what the legacy database lacks for the declared sources (publication membership,
    /// REPLICA IDENTITY FULL, missing tables, columns or types) and the connector settings they
    /// need; exit status 1 when something no statement fixes is found.
    Plan {
        /// Run the database statements (in one transaction; a second run has nothing to do).
        #[arg(long)]
        apply: bool,
        /// Connector file or directory to read publication.name and topic.prefix from.
        #[arg(long, default_value = "connect")]
        connector: PathBuf,
        /// The publication Debezium reads (instead of the connector file's publication.name).
        #[arg(long)]
        publication: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List dead letters: where they came from, why they failed, and a preview of the value.
    List {
        /// Start at this offset of the dead-letter topic.
        #[arg(long, default_value_t = 0)]
        from: i64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Produce dead letters back to the partition they came from, once the cause is fixed;
    /// persona applies each once, however often it is re-driven.
    Replay {
        /// Offsets of the dead-letter topic to re-drive (repeatable).
        #[arg(long = "offset", required_unless_present = "all", conflicts_with = "all")]
        offsets: Vec<i64>,
        /// Re-drive every dead letter.
        #[arg(long)]
        all: bool,
        /// Show what would be re-driven, produce nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= 100_000.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a rate between 0 and 100000 writes per second")),
    }
}

#[derive(Subcommand)]
pub enum ConnectorCommand {
    /// Check connector files offline, against Postgres (publication, replica identity, slot)
    /// and against the plugin's validation in Kafka Connect; exit status 1 on any problem.
    Validate {
        #[arg(default_value = "connect")]
        path: PathBuf,
    },
    /// Show what apply would change in the deployed config, secrets masked.
    Plan {
        #[arg(default_value = "connect")]
        path: PathBuf,
    },
    /// Resolve ${env:NAME} placeholders, create or update the connector(s) whose deployed
    /// config differs, and wait until they run. PATH is a connector JSON file or a directory.
    Apply {
        #[arg(default_value = "connect")]
        path: PathBuf,
    },
    /// Connector and task states as a table; exit status 1 when anything is not RUNNING.
    Status {
        #[arg(default_value = "connect")]
        path: PathBuf,
    },
    /// Restart failed tasks (all tasks and the connector with --all), then wait until running.
    Restart {
        #[arg(default_value = "connect")]
        path: PathBuf,
        #[arg(long)]
        all: bool,
    },
    /// Pause the connector(s): Debezium stops reading the slot, which retains WAL meanwhile.
    Pause {
        #[arg(default_value = "connect")]
        path: PathBuf,
    },
    /// Resume paused connector(s) and wait until they run.
    Resume {
        #[arg(default_value = "connect")]
        path: PathBuf,
    },
    /// Delete the connector(s) from Kafka Connect (the replication slot stays).
    Delete {
        #[arg(default_value = "connect")]
        path: PathBuf,
    },
}
