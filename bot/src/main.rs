//! `herold-bot`: files the photos and documents sent to it into a folder
//! per case and answers with a receipt (docs/bots.md).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use herold_bot::Filer;
use herold_client::ClientConfig;
use herold_client::e2e::{E2eClient, E2eEvent};
use herold_client::home::{
    key_path, load_key, load_state, open_mls, relay_fingerprint, save_state, state_path,
};
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    name = "herold-bot",
    version,
    about = "Files photos and documents sent to it"
)]
struct Args {
    /// The bot's device, enrolled into this home with `herold device new`
    /// or `herold device enroll`.
    #[arg(long, env = "HEROLD_BOT_DEVICE")]
    device: String,
    /// Where files are filed: one folder per case.
    #[arg(long, env = "HEROLD_BOT_OUT")]
    out: PathBuf,
    /// Where the device's key, MLS state and cursors are kept.
    #[arg(long, env = "HEROLD_HOME", default_value = ".herold")]
    home: PathBuf,
    /// Relay QUIC address.
    #[arg(long, env = "HEROLD_RELAY", default_value = "127.0.0.1:7300")]
    relay: SocketAddr,
    /// SHA-256 fingerprint of the relay certificate (hex). Default: read
    /// from `<data-dir>/tls/cert.sha256`, which a dev relay writes.
    #[arg(long, env = "HEROLD_FINGERPRINT")]
    fingerprint: Option<String>,
    /// The dev relay's data directory, to find its fingerprint.
    #[arg(long, env = "HEROLD_DATA_DIR", default_value = "herold-data")]
    data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HEROLD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let fingerprint = relay_fingerprint(args.fingerprint.as_deref(), &args.data_dir)?;
    let device = args.device.as_str();
    let key = load_key(&key_path(&args.home, device))?;
    let mut config = ClientConfig::new(args.relay, fingerprint, device, key);
    let state = state_path(&args.home, device);
    let mut cursors = load_state(&state)?;
    config.cursors = cursors.clone();
    let mls = open_mls(&args.home, device)?;
    let mut client = E2eClient::connect(config, mls)
        .await
        .with_context(|| format!("connecting to {} as {device}", args.relay))?;
    info!(%device, out = %args.out.display(), "filing bot running");
    let mut filer = Filer::new(&args.out, device);
    loop {
        let ev = tokio::select! {
            ev = client.next_event() => ev,
            _ = tokio::signal::ctrl_c() => None,
        };
        match ev {
            Some(E2eEvent::Message(m)) => {
                filer.serve(&client, &m).await;
                cursors.insert(m.conversation_id.clone(), m.seq);
                save_state(&state, &cursors)?;
            }
            Some(E2eEvent::Joined {
                conversation_id, ..
            }) => info!(conversation = %conversation_id, "joined"),
            Some(E2eEvent::Stopped(e)) => anyhow::bail!("stopped: {e}"),
            Some(ev) => {
                if let Some((conversation_id, seq)) = ev.position() {
                    cursors.insert(conversation_id.to_owned(), seq);
                }
            }
            None => break,
        }
    }
    save_state(&state, &cursors)?;
    client.close().await;
    Ok(())
}
