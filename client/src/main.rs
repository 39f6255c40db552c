//! `herold`: the Herold command-line client.
//!
//! User commands (`device new`, `send`, `listen`) speak the client protocol
//! over QUIC; `admin ...` commands call the relay's gRPC admin API. Device
//! keys and cursors live in the client home (`--home`, default `.herold`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use herold_client::admin::AdminClient;
use herold_client::e2e::{E2eClient, E2eEvent, Message};
use herold_client::{ClientConfig, generate_key};
use herold_mls::MlsDevice;
use herold_proto::v1;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

mod admin_cmd;
mod files_cmd;
use admin_cmd::{AdminCmd, admin};
use herold_client::home::{
    key_path, load_key, load_state, open_mls, save_key, save_state, state_path,
};

#[derive(Debug, Parser)]
#[command(name = "herold", version, about = "Herold command-line client")]
struct Cli {
    /// Where device keys and cursors are kept.
    #[arg(long, env = "HEROLD_HOME", default_value = ".herold", global = true)]
    home: PathBuf,
    /// Relay QUIC address.
    #[arg(
        long,
        env = "HEROLD_RELAY",
        default_value = "127.0.0.1:7300",
        global = true
    )]
    relay: SocketAddr,
    /// SHA-256 fingerprint of the relay certificate (hex). Default: read from
    /// `<data-dir>/tls/cert.sha256`, which a dev relay writes.
    #[arg(long, env = "HEROLD_FINGERPRINT", global = true)]
    fingerprint: Option<String>,
    /// The dev relay's data directory, to find its fingerprint.
    #[arg(
        long,
        env = "HEROLD_DATA_DIR",
        default_value = "herold-data",
        global = true
    )]
    data_dir: PathBuf,
    /// Admin API URL.
    #[arg(
        long,
        env = "HEROLD_ADMIN",
        default_value = "http://127.0.0.1:7301",
        global = true
    )]
    admin: String,
    /// File with the admin bearer token.
    #[arg(long, env = "HEROLD_ADMIN_TOKEN_FILE", global = true)]
    admin_token_file: Option<PathBuf>,
    /// CA certificate (PEM) of an `https://` admin API.
    #[arg(long, env = "HEROLD_ADMIN_CA", global = true)]
    admin_ca: Option<PathBuf>,
    /// Operator client certificate (PEM), for mTLS.
    #[arg(long, env = "HEROLD_ADMIN_CERT", global = true, requires = "admin_key")]
    admin_cert: Option<PathBuf>,
    /// Operator client key (PEM), for mTLS.
    #[arg(long, env = "HEROLD_ADMIN_KEY", global = true, requires = "admin_cert")]
    admin_key: Option<PathBuf>,
    /// Name to verify the admin API's certificate for (default: the URL's host).
    #[arg(long, env = "HEROLD_ADMIN_TLS_NAME", global = true)]
    admin_tls_name: Option<String>,
    /// Print results as JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Administration through the admin API.
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
    },
    /// Devices of this client home.
    Device {
        #[command(subcommand)]
        cmd: DeviceCmd,
    },
    /// Send a text message, or a file (`--file`), as a device.
    Send {
        /// Device to send as (see `herold device new`).
        #[arg(long)]
        device: String,
        /// Conversation id.
        conversation: String,
        /// The text.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        text: Option<String>,
        /// Send this file (a photo, a document), end-to-end encrypted.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Delete the message this many seconds after sending.
        #[arg(long)]
        expire_after: Option<u64>,
    },
    /// Set (or without TITLE remove) a conversation's title, end to end
    /// encrypted: only its members see it.
    Title {
        /// Device to commit as.
        #[arg(long)]
        device: String,
        /// Conversation id.
        conversation: String,
        /// The title (at most 256 bytes).
        title: Option<String>,
    },
    /// Roster files for bulk provisioning.
    Roster {
        #[command(subcommand)]
        cmd: RosterCmd,
    },
    /// Print messages as they arrive (first everything missed while offline).
    Listen {
        /// Device to listen as.
        #[arg(long)]
        device: String,
        /// Exit once everything stored has been received.
        #[arg(long)]
        until_synced: bool,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Where received files are saved [default: `<home>/files/<device>`].
        #[arg(long)]
        files: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum DeviceCmd {
    /// Create a key for a new device `<account>.<name>` and enroll it.
    New {
        /// The account.
        account: String,
        /// The device's name, e.g. `phone`.
        name: String,
    },
    /// List the devices whose keys are in this home.
    Local,
    /// Enroll a new device with a one-time code from the city's IT: creates
    /// its key and registers it (no operator token needed).
    Enroll {
        /// The new device's id, e.g. `anna.phone`.
        device: String,
        /// The code, e.g. `K7QM-2XRP-9D4T`.
        code: String,
    },
    /// Show a one-time code that adds another device to this device's
    /// account (a browser at the office desk, a new phone): as text and as
    /// a QR code; valid for 10 minutes.
    Link {
        /// This device, e.g. `anna.phone`.
        #[arg(long)]
        device: String,
        /// The web messenger's address: the QR code then opens it with the
        /// code filled in (`<url>#code=...`) [default: the code itself,
        /// `herold:enroll?code=...`].
        #[arg(long)]
        url: Option<String>,
    },
    /// Set (or without NAME clear) the display name this device shows the
    /// members of its conversations, end to end encrypted. Groups learn it
    /// with the device's next send there.
    Name {
        /// The device, e.g. `anna.phone`.
        device: String,
        /// The name (at most 128 bytes).
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum RosterCmd {
    /// Write a deterministic roster CSV (for tests and benchmarks).
    Generate {
        /// Volunteers.
        #[arg(long, default_value_t = 7000)]
        volunteers: usize,
        /// Polling stations.
        #[arg(long, default_value_t = 618)]
        stations: usize,
        /// Cohort tag.
        #[arg(long, default_value = "election-2026")]
        cohort: String,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Adds the bearer token to every admin call.
#[derive(Debug, Clone)]
struct BearerAuth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.0 {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

pub(crate) type Admin = AdminClient<InterceptedService<Channel, BearerAuth>>;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("herold: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.cmd {
        Cmd::Admin { cmd } => admin(&cli, cmd).await,
        Cmd::Device {
            cmd: DeviceCmd::New { account, name },
        } => {
            let device_id = format!("{account}.{name}");
            let path = key_path(&cli.home, &device_id);
            if path.exists() {
                bail!("a key for {device_id} exists already in {}", path.display());
            }
            let key = generate_key()?;
            let mut client = admin_client(&cli).await?;
            client
                .register_device(v1::RegisterDeviceRequest {
                    account_id: account.clone(),
                    device_id: device_id.clone(),
                    public_key: key.verifying_key().to_bytes().to_vec(),
                })
                .await
                .map_err(status)?;
            save_key(&path, &key)?;
            println!("device {device_id} enrolled; key in {}", path.display());
            publish_key_packages(&cli, &device_id).await
        }
        Cmd::Device {
            cmd: DeviceCmd::Enroll { device, code },
        } => {
            let path = key_path(&cli.home, device);
            if path.exists() {
                bail!("a key for {device} exists already in {}", path.display());
            }
            let key = generate_key()?;
            let channel = admin_channel(&cli).await?;
            let d = herold_client::admin::EnrollmentClient::new(channel)
                .enroll(v1::EnrollRequest {
                    code: code.clone(),
                    device_id: device.clone(),
                    public_key: key.verifying_key().to_bytes().to_vec(),
                })
                .await
                .map_err(status)?
                .into_inner();
            save_key(&path, &key)?;
            println!(
                "device {} enrolled for account {}; key in {}",
                d.device_id,
                d.account_id,
                path.display()
            );
            publish_key_packages(&cli, device).await
        }
        Cmd::Roster {
            cmd:
                RosterCmd::Generate {
                    volunteers,
                    stations,
                    cohort,
                    seed,
                    out,
                },
        } => {
            let text = herold_client::roster::generate(*volunteers, *stations, cohort, *seed);
            match out {
                Some(p) => {
                    std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?
                }
                None => print!("{text}"),
            }
            Ok(())
        }
        Cmd::Device {
            cmd: DeviceCmd::Local,
        } => {
            let dir = cli.home.join("devices");
            let mut names: Vec<String> = match std::fs::read_dir(&dir) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".key"))
                            .map(str::to_owned)
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            names.sort();
            for n in names {
                println!("{n}");
            }
            Ok(())
        }
        Cmd::Send {
            device,
            conversation,
            text,
            file,
            expire_after,
        } => {
            let contents = match file {
                Some(path) => Some(
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
                ),
                None => None,
            };
            let mut client = connect_e2e(&cli, device).await?;
            let expires = match expire_after {
                Some(s) => now_ms() + i64::try_from(*s).unwrap_or(i64::MAX / 2000) * 1000,
                None => 0,
            };
            // What arrives meanwhile is decrypted (and acknowledged): print
            // it, as `listen` would, or it would be lost to this device.
            let state = state_path(&cli.home, device);
            let mut cursors = load_state(&state)?;
            let mut events = client.take_events();
            let send = async {
                match (&contents, file) {
                    (Some(bytes), Some(path)) => {
                        let (name, kind) =
                            (files_cmd::send_name(path), files_cmd::media_type(path));
                        let (a, _) = client
                            .send_file(conversation, bytes, &name, kind, expires)
                            .await?;
                        println!("file {name:?} ({kind}, {} bytes) sent", bytes.len());
                        Ok(a)
                    }
                    _ => {
                        let text = text.as_deref().unwrap_or_default();
                        client.send(conversation, text.as_bytes(), expires).await
                    }
                }
            };
            let (result, received) = showing_events(&mut events, &mut cursors, send).await;
            let saved = save_received(&cli, &client, device, &received).await;
            save_state(&state, &cursors)?;
            client.close().await;
            saved?;
            let a = result?;
            println!(
                "accepted: {} #{}{}",
                a.conversation_id,
                a.seq,
                if a.duplicate { " (duplicate)" } else { "" }
            );
            Ok(())
        }
        Cmd::Title {
            device,
            conversation,
            title,
        } => {
            let mut client = connect_e2e(&cli, device).await?;
            let state = state_path(&cli.home, device);
            let mut cursors = load_state(&state)?;
            let mut events = client.take_events();
            let set = client.set_title(conversation, title.as_deref());
            let (result, received) = showing_events(&mut events, &mut cursors, set).await;
            let saved = save_received(&cli, &client, device, &received).await;
            save_state(&state, &cursors)?;
            client.close().await;
            saved?;
            if !result? {
                bail!("the relay refused the commit: this device may not change {conversation}");
            }
            match title.as_deref().filter(|t| !t.is_empty()) {
                Some(t) => println!("{conversation}: title set to {t:?}"),
                None => println!("{conversation}: title removed"),
            }
            Ok(())
        }
        Cmd::Device {
            cmd: DeviceCmd::Link { device, url },
        } => {
            let client = connect_e2e(&cli, device).await?;
            let issued = client.issue_link_code().await;
            let account = client.account_id().to_owned();
            client.close().await;
            let c = issued.context("asking the relay for a link code")?;
            let payload = match url {
                Some(u) => format!("{}#code={}", u.trim_end_matches('#'), c.code),
                None => herold_client::roster::qr_payload(&c.code),
            };
            let minutes = (c.expires_at_ms - now_ms()).max(0) / 60_000;
            println!("{}", herold_client::roster::qr_text(&payload));
            println!(
                "link code {} for account {account}, valid for {minutes} more minutes",
                c.code
            );
            Ok(())
        }
        Cmd::Device {
            cmd: DeviceCmd::Name { device, name },
        } => {
            let key = key_path(&cli.home, device);
            if !key.try_exists().unwrap_or(false) {
                bail!(
                    "no device {device} in this client home ({}): see `herold device new` and `herold device enroll`",
                    cli.home.display()
                );
            }
            let path = cli.home.join("mls").join(format!("{device}.mls"));
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let mut mls = MlsDevice::open_or_create(device, &path)
                .with_context(|| format!("opening the MLS state {}", path.display()))?;
            mls.set_display_name(name.as_deref())?;
            match mls.display_name() {
                Some(n) => println!("{device}: display name {n:?}"),
                None => println!("{device}: no display name"),
            }
            Ok(())
        }
        Cmd::Listen {
            device,
            until_synced,
            count,
            files,
        } => {
            let mut client = connect_e2e(&cli, device).await?;
            let files = files
                .clone()
                .unwrap_or_else(|| cli.home.join("files").join(device));
            let state = state_path(&cli.home, device);
            let mut cursors = load_state(&state)?;
            let mut n = 0u64;
            loop {
                let ev = tokio::select! {
                    ev = client.next_event() => ev,
                    _ = tokio::signal::ctrl_c() => None,
                };
                match ev {
                    Some(E2eEvent::Message(m)) => {
                        match m.file() {
                            // Saved before the cursor moves past it.
                            Some(f) => {
                                files_cmd::save(&client, &files, &m, &f).await?;
                            }
                            None => print_message(&m),
                        }
                        cursors.insert(m.conversation_id.clone(), m.seq);
                        save_state(&state, &cursors)?;
                        n += 1;
                        if count.is_some_and(|c| n >= c) {
                            break;
                        }
                    }
                    Some(E2eEvent::Unreadable {
                        conversation_id,
                        seq,
                        reason,
                    }) => {
                        eprintln!("({conversation_id} #{seq}: not shown: {reason})");
                        cursors.insert(conversation_id, seq);
                    }
                    Some(
                        ev @ (E2eEvent::Joined { .. }
                        | E2eEvent::Removed { .. }
                        | E2eEvent::Restarted { .. }
                        | E2eEvent::KeyReceived { .. }),
                    ) => show_event(ev, &mut cursors),
                    Some(E2eEvent::GroupChanged {
                        conversation_id,
                        seq,
                        added,
                        removed,
                        title,
                        ..
                    }) => {
                        eprintln!(
                            "({conversation_id}: {} device(s) added, {} removed{})",
                            added.len(),
                            removed.len(),
                            title.map(|t| format!("; title {t:?}")).unwrap_or_default()
                        );
                        cursors.insert(conversation_id, seq);
                    }
                    Some(E2eEvent::Synced) => {
                        if *until_synced {
                            break;
                        }
                    }
                    Some(E2eEvent::Disconnected { reason }) => {
                        eprintln!("(disconnected: {reason}; reconnecting)");
                    }
                    Some(E2eEvent::Stopped(e)) => bail!("stopped: {e}"),
                    // The CLI's state is a file, written as it changes:
                    // it asks for no checkpoints.
                    Some(E2eEvent::Checkpoint(_)) => {}
                    None => break,
                }
            }
            save_state(&state, &cursors)?;
            client.close().await;
            Ok(())
        }
    }
}

/// Prints what `send` received meanwhile (messages on stdout, the rest as
/// notes on stderr) and advances the cursors.
fn show_event(ev: E2eEvent, cursors: &mut HashMap<String, u64>) {
    if let Some((conversation_id, seq)) = ev.position() {
        cursors.insert(conversation_id.to_owned(), seq);
    }
    match ev {
        E2eEvent::Message(m) => print_message(&m),
        E2eEvent::Joined {
            conversation_id, ..
        } => eprintln!(
            "(joined the encrypted group of {})",
            group_name(&conversation_id)
        ),
        E2eEvent::Removed {
            conversation_id, ..
        } => {
            eprintln!(
                "(removed from the encrypted group of {})",
                group_name(&conversation_id)
            )
        }
        E2eEvent::Restarted {
            conversation_id, ..
        } => eprintln!("{}", restarted_note(&conversation_id)),
        _ => {}
    }
}

/// How the CLI names a conversation's group: a large channel's sub-group
/// by its channel.
fn group_name(conversation_id: &str) -> String {
    match herold_proto::ids::sub_group_of(conversation_id) {
        Some((channel, i)) => format!("{channel} (its sub-group {i})"),
        None => conversation_id.to_owned(),
    }
}

fn restarted_note(conversation_id: &str) -> String {
    format!(
        "({conversation_id}: a member sent a change nobody could apply; the encryption of the \
         conversation was renewed)"
    )
}

/// Runs `fut` while printing what arrives meanwhile (decrypted and
/// acknowledged: not printed, it would be lost to this device); messages
/// with a file come back to be saved.
async fn showing_events<T>(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<E2eEvent>,
    cursors: &mut HashMap<String, u64>,
    fut: impl std::future::Future<Output = T>,
) -> (T, Vec<Message>) {
    tokio::pin!(fut);
    let mut files = Vec::new();
    let mut take = |ev: E2eEvent, cursors: &mut HashMap<String, u64>| match ev {
        E2eEvent::Message(m) if m.file().is_some() => {
            cursors.insert(m.conversation_id.clone(), m.seq);
            files.push(m);
        }
        ev => show_event(ev, cursors),
    };
    let out = loop {
        tokio::select! {
            r = &mut fut => break r,
            Some(ev) = events.recv() => take(ev, cursors),
        }
    };
    while let Ok(ev) = events.try_recv() {
        take(ev, cursors);
    }
    (out, files)
}

/// Saves the files of messages that came in while this device did
/// something else, where `listen` saves them.
async fn save_received(
    cli: &Cli,
    client: &E2eClient,
    device: &str,
    received: &[Message],
) -> anyhow::Result<()> {
    let dir = cli.home.join("files").join(device);
    for m in received {
        if let Some(f) = m.file() {
            files_cmd::save(client, &dir, m, &f).await?;
        }
    }
    Ok(())
}

fn print_message(m: &Message) {
    let secs = m.server_time_ms.div_euclid(1000);
    let (h, min, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let text = String::from_utf8_lossy(&m.plaintext);
    println!(
        "[{} #{} {h:02}:{min:02}:{s:02} UTC] {} ({}): {text}",
        m.conversation_id, m.seq, m.sender_account_id, m.sender_device_id
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn fingerprint(cli: &Cli) -> anyhow::Result<[u8; 32]> {
    herold_client::home::relay_fingerprint(cli.fingerprint.as_deref(), &cli.data_dir)
}

/// Creates the device's MLS state and uploads its key packages, so that
/// it can be added to its account's encrypted groups before it first
/// connects on its own.
async fn publish_key_packages(cli: &Cli, device: &str) -> anyhow::Result<()> {
    let client = connect_e2e(cli, device).await?;
    client.close().await;
    println!("device {device} published its MLS key packages");
    Ok(())
}

/// Connects with end-to-end encryption; the device's MLS state lives in
/// `<home>/mls/<device>.mls` (created on first use).
async fn connect_e2e(cli: &Cli, device: &str) -> anyhow::Result<E2eClient> {
    let key = load_key(&key_path(&cli.home, device))?;
    let mut config = ClientConfig::new(cli.relay, fingerprint(cli)?, device, key);
    config.cursors = load_state(&state_path(&cli.home, device))?;
    let mls = open_mls(&cli.home, device)?;
    let client = E2eClient::connect(config, mls)
        .await
        .with_context(|| format!("connecting to {} as {device}", cli.relay))?;
    if client.transport() == Some(herold_client::raw::Transport::Tcp) {
        eprintln!(
            "herold: connected over the relay's TCP fallback: UDP to {} does not get through",
            cli.relay
        );
    }
    Ok(client)
}

/// A channel to the admin API: plain HTTP/2 for `http://`, TLS for
/// `https://` (with `--admin-ca`, and a client certificate for mTLS).
async fn admin_channel(cli: &Cli) -> anyhow::Result<Channel> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(cli.admin.clone())
        .with_context(|| format!("bad admin URL {}", cli.admin))?;
    if cli.admin.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &cli.admin_ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        if let (Some(c), Some(k)) = (&cli.admin_cert, &cli.admin_key) {
            let cert = std::fs::read(c).with_context(|| format!("reading {}", c.display()))?;
            let key = std::fs::read(k).with_context(|| format!("reading {}", k.display()))?;
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        if let Some(name) = &cli.admin_tls_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint = endpoint
            .tls_config(tls)
            .context("configuring TLS for the admin API")?;
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the admin API at {}", cli.admin))
}

async fn admin_client(cli: &Cli) -> anyhow::Result<Admin> {
    let token = match &cli.admin_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let channel = admin_channel(cli).await?;
    let header = match token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse::<tonic::metadata::MetadataValue<_>>()
                .context("the admin token contains characters not allowed in a header")?,
        ),
        None => None,
    };
    Ok(AdminClient::with_interceptor(channel, BearerAuth(header)))
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}
