//! `herold`: the Herold command-line client.
//!
//! User commands (`device new`, `send`, `listen`) speak the client protocol
//! over QUIC; `admin ...` commands call the relay's gRPC admin API. Device
//! keys and cursors live in the client home (`--home`, default `.herold`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use ed25519_dalek::SigningKey;
use herold_client::admin::AdminClient;
use herold_client::{Client, ClientConfig, Event, generate_key};
use herold_proto::v1;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

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
    /// Send a text message as a device.
    Send {
        /// Device to send as (see `herold device new`).
        #[arg(long)]
        device: String,
        /// Conversation id.
        conversation: String,
        /// The text.
        text: String,
        /// Delete the message this many seconds after sending.
        #[arg(long)]
        expire_after: Option<u64>,
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
}

#[derive(Debug, Subcommand)]
enum AdminCmd {
    /// Accounts.
    Account {
        #[command(subcommand)]
        cmd: AccountCmd,
    },
    /// Devices of an account.
    Devices {
        /// The account.
        account: String,
    },
    /// Revoke a device: it is disconnected and cannot reconnect.
    Revoke {
        /// The device.
        device: String,
    },
    /// Create a group: every member may post.
    Group {
        /// Conversation id.
        id: String,
        /// Member accounts.
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        /// Title.
        #[arg(long, default_value = "")]
        title: String,
        /// Delete messages without an expiry after this many seconds.
        #[arg(long, default_value_t = 0)]
        ttl: u64,
    },
    /// Create an information channel: publishers post, members read.
    Channel {
        /// Conversation id.
        id: String,
        /// Accounts that may post.
        #[arg(long = "publisher", required = true)]
        publishers: Vec<String>,
        /// Accounts that read.
        #[arg(long = "member")]
        members: Vec<String>,
        /// Title.
        #[arg(long, default_value = "")]
        title: String,
    },
    /// Create a direct conversation between two accounts.
    Direct {
        /// Conversation id.
        id: String,
        /// First account.
        a: String,
        /// Second account.
        b: String,
    },
    /// Add members to a conversation.
    AddMembers {
        /// Conversation id.
        id: String,
        /// Accounts.
        #[arg(required = true)]
        accounts: Vec<String>,
    },
    /// Remove members from a conversation.
    RemoveMembers {
        /// Conversation id.
        id: String,
        /// Accounts.
        #[arg(required = true)]
        accounts: Vec<String>,
    },
    /// Show a conversation and its members.
    Show {
        /// Conversation id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum AccountCmd {
    /// Create an account.
    Create {
        /// Account id.
        id: String,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Show an account.
    Show {
        /// Account id.
        id: String,
    },
    /// Delete an account: its devices are cut off, its data purged.
    Delete {
        /// Account id.
        id: String,
    },
}

/// Adds the bearer token to every admin call.
type AuthInterceptor =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Admin = AdminClient<InterceptedService<Channel, AuthInterceptor>>;

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
            expire_after,
        } => {
            let client = connect(&cli, device).await?;
            let expires = match expire_after {
                Some(s) => now_ms() + i64::try_from(*s).unwrap_or(i64::MAX / 2000) * 1000,
                None => 0,
            };
            // Until end-to-end encryption lands, the CLI sends the text's
            // bytes as the payload; the relay treats them as opaque.
            let result = client
                .send(conversation, text.as_bytes().to_vec(), expires)
                .await;
            client.close().await;
            let a = result?;
            println!(
                "accepted: {} #{}{}",
                a.conversation_id,
                a.seq,
                if a.duplicate { " (duplicate)" } else { "" }
            );
            Ok(())
        }
        Cmd::Listen {
            device,
            until_synced,
            count,
        } => {
            let mut client = connect(&cli, device).await?;
            let state = state_path(&cli.home, device);
            let mut n = 0u64;
            loop {
                let ev = tokio::select! {
                    ev = client.next_event() => ev,
                    _ = tokio::signal::ctrl_c() => None,
                };
                match ev {
                    Some(Event::Message(m)) => {
                        print_message(&m);
                        save_state(&state, &client.cursors())?;
                        n += 1;
                        if count.is_some_and(|c| n >= c) {
                            break;
                        }
                    }
                    Some(Event::Synced { .. }) => {
                        if *until_synced {
                            break;
                        }
                    }
                    Some(Event::Disconnected { reason }) => {
                        eprintln!("(disconnected: {reason}; reconnecting)");
                    }
                    Some(Event::Reconnected) => eprintln!("(reconnected)"),
                    Some(Event::Stopped(e)) => bail!("stopped: {e}"),
                    None => break,
                }
            }
            save_state(&state, &client.cursors())?;
            client.close().await;
            Ok(())
        }
    }
}

fn print_message(m: &v1::Envelope) {
    let secs = m.server_time_ms.div_euclid(1000);
    let (h, min, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let text = String::from_utf8_lossy(&m.ciphertext);
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
    let text = match &cli.fingerprint {
        Some(f) => f.clone(),
        None => {
            let path = cli.data_dir.join("tls").join("cert.sha256");
            std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "no --fingerprint given and cannot read {} (start the relay with --dev, \
                     or pass the fingerprint it printed)",
                    path.display()
                )
            })?
        }
    };
    herold_client::tls::parse_fingerprint(&text).map_err(anyhow::Error::msg)
}

async fn connect(cli: &Cli, device: &str) -> anyhow::Result<Client> {
    let key = load_key(&key_path(&cli.home, device))?;
    let mut config = ClientConfig::new(cli.relay, fingerprint(cli)?, device, key);
    config.cursors = load_state(&state_path(&cli.home, device))?;
    Client::connect(config)
        .await
        .with_context(|| format!("connecting to {} as {device}", cli.relay))
}

