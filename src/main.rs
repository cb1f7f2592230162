//! The `persona` binary: parses the command line, loads the configuration, wires the stages
//! together and owns shutdown.

mod cli;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use cli::{Cli, Command, ConnectorCommand, DlqCommand, SourcesCommand};

/// Request handling allocates small, short-lived values on every thread; glibc's allocator
/// spent a fifth of a feature read's CPU in malloc/free (see BENCHMARKS.md, "Serving").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use persona::cdc::{Dimension, Ingest, Replay, dimension_topics};
use persona::config::Config;
use persona::connect::{self, ConnectClient};
use persona::dlq::DeadLetters;
use persona::engine::OwnedBudget;
use persona::features::{FeatureSet, ProductCatalog};
use persona::ops::OpsView;
use persona::recommend::Recommender;
use persona::recovery;
use persona::serve::{
    ActiveUsers, AppState, EvaluationCache, Readiness, RecommendationCache, Services, Watchers,
};
use persona::store::FeatureStore;
use persona::{db, dlq, simulate, telemetry};

const REDIS_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How often instances check which state generation is current (rebuilds, emptied Redis).
const GENERATION_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Beyond `kafka.drain_timeout`, how long shutting down waits for the Kafka consumers to close.
const CONSUMER_CLOSE_ALLOWANCE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    telemetry::init_tracing();
    let config = Config::load(cli.config.as_deref())?;
    run(config, cli.command).await
}

