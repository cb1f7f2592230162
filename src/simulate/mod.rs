//! `persona simulate`: plays the legacy application for demos and load. Seeds a product catalog
//! (products missing only) and writes shopper sessions through the legacy tables at a steady
//! rate, with tokio-postgres prepared statements pipelined on one connection, and a progress
//! line. persona itself never writes these tables; this command stands in for the legacy app.

pub mod model;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use futures::future::join_all;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_postgres::{Client, NoTls, Statement};
use tokio_util::sync::CancellationToken;

use model::{Action, Shoppers};

/// Writes are issued in ticks of this length, `rate × TICK` at a time.
const TICK: Duration = Duration::from_millis(100);
const REPORT_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("cannot connect to postgres: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error(
        "cannot prepare the simulator's statements (are the legacy tables there? run `persona migrate`): {0}"
    )]
    Prepare(#[source] tokio_postgres::Error),
    #[error("cannot seed products: {0}")]
    Seed(#[source] tokio_postgres::Error),
    #[error("the connection to postgres was lost: {0}")]
    Lost(#[source] tokio_postgres::Error),
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub users: usize,
    pub products: usize,
    /// Writes per second.
    pub rate: f64,
    /// Stop after this long; run until cancelled when `None`.
    pub duration: Option<Duration>,
    pub seed: u64,
}

/// What a run wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub products_added: u64,
    pub activity_rows: u64,
    pub cart_writes: u64,
    pub orders: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seconds = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "{} activity rows ({:.1}/s), {} cart writes, {} orders, {} failed writes; {} products added; {:.0?}",
            self.activity_rows,
            self.activity_rows as f64 / seconds,
            self.cart_writes,
            self.orders,
            self.failed,
            self.products_added,
            self.elapsed
        )
    }
}

struct Statements {
    product: Statement,
    activity: Statement,
    cart: Statement,
    purchase: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            product: client
                .prepare(
                    "INSERT INTO products (id, name, category, brand, price, updated_at) \
                     VALUES ($1, $2, $3, $4, $5::text::numeric, now() AT TIME ZONE 'UTC') \
                     ON CONFLICT (id) DO NOTHING",
                )
                .await?,
            activity: client
                .prepare(
                    "INSERT INTO user_activity (id, user_id, activity_type, product_id, activity_timestamp) \
                     VALUES (gen_random_uuid(), $1, $2, $3, now())",
                )
                .await?,
            cart: client
                .prepare(
                    "INSERT INTO cart_items (user_id, product_id, quantity, unit_price, updated_at) \
                     VALUES ($1, $2, 1, $3::text::numeric, now() AT TIME ZONE 'UTC') \
                     ON CONFLICT (user_id, product_id) DO UPDATE \
                     SET quantity = cart_items.quantity + 1, updated_at = EXCLUDED.updated_at",
                )
                .await?,
            // One statement, so the cart becomes orders atomically.
            purchase: client
                .prepare(
                    "WITH bought AS (DELETE FROM cart_items WHERE user_id = $1 \
                                     RETURNING product_id, quantity, unit_price) \
                     INSERT INTO orders (user_id, product_id, quantity, amount, status, created_at) \
                     SELECT $1, product_id, quantity, quantity * coalesce(unit_price, 0), 'paid', now() \
                     FROM bought",
                )
                .await?,
        })
    }
}

#[derive(Default)]
struct Written {
    activity: u64,
    cart: u64,
    orders: u64,
    failed: u64,
}

