//! `herold-relay`: parses the configuration and runs one relay node until
//! SIGTERM or Ctrl-C, then drains.

use clap::Parser;
use herold_relay::config::Args;
use herold_relay::{Config, Relay};

/// Exit code for a configuration error (EX_USAGE).
const EXIT_CONFIG: i32 = 64;

fn main() {
    let config = match Config::from_args(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herold-relay: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herold-relay: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        let telemetry = match herold_relay::telemetry::init(&config) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("herold-relay: {e:#}");
                std::process::exit(EXIT_CONFIG);
            }
        };
        let result = run(config).await;
        telemetry.shutdown().await;
        result
    });
    if let Err(e) = result {
        eprintln!("herold-relay: {e:#}");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    for weak in &config.cql_weak_durability {
        tracing::warn!(
            choice = %weak,
            "CQL durability below production: losing one node can lose acknowledged \
             messages (accepted with --cql-accept-weak-durability)"
        );
    }
    if config.migrate_only {
        if let Some(cql) = &config.cql {
            let applied = herold_store::cql::CqlStore::migrate(cql).await?;
            println!(
                "keyspace {}: migrations applied now: {applied:?} (latest: {})",
                cql.keyspace,
                herold_store::cql::MIGRATIONS.len()
            );
        }
        return Ok(());
    }
    let dev = config.dev;
    let data_dir = config.data_dir.clone();
    let cql = config.cql.clone();
    let relay = Relay::bind(config).await?;
    println!("herold relay listening");
    println!("  quic        {}", relay.local_addr()?);
    match relay.tcp_addr() {
        Some(a) => println!("  tcp         {a} (fallback: WebSocket over TLS)"),
        None => println!("  tcp         off (no fallback)"),
    }
    println!("  admin api   http://{}", relay.admin_addr()?);
    println!("  metrics     http://{}/metrics", relay.metrics_addr()?);
    match &cql {
        Some(c) => println!(
            "  data        cql {} keyspace {}",
            c.contact_points.join(","),
            c.keyspace
        ),
        None => println!("  data        {}", data_dir.display()),
    }
    println!("  fingerprint {}", relay.fingerprint());
    if dev {
        println!("  (development mode: self-signed certificate, admin API without token)");
    }
    relay.run(shutdown_signal()).await
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
