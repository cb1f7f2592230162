//! The `persona` binary: parses the command line, loads the configuration, wires the stages
//! together and owns shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use persona::api::{self, AppState, RankingCache, Readiness};
use persona::cdc::{Dimension, Ingest, Replay};
use persona::config::Config;
use persona::connect::{self, ConnectClient};
use persona::features::{FeatureSet, ProductCatalog};
use persona::recommend::{self, Recommender};
use persona::recovery;
use persona::store::FeatureStore;
use persona::web::ActiveUsers;
use persona::{db, simulate, telemetry};

const REDIS_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How often instances check which state generation is current (rebuilds, emptied Redis).
const GENERATION_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Real-time personalization features from a legacy application's Postgres writes.
#[derive(Parser)]
#[command(name = "persona", version, about)]
struct Cli {
    /// TOML configuration file (settings not in it come from defaults and PERSONA_<SECTION>__<KEY>).
    #[arg(long, short, global = true, env = "PERSONA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the CDC topics and serve the HTTP API until SIGTERM or Ctrl-C.
    Serve,
    /// Apply the database migrations (reference schema if missing, and the CDC setup).
    Migrate,
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
    /// Print the effective configuration (secrets redacted) and exit.
    Config,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= 100_000.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a rate between 0 and 100000 writes per second")),
    }
}

#[derive(Subcommand)]
enum ConnectorCommand {
    /// Resolve ${env:NAME} placeholders, create or update the connector(s), and wait until
    /// they run. PATH is a connector JSON file or a directory of them.
    Apply {
        #[arg(default_value = "connect")]
        path: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_tracing();
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            db::migrate(&config.postgres).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Connector { command: ConnectorCommand::Apply { path } } => {
            apply_connectors(&config, &path).await
        }
        Command::Rebuild { grace } => {
            let features = FeatureSet::load(config.features.definitions.as_deref())?;
            let store = FeatureStore::connect(&config.redis, &config.cache)
                .await
                .context("connecting to redis")?;
            let summary = recovery::rebuild::run(&config.kafka, &store, &features, grace).await?;
            println!("{summary}");
            Ok(())
        }
        Command::Simulate { users, products, rate, duration, seed } => {
            let settings = simulate::Settings {
                users: users as usize,
                products: products as usize,
                rate,
                duration,
                seed,
            };
            let shutdown = CancellationToken::new();
            let cancel = shutdown.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                cancel.cancel();
            });
            eprintln!(
                "[simulate] {users} shoppers, {products} products, {rate} writes/s{}; Ctrl-C stops",
                duration
                    .map(|d| format!(" for {}", humantime::format_duration(d)))
                    .unwrap_or_default()
            );
            let summary = simulate::run(config.postgres.url.expose(), &settings, shutdown).await?;
            println!("{summary}");
            Ok(())
        }
        Command::Config => {
            println!("{config:#?}");
            Ok(())
        }
    }
}

async fn apply_connectors(config: &Config, path: &std::path::Path) -> anyhow::Result<()> {
    let paths = connect::connector_paths(path)?;
    if paths.is_empty() {
        bail!("no connector JSON file in {}", path.display());
    }
    // Resolve every file first: a missing variable anywhere means nothing is applied.
    let mut resolved = Vec::new();
    for path in &paths {
        let file = connect::load(path)?;
        let connector_config = connect::resolve(path, &file, |name| std::env::var(name).ok())?;
        resolved.push((file.name, connector_config));
    }
    let client = ConnectClient::new(&config.connect.url);
    for (name, connector_config) in resolved {
        client.apply(&name, &connector_config, config.connect.apply_timeout).await?;
        println!("connector {name}: RUNNING");
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let features = Arc::new(FeatureSet::load(config.features.definitions.as_deref())?);
    tracing::info!(
        features = features.features.len(),
        fingerprint = %features.fingerprint,
        "feature definitions loaded"
    );
    let metrics = telemetry::install_metrics().context("installing the metrics recorder")?;
    let store = Arc::new(
        FeatureStore::connect(&config.redis, &config.cache).await.context("connecting to redis")?,
    );
    let (generation, fresh_state) = recovery::start_generation(&store, &features)
        .await
        .context("reading the state generation")?;
    tracing::info!(%generation, "feature state generation");
    let shutdown = CancellationToken::new();
    let probe = store.spawn_health_probe(REDIS_PROBE_INTERVAL, shutdown.clone());
    let invalidations = store.spawn_invalidation_listener(shutdown.clone());
    let catalog = Arc::new(ProductCatalog::default());
    let dimension = Dimension::start(&config.kafka, Arc::clone(&catalog))?;
    let ingest = Ingest::start(&config.kafka, Arc::clone(&store), Arc::clone(&features))?;
    if fresh_state {
        ingest.replayer().replay(Replay::LostState);
    }
    let watcher = recovery::spawn_watcher(
        Arc::clone(&store),
        ingest.replayer(),
        generation,
        GENERATION_CHECK_INTERVAL,
        shutdown.clone(),
    );
    let missing: Vec<&str> =
        recommend::FEATURES_READ.into_iter().filter(|name| features.get(name).is_none()).collect();
    if !missing.is_empty() {
        tracing::warn!(
            ?missing,
            "recommendations read features these definitions lack; they rank without them"
        );
    }
    let recommender = Arc::new(Recommender::default());
    let refresher = recommender.spawn_refresher(
        Arc::clone(&store),
        Arc::clone(&features),
        Arc::clone(&catalog),
        config.recommend.refresh,
        shutdown.clone(),
    );
    let active_users = Arc::new(ActiveUsers::default());
    let tracker = active_users.spawn_tracker(&store, shutdown.clone());
    let readiness = Arc::new(Readiness::default());
    let state = AppState {
        store,
        features,
        catalog,
        rankings: Arc::new(RankingCache::default()),
        catalog_loaded: Some(dimension.readiness()),
        readiness: Arc::clone(&readiness),
        broker: Some(ingest.broker_probe()),
        metrics: Some(metrics),
        recommender,
        render_deadline: config.recommend.render_deadline,
        active_users: Arc::clone(&active_users),
    };
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("binding {}", config.api.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    let server = axum::serve(listener, api::app(state, &config.api))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let mut server = tokio::spawn(async move { server.await });

    let ingest_died = async {
        while !ingest.is_finished() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let outcome = tokio::select! {
        () = shutdown_signal() => Ok(()),
        () = ingest_died => Err(anyhow::anyhow!("ingest stopped unexpectedly")),
        result = &mut server => Err(anyhow::anyhow!("api server stopped: {result:?}")),
    };

    tracing::info!("shutting down: draining ingest, then the api");
    readiness.start_draining();
    tokio::task::spawn_blocking(move || {
        ingest.shutdown();
        dimension.shutdown();
    })
    .await?;
    shutdown.cancel();
    let _ = probe.await;
    let _ = watcher.await;
    let _ = invalidations.await;
    let _ = refresher.await;
    let _ = tracker.await;
    if !server.is_finished() {
        let _ = server.await;
    }
    tracing::info!("stopped");
    outcome
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
