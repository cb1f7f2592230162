//! The serving benchmark's ceiling: a bare axum server that answers every GET with one fixed
//! JSON body (a response persona gave, so the size is the same). What this machine's HTTP stack
//! can do; `scripts/bench-serve` reads persona's figures against it, measured in the same run.
//!
//! ```sh
//! cargo run --release --example ceiling -- 127.0.0.1:18099 body.json
//! ```

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::get;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18099".to_string());
    let body = match args.next() {
        Some(path) => Bytes::from(std::fs::read(&path)?),
        None => Bytes::from_static(br#"{"ok":true}"#),
    };
    let app = Router::new().fallback(get(move || {
        let body = body.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], body) }
    }));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("ceiling: listening on {listen}");
    axum::serve(listener, app).await?;
    Ok(())
}