/// Runs one command. Most succeed or fail; the connector commands have more to say in their
/// exit status.
async fn run(config: Config, command: Command) -> anyhow::Result<ExitCode> {
    let outcome: anyhow::Result<()> = match command {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            db::migrate(&config.postgres).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Sources { command } => return sources_command(&config, command).await,
        Command::Connector { command } => return connector_command(&config, command).await,
        Command::Rebuild { grace } => {
            let features = Arc::new(FeatureSet::load(config.features.definitions.as_deref())?);
            let store = FeatureStore::connect(&config.redis, &config.cache)
                .await
                .context("connecting to redis")?;
            let store = Arc::new(store);
            let summary = recovery::rebuild::run(
                &config.kafka,
                &store,
                &features,
                config.cache.rebuild_max_bytes,
                grace,
            )
            .await?;
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
        Command::Dlq { command } => dlq_command(&config, command).await,
        Command::Config => {
            println!("{config:#?}");
            Ok(())
        }
    };
    outcome.map(|()| ExitCode::SUCCESS)
}

async fn connector_command(config: &Config, command: ConnectorCommand) -> anyhow::Result<ExitCode> {
    use connect::commands::{self, Action};
    let client = ConnectClient::new(&config.connect.url);
    let timeout = config.connect.apply_timeout;
    let names = |path: &std::path::Path| -> anyhow::Result<Vec<String>> {
        Ok(commands::load_all(path)?.into_iter().map(|item| item.file.name).collect())
    };
    let act = |path: &std::path::Path, action: Action| {
        let names = names(path);
        let client = &client;
        async move { Ok::<_, anyhow::Error>(commands::act(client, &names?, action, timeout).await?) }
    };
    Ok(match command {
        ConnectorCommand::Validate { path } => {
            let features = FeatureSet::load(config.features.definitions.as_deref())?;
            commands::validate(&client, &commands::load_all(&path)?, &features).await
        }
        ConnectorCommand::Plan { path } => {
            commands::plan(&client, &commands::load_all(&path)?).await?
        }
        ConnectorCommand::Apply { path } => {
            commands::apply(&client, &commands::load_all(&path)?, timeout).await?
        }
        ConnectorCommand::Status { path } => commands::status(&client, &names(&path)?).await?,
        ConnectorCommand::Restart { path, all } => {
            act(&path, Action::Restart { only_failed: !all }).await?
        }
        ConnectorCommand::Pause { path } => act(&path, Action::Pause).await?,
        ConnectorCommand::Resume { path } => act(&path, Action::Resume).await?,
        ConnectorCommand::Delete { path } => act(&path, Action::Delete).await?,
    })
}

async fn sources_command(config: &Config, command: SourcesCommand) -> anyhow::Result<ExitCode> {
    let SourcesCommand::Plan { apply, connector, publication } = command;
    let features = FeatureSet::load(config.features.definitions.as_deref())?;
    let files = match connect::commands::load_all(&connector) {
        Ok(files) => files,
        Err(_) if publication.is_some() => Vec::new(),
        Err(error) => return Err(error.into()),
    };
    let publication = connect::sources::publication(publication, &files)?;
    let prefixes: Vec<&String> =
        files.iter().filter_map(|file| file.file.config.get("topic.prefix")).collect();
    let prefix = if let [one] = prefixes.as_slice() { Some(one.as_str()) } else { None };
    let url = config.postgres.url.expose();
    Ok(connect::sources::plan(&features, url, &publication, prefix, apply).await?)
}

async fn dlq_command(config: &Config, command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { from, json } => dlq::commands::list(&config.kafka, from, json).await?,
        DlqCommand::Replay { offsets, all, dry_run } => {
            let selection = if all {
                dlq::commands::Selection::All
            } else {
                dlq::commands::Selection::Offsets(offsets)
            };
            dlq::commands::replay(&config.kafka, selection, dry_run).await?;
        }
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let features = Arc::new(FeatureSet::load(config.features.definitions.as_deref())?);
    let dimension_topics = dimension_topics(&config.kafka, &features)?;
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
    let catalog = Arc::new(ProductCatalog::new(features.item));
    let dimensions: Vec<Dimension> = dimension_topics
        .into_iter()
        .map(|(topic, schema)| Dimension::start(&config.kafka, topic, schema, Arc::clone(&catalog)))
        .collect::<Result<_, _>>()?;
    let dead_letters = DeadLetters::new(&config.kafka)?;
    if let Err(error) = dead_letters.ensure_topic(&config.kafka).await {
        // Brokers that auto-create topics still take the first dead letter.
        tracing::warn!(error = %error, "cannot create the dead-letter topic");
    }
    let ingest = Ingest::start(
        &config.kafka,
        Arc::clone(&store),
        Arc::clone(&features),
        dead_letters.clone(),
        OwnedBudget::new(config.cache.ingest_max_bytes),
    )?;
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
    let missing = features.recommendations.missing();
    if !missing.is_empty() {
        tracing::warn!(
            ?missing,
            "no feature plays these recommendation roles ([recommendations]); ranking goes without them"
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
    let watchers = Arc::new(Watchers::new(config.api.max_streams));
    let dispatcher = watchers.spawn_dispatcher(&store, shutdown.clone());
    let ops = Arc::new(OpsView::default());
    let ops_poller = ops.spawn_poller(
        config.postgres.url.expose().clone(),
        ConnectClient::new(&config.connect.url),
        config.ops.interval,
        shutdown.clone(),
    );
    let sampler = ops.history.spawn_sampler(metrics.clone(), config.ops.interval, shutdown.clone());
    let readiness = Arc::new(Readiness::default());
    let state = AppState::from(Services {
        store,
        features,
        catalog,
        evaluations: Arc::new(EvaluationCache::new(
            config.api.evaluation_granularity,
            config.api.cache_bytes,
        )),
        recommendations: Arc::new(RecommendationCache::new(config.api.cache_bytes)),
        catalog_loaded: dimensions.iter().map(Dimension::readiness).collect(),
        readiness: Arc::clone(&readiness),
        broker: Some(ingest.broker_probe()),
        metrics: Some(metrics),
        recommender,
        render_deadline: config.recommend.render_deadline,
        active_users: Arc::clone(&active_users),
        watchers,
        ops,
    });
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("binding {}", config.api.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    let server = axum::serve(listener, persona::http::app(state, &config.api))
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
    // Closing the consumers (leaving their groups) runs in librdkafka, which waits on the group
    // coordinator. Offsets are committed before that, so a close that does not return in time
    // is left behind rather than keep the process from exiting: a thread of its own, which a
    // runtime shutting down does not wait for as it would for `spawn_blocking`.
    let (closed, closing) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("ingest-shutdown".into()).spawn(move || {
        ingest.shutdown();
        for dimension in dimensions {
            dimension.shutdown();
        }
        let _ = closed.send(());
    })?;
    let allowance = config.kafka.drain_timeout + CONSUMER_CLOSE_ALLOWANCE;
    if tokio::time::timeout(allowance, closing).await.is_err() {
        tracing::warn!(
            ?allowance,
            "the Kafka consumers did not close in time; exiting without them (offsets are \
             committed; the group moves their partitions once kafka.session_timeout passes)"
        );
    }
    shutdown.cancel();
    let _ = probe.await;
    let _ = watcher.await;
    let _ = dispatcher.await;
    let _ = invalidations.await;
    let _ = refresher.await;
    let _ = tracker.await;
    let _ = ops_poller.await;
    let _ = sampler.await;
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