fn key_path(home: &Path, device: &str) -> PathBuf {
    home.join("devices").join(format!("{device}.key"))
}

fn state_path(home: &Path, device: &str) -> PathBuf {
    home.join("state").join(format!("{device}.json"))
}

fn save_key(path: &Path, key: &SigningKey) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(hex::encode(key.to_bytes()).as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "no key at {} (create the device with `herold device new`)",
            path.display()
        )
    })?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{} does not hold a 32-byte hex key", path.display()))?;
    Ok(SigningKey::from_bytes(&bytes))
}

fn load_state(path: &Path) -> anyhow::Result<HashMap<String, u64>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save_state(path: &Path, cursors: &HashMap<String, u64>) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(cursors)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
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
    let channel = tonic::transport::Endpoint::from_shared(cli.admin.clone())
        .with_context(|| format!("bad admin URL {}", cli.admin))?
        .connect()
        .await
        .with_context(|| format!("cannot reach the admin API at {}", cli.admin))?;
    let header = match token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse::<tonic::metadata::MetadataValue<_>>()
                .context("the admin token contains characters not allowed in a header")?,
        ),
        None => None,
    };
    let intercept: AuthInterceptor = Box::new(move |mut req| {
        if let Some(h) = &header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    });
    Ok(AdminClient::with_interceptor(channel, intercept))
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

fn member(account: &str, role: v1::Role) -> v1::Member {
    v1::Member {
        account_id: account.to_owned(),
        role: role as i32,
    }
}

fn print_conversation(c: &v1::Conversation) {
    let kind = v1::ConversationKind::try_from(c.kind)
        .map(|k| k.as_str_name())
        .unwrap_or("?");
    println!("{} ({kind}) {}", c.conversation_id, c.title);
    for m in &c.members {
        let role = v1::Role::try_from(m.role)
            .map(|r| r.as_str_name())
            .unwrap_or("?");
        println!("  {:<32} {role}", m.account_id);
    }
}

async fn admin(cli: &Cli, cmd: &AdminCmd) -> anyhow::Result<()> {
    let mut a = admin_client(cli).await?;
    match cmd {
        AdminCmd::Account {
            cmd: AccountCmd::Create { id, name },
        } => {
            let acc = a
                .create_account(v1::CreateAccountRequest {
                    account_id: id.clone(),
                    display_name: name.clone(),
                    tags: Vec::new(),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("account {} created", acc.account_id);
        }
        AdminCmd::Account {
            cmd: AccountCmd::Show { id },
        } => {
            let acc = a
                .get_account(v1::GetAccountRequest {
                    account_id: id.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("{} {:?}", acc.account_id, acc.display_name);
        }
        AdminCmd::Account {
            cmd: AccountCmd::Delete { id },
        } => {
            let r = a
                .delete_account(v1::DeleteAccountRequest {
                    account_id: id.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "account {id} deleted ({} devices, {} memberships removed)",
                r.devices_removed, r.memberships_removed
            );
        }
        AdminCmd::Devices { account } => {
            let r = a
                .list_devices(v1::ListDevicesRequest {
                    account_id: account.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            for d in r.devices {
                println!(
                    "{:<40} {}",
                    d.device_id,
                    if d.revoked { "revoked" } else { "active" }
                );
            }
        }
        AdminCmd::Revoke { device } => {
            a.revoke_device(v1::RevokeDeviceRequest {
                device_id: device.clone(),
            })
            .await
            .map_err(status)?;
            println!("device {device} revoked");
        }
        AdminCmd::Group {
            id,
            members,
            title,
            ttl,
        } => {
            let c = a
                .create_conversation(v1::CreateConversationRequest {
                    conversation_id: id.clone(),
                    kind: v1::ConversationKind::Group as i32,
                    title: title.clone(),
                    members: members
                        .iter()
                        .map(|m| member(m, v1::Role::Member))
                        .collect(),
                    default_ttl_seconds: *ttl,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_conversation(&c);
        }
        AdminCmd::Channel {
            id,
            publishers,
            members,
            title,
        } => {
            let mut ms: Vec<v1::Member> = publishers
                .iter()
                .map(|m| member(m, v1::Role::Publisher))
                .collect();
            ms.extend(members.iter().map(|m| member(m, v1::Role::Member)));
            let c = a
                .create_conversation(v1::CreateConversationRequest {
                    conversation_id: id.clone(),
                    kind: v1::ConversationKind::Channel as i32,
                    title: title.clone(),
                    members: ms,
                    default_ttl_seconds: 0,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_conversation(&c);
        }
        AdminCmd::Direct { id, a: x, b: y } => {
            let c = a
                .create_conversation(v1::CreateConversationRequest {
                    conversation_id: id.clone(),
                    kind: v1::ConversationKind::Direct as i32,
                    title: String::new(),
                    members: vec![member(x, v1::Role::Member), member(y, v1::Role::Member)],
                    default_ttl_seconds: 0,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_conversation(&c);
        }
        AdminCmd::AddMembers { id, accounts } => {
            let c = a
                .add_members(v1::AddMembersRequest {
                    conversation_id: id.clone(),
                    members: accounts
                        .iter()
                        .map(|m| member(m, v1::Role::Member))
                        .collect(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_conversation(&c);
        }
        AdminCmd::RemoveMembers { id, accounts } => {
            let c = a
                .remove_members(v1::RemoveMembersRequest {
                    conversation_id: id.clone(),
                    account_ids: accounts.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_conversation(&c);
        }
        AdminCmd::Show { id } => {
            let c = a
                .get_conversation(v1::GetConversationRequest {
                    conversation_id: id.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_conversation(&c);
        }
    }
    Ok(())
}