/// Runs one user's writes of a tick in order; different users' run concurrently (pipelined).
async fn write_user(client: &Client, statements: &Statements, actions: Vec<Action>) -> Written {
    let mut written = Written::default();
    for action in actions {
        let result = match &action {
            Action::Activity { user, kind, product } => client
                .execute(&statements.activity, &[user, kind, product])
                .await
                .map(|_| written.activity += 1),
            Action::AddToCart { user, product, price } => {
                let kind = "ADD_TO_CART";
                let viewed = Some(product.clone());
                let price = price.to_string();
                let activity_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                    [user, &kind, &viewed];
                let cart_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                    [user, product, &price];
                let (activity, cart) = futures::join!(
                    client.execute(&statements.activity, &activity_params),
                    client.execute(&statements.cart, &cart_params),
                );
                activity.and(cart).map(|_| {
                    written.activity += 1;
                    written.cart += 1;
                })
            }
            Action::Purchase { user } => {
                let kind = "PURCHASE";
                let none: Option<String> = None;
                let activity_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                    [user, &kind, &none];
                let purchase_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [user];
                let (activity, orders) = futures::join!(
                    client.execute(&statements.activity, &activity_params),
                    client.execute(&statements.purchase, &purchase_params),
                );
                activity.and(orders).map(|rows| {
                    written.activity += 1;
                    written.orders += rows;
                })
            }
        };
        if let Err(error) = result {
            written.failed += 1;
            tracing::warn!(error = %error, ?action, "simulated write failed");
        }
    }
    written
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Seeds the catalog, then writes sessions until `duration` or `shutdown`.
pub async fn run(
    postgres_url: &str,
    settings: &Settings,
    shutdown: CancellationToken,
) -> Result<Summary, SimulateError> {
    let (client, connection) =
        tokio_postgres::connect(postgres_url, NoTls).await.map_err(SimulateError::Connect)?;
    let connection = tokio::spawn(connection);
    let statements = Statements::prepare(&client).await.map_err(SimulateError::Prepare)?;

    let started = Instant::now();
    let mut summary = Summary::default();
    let shoppers_catalog = model::catalog(settings.products, settings.seed);
    let prices: Vec<String> = shoppers_catalog.iter().map(|p| p.price.to_string()).collect();
    let rows: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 5]> = shoppers_catalog
        .iter()
        .zip(&prices)
        .map(|(p, price)| {
            [
                &p.id as &(dyn tokio_postgres::types::ToSql + Sync),
                &p.name,
                &p.category,
                &p.brand,
                price,
            ]
        })
        .collect();
    let inserts = rows.iter().map(|params| client.execute(&statements.product, params));
    for result in join_all(inserts).await {
        summary.products_added += result.map_err(SimulateError::Seed)?;
    }
    let mut shoppers = Shoppers::new(settings.users.max(1), shoppers_catalog, settings.seed);

    let bar = progress_bar();
    let plain = !std::io::stderr().is_terminal();
    let mut last_report = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut budget = 0.0f64;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        if settings.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if connection.is_finished() {
            let error = client.simple_query("SELECT 1").await.err();
            if let Some(error) = error {
                bar.finish_and_clear();
                return Err(SimulateError::Lost(error));
            }
        }
        budget += settings.rate * TICK.as_secs_f64();
        let mut per_user: Vec<(String, Vec<Action>)> = Vec::new();
        while budget >= 1.0 {
            budget -= 1.0;
            let action = shoppers.next_action();
            let user = match &action {
                Action::Activity { user, .. }
                | Action::AddToCart { user, .. }
                | Action::Purchase { user } => user.clone(),
            };
            match per_user.iter_mut().find(|(known, _)| *known == user) {
                Some((_, actions)) => actions.push(action),
                None => per_user.push((user, vec![action])),
            }
        }
        let writes =
            per_user.into_iter().map(|(_, actions)| write_user(&client, &statements, actions));
        for written in join_all(writes).await {
            summary.activity_rows += written.activity;
            summary.cart_writes += written.cart;
            summary.orders += written.orders;
            summary.failed += written.failed;
        }
        summary.elapsed = started.elapsed();
        let line = format!(
            "{} activity rows · {:.1}/s · {} cart writes · {} orders · {} failed",
            summary.activity_rows,
            summary.activity_rows as f64 / summary.elapsed.as_secs_f64().max(1e-9),
            summary.cart_writes,
            summary.orders,
            summary.failed
        );
        bar.set_message(line.clone());
        if plain && last_report.elapsed() >= REPORT_EVERY {
            last_report = Instant::now();
            eprintln!("[simulate] {line}");
        }
    }
    bar.finish_and_clear();
    summary.elapsed = started.elapsed();
    Ok(summary)
}
