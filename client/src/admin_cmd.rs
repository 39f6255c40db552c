//! `herold admin ...`: every admin API call from the command line. Tables by
//! default, `--json` for scripts.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use herold_client::roster;
use herold_proto::v1;
use serde_json::{Value, json};

use super::{Cli, admin_client, status};

#[derive(Debug, Subcommand)]
pub(crate) enum AdminCmd {
    /// Who the admin API takes you for: operator name, role, groups.
    Whoami,
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
    /// Register a device's public key for an account directly.
    RegisterDevice {
        /// The account.
        account: String,
        /// The device id.
        device: String,
        /// Ed25519 public key, 64 hex digits.
        public_key: String,
    },
    /// Revoke a device: it is disconnected and cannot reconnect.
    Revoke {
        /// The device.
        device: String,
    },
    /// One-time enrollment codes: issue, print, export.
    Codes {
        /// For these accounts.
        #[arg(long = "account")]
        accounts: Vec<String>,
        /// For every account with this tag (cohort).
        #[arg(long)]
        tag: Option<String>,
        /// Lifetime in hours [default: 168, a week].
        #[arg(long)]
        ttl_hours: Option<u64>,
        /// Only accounts without a device yet.
        #[arg(long)]
        only_new: bool,
        /// Write the codes as CSV.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Write a printable page (HTML, one card with QR code per code).
        #[arg(long)]
        html: Option<PathBuf>,
        /// Write one QR code PNG per code into this directory.
        #[arg(long)]
        png_dir: Option<PathBuf>,
        /// Print each code's QR code in the terminal.
        #[arg(long)]
        qr: bool,
    },
    /// Create a group: every member may post.
    Group {
        /// Conversation id.
        id: String,
        /// Member accounts.
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        /// Owners (may also manage members).
        #[arg(long = "owner")]
        owners: Vec<String>,
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
    /// List groups, channels and direct conversations.
    Conversations {
        /// Page size.
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// Start after this id (a previous page's last).
        #[arg(long)]
        after: Option<String>,
        /// Every page.
        #[arg(long)]
        all: bool,
    },
    /// Rename a group or channel.
    Rename {
        /// Conversation id.
        id: String,
        /// New title.
        title: String,
    },
    /// Archive a group or channel: members read, nobody posts.
    Archive {
        /// Conversation id.
        id: String,
    },
    /// Undo an archive.
    Unarchive {
        /// Conversation id.
        id: String,
    },
    /// Add members to a conversation (or change their role).
    AddMembers {
        /// Conversation id.
        id: String,
        /// Accounts.
        #[arg(required = true)]
        accounts: Vec<String>,
        /// Their role: member, publisher, admin or owner.
        #[arg(long, default_value = "member")]
        role: String,
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
    /// Security policy of the organisation or of one group or channel.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Import a roster CSV (name, station, role, cohort[, account_id]):
    /// accounts, one group per polling station, channels for everyone,
    /// enrollment codes for the new accounts. Idempotent.
    Import {
        /// The roster file.
        file: PathBuf,
        /// Channels every volunteer reads (created if missing).
        #[arg(long = "channel")]
        channels: Vec<String>,
        /// Prefix of the station groups' ids.
        #[arg(long, default_value = "station-")]
        group_prefix: String,
        /// Rows per call.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Lifetime of the new codes in hours [default: 168].
        #[arg(long)]
        code_ttl_hours: Option<u64>,
        /// Write the new accounts' codes as CSV.
        #[arg(long)]
        codes_csv: Option<PathBuf>,
        /// Write the new accounts' codes as a printable page.
        #[arg(long)]
        codes_html: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// The audit log, newest first.
    Audit {
        /// Entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue from a previous page's token.
        #[arg(long)]
        page_token: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AccountCmd {
    /// Create an account.
    Create {
        /// Account id.
        id: String,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
        /// Tags (cohorts).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Show an account.
    Show {
        /// Account id.
        id: String,
    },
    /// List accounts, optionally of one tag (cohort).
    List {
        /// Only this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// Start after this id (a previous page's token).
        #[arg(long)]
        after: Option<String>,
        /// Every page.
        #[arg(long)]
        all: bool,
    },
    /// Suspend an account: its devices are cut off and refused.
    Suspend {
        /// Account id.
        id: String,
    },
    /// Reinstate a suspended account.
    Resume {
        /// Account id.
        id: String,
    },
    /// Delete an account: its devices are cut off, its data purged.
    Delete {
        /// Account id.
        id: String,
    },
    /// Delete every account of a cohort (after the election).
    DeleteCohort {
        /// The cohort tag.
        tag: String,
        /// Only count.
        #[arg(long)]
        dry_run: bool,
        /// Really delete (required unless --dry-run).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCmd {
    /// Show what is set and what is enforced.
    Show {
        /// A group or channel (default: the organisation).
        #[arg(long)]
        conversation: Option<String>,
    },
    /// Set (replace) the policy; unset values inherit.
    Set {
        /// A group or channel (default: the organisation).
        #[arg(long)]
        conversation: Option<String>,
        /// Expiry of messages sent without one, seconds.
        #[arg(long)]
        default_expiry: Option<u64>,
        /// Longest expiry a message may ask for, seconds.
        #[arg(long)]
        max_expiry: Option<u64>,
        /// Devices per account (organisation only).
        #[arg(long)]
        max_devices: Option<u32>,
        /// Largest message or attachment chunk, bytes.
        #[arg(long)]
        max_attachment_bytes: Option<u64>,
        /// Who may start 1:1 chats: everyone, shared-group, nobody
        /// (organisation only).
        #[arg(long)]
        direct_chats: Option<String>,
    },
}

/// Prints rows as a table with aligned columns.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn kind_name(k: i32) -> &'static str {
    match v1::ConversationKind::try_from(k) {
        Ok(v1::ConversationKind::Direct) => "direct",
        Ok(v1::ConversationKind::Group) => "group",
        Ok(v1::ConversationKind::Channel) => "channel",
        _ => "?",
    }
}

fn role_name(r: i32) -> &'static str {
    match v1::Role::try_from(r) {
        Ok(v1::Role::Member) | Ok(v1::Role::Unspecified) => "member",
        Ok(v1::Role::Publisher) => "publisher",
        Ok(v1::Role::Admin) => "admin",
        Ok(v1::Role::Owner) => "owner",
        _ => "?",
    }
}

fn parse_role(s: &str) -> anyhow::Result<v1::Role> {
    Ok(match s {
        "member" => v1::Role::Member,
        "publisher" => v1::Role::Publisher,
        "admin" => v1::Role::Admin,
        "owner" => v1::Role::Owner,
        other => bail!("role {other:?} is not one of member, publisher, admin, owner"),
    })
}

fn member(account: &str, role: v1::Role) -> v1::Member {
    v1::Member {
        account_id: account.to_owned(),
        role: role as i32,
    }
}

fn account_json(a: &v1::Account) -> Value {
    json!({
        "account_id": a.account_id,
        "display_name": a.display_name,
        "created_at_ms": a.created_at_ms,
        "tags": a.tags,
        "suspended": a.suspended,
    })
}

fn device_json(d: &v1::Device) -> Value {
    json!({
        "device_id": d.device_id,
        "account_id": d.account_id,
        "public_key": hex::encode(&d.public_key),
        "revoked": d.revoked,
        "created_at_ms": d.created_at_ms,
    })
}

fn conversation_json(c: &v1::Conversation) -> Value {
    json!({
        "conversation_id": c.conversation_id,
        "kind": kind_name(c.kind),
        "title": c.title,
        "archived": c.archived,
        "default_ttl_seconds": c.default_ttl_seconds,
        "created_at_ms": c.created_at_ms,
        "member_count": c.member_count,
        "members": c.members.iter().map(|m| json!({
            "account_id": m.account_id,
            "role": role_name(m.role),
        })).collect::<Vec<_>>(),
    })
}

fn code_json(c: &v1::EnrollmentCode) -> Value {
    json!({
        "account_id": c.account_id,
        "display_name": c.display_name,
        "station": c.station,
        "code": c.code,
        "expires_at_ms": c.expires_at_ms,
    })
}

fn policy_json(p: Option<&v1::Policy>) -> Value {
    let Some(p) = p else { return Value::Null };
    json!({
        "default_expiry_seconds": p.default_expiry_seconds,
        "max_expiry_seconds": p.max_expiry_seconds,
        "max_devices": p.max_devices,
        "max_attachment_bytes": p.max_attachment_bytes,
        "direct_chats": match v1::DirectChats::try_from(p.direct_chats) {
            Ok(v1::DirectChats::Everyone) => Value::from("everyone"),
            Ok(v1::DirectChats::SharedGroup) => Value::from("shared-group"),
            Ok(v1::DirectChats::Nobody) => Value::from("nobody"),
            _ => Value::Null,
        },
    })
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn print_conversation(json_out: bool, c: &v1::Conversation) -> anyhow::Result<()> {
    if json_out {
        return print_json(&conversation_json(c));
    }
    println!(
        "{} ({}{}) {}",
        c.conversation_id,
        kind_name(c.kind),
        if c.archived { ", archived" } else { "" },
        c.title
    );
    let rows: Vec<Vec<String>> = c
        .members
        .iter()
        .map(|m| vec![m.account_id.clone(), role_name(m.role).to_owned()])
        .collect();
    table(&["member", "role"], &rows);
    Ok(())
}

fn print_accounts(accounts: &[v1::Account]) {
    let rows: Vec<Vec<String>> = accounts
        .iter()
        .map(|a| {
            vec![
                a.account_id.clone(),
                a.display_name.clone(),
                a.tags.join(","),
                if a.suspended { "suspended" } else { "active" }.to_owned(),
                roster::utc(a.created_at_ms),
            ]
        })
        .collect();
    table(
        &["account", "name", "tags", "state", "created (UTC)"],
        &rows,
    );
}

fn write_codes(
    codes: &[v1::EnrollmentCode],
    csv: Option<&PathBuf>,
    html: Option<&PathBuf>,
    png_dir: Option<&PathBuf>,
) -> anyhow::Result<()> {
    if let Some(p) = csv {
        std::fs::write(p, roster::codes_csv(codes))
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("{} codes written to {}", codes.len(), p.display());
    }
    if let Some(p) = html {
        std::fs::write(p, roster::codes_html(codes))
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("printable page with {} codes: {}", codes.len(), p.display());
    }
    if let Some(dir) = png_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for c in codes {
            let png = roster::qr_png(&c.code).map_err(anyhow::Error::msg)?;
            let p = dir.join(format!("{}.png", c.account_id));
            std::fs::write(&p, png).with_context(|| format!("writing {}", p.display()))?;
        }
        eprintln!("{} QR codes written to {}", codes.len(), dir.display());
    }
    Ok(())
}

pub(crate) async fn admin(cli: &Cli, cmd: &AdminCmd) -> anyhow::Result<()> {
    let mut a = admin_client(cli).await?;
    let j = cli.json;
    match cmd {
        AdminCmd::Whoami => {
            let o = a
                .who_am_i(v1::WhoAmIRequest {})
                .await
                .map_err(status)?
                .into_inner();
            let role = match v1::OperatorRole::try_from(o.role) {
                Ok(v1::OperatorRole::OrgAdmin) => "org-admin",
                Ok(v1::OperatorRole::GroupAdmin) => "group-admin",
                Ok(v1::OperatorRole::Auditor) => "auditor",
                _ => "?",
            };
            if j {
                print_json(&json!({"name": o.name, "role": role, "groups": o.groups}))?;
            } else {
                table(
                    &["operator", "role", "groups"],
                    &[vec![o.name, role.to_owned(), o.groups.join(",")]],
                );
            }
        }
        AdminCmd::Account { cmd } => account(&mut a, j, cmd).await?,
        AdminCmd::Devices { account } => {
            let r = a
                .list_devices(v1::ListDevicesRequest {
                    account_id: account.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            if j {
                print_json(&Value::from(
                    r.devices.iter().map(device_json).collect::<Vec<_>>(),
                ))?;
            } else {
                let rows: Vec<Vec<String>> = r
                    .devices
                    .iter()
                    .map(|d| {
                        vec![
                            d.device_id.clone(),
                            if d.revoked { "revoked" } else { "active" }.to_owned(),
                            roster::utc(d.created_at_ms),
                        ]
                    })
                    .collect();
                table(&["device", "state", "enrolled (UTC)"], &rows);
            }
        }
        AdminCmd::RegisterDevice {
            account,
            device,
            public_key,
        } => {
            let key = hex::decode(public_key.trim()).context("public_key is not hex")?;
            let d = a
                .register_device(v1::RegisterDeviceRequest {
                    account_id: account.clone(),
                    device_id: device.clone(),
                    public_key: key,
                })
                .await
                .map_err(status)?
                .into_inner();
            if j {
                print_json(&device_json(&d))?;
            } else {
                println!("device {} registered for {}", d.device_id, d.account_id);
            }
        }
        AdminCmd::Revoke { device } => {
            let d = a
                .revoke_device(v1::RevokeDeviceRequest {
                    device_id: device.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            if j {
                print_json(&device_json(&d))?;
            } else {
                println!("device {device} revoked");
            }
        }
        AdminCmd::Codes {
            accounts,
            tag,
            ttl_hours,
            only_new,
            csv,
            html,
            png_dir,
            qr,
        } => {
            let r = a
                .issue_enrollment_codes(v1::IssueEnrollmentCodesRequest {
                    account_ids: accounts.clone(),
                    tag: tag.clone().unwrap_or_default(),
                    ttl_seconds: ttl_hours.map_or(0, |h| h.saturating_mul(3600)),
                    only_without_devices: *only_new,
                })
                .await
                .map_err(status)?
                .into_inner();
            write_codes(&r.codes, csv.as_ref(), html.as_ref(), png_dir.as_ref())?;
            if j {
                print_json(&Value::from(
                    r.codes.iter().map(code_json).collect::<Vec<_>>(),
                ))?;
            } else {
                let rows: Vec<Vec<String>> = r
                    .codes
                    .iter()
                    .map(|c| {
                        vec![
                            c.account_id.clone(),
                            c.display_name.clone(),
                            c.station.clone(),
                            c.code.clone(),
                            roster::utc(c.expires_at_ms),
                        ]
                    })
                    .collect();
                table(
                    &["account", "name", "station", "code", "expires (UTC)"],
                    &rows,
                );
                if *qr {
                    for c in &r.codes {
                        println!("\n{} {}", c.account_id, c.code);
                        println!("{}", roster::qr_terminal(&c.code));
                    }
                }
            }
        }
        AdminCmd::Group {
            id,
            members,
            owners,
            title,
            ttl,
        } => {
            let mut ms: Vec<v1::Member> = members
                .iter()
                .map(|m| member(m, v1::Role::Member))
                .collect();
            ms.extend(owners.iter().map(|m| member(m, v1::Role::Owner)));
            let c = a
                .create_conversation(v1::CreateConversationRequest {
                    conversation_id: id.clone(),
                    kind: v1::ConversationKind::Group as i32,
                    title: title.clone(),
                    members: ms,
                    default_ttl_seconds: *ttl,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_conversation(j, &c)?;
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
            print_conversation(j, &c)?;
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
            print_conversation(j, &c)?;
        }
        AdminCmd::Conversations {
            page_size,
            after,
            all,
        } => {
            let mut token = after.clone().unwrap_or_default();
            let mut list = Vec::new();
            let next = loop {
                let r = a
                    .list_conversations(v1::ListConversationsRequest {
                        page_token: token.clone(),
                        page_size: *page_size,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                list.extend(r.conversations);
                if !*all || r.next_page_token.is_empty() {
                    break r.next_page_token;
                }
                token = r.next_page_token;
            };
            if j {
                print_json(&json!({
                    "conversations": list.iter().map(conversation_json).collect::<Vec<_>>(),
                    "next_page_token": next,
                }))?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|c| {
                        vec![
                            c.conversation_id.clone(),
                            kind_name(c.kind).to_owned(),
                            c.member_count.to_string(),
                            if c.archived { "archived" } else { "" }.to_owned(),
                            c.title.clone(),
                        ]
                    })
                    .collect();
                table(
                    &["conversation", "kind", "members", "state", "title"],
                    &rows,
                );
                if !next.is_empty() {
                    println!("(more: --after {next})");
                }
            }
        }
        AdminCmd::Rename { id, title } => {
            let c = update(&mut a, id, Some(title.clone()), None).await?;
            print_conversation(j, &c)?;
        }
        AdminCmd::Archive { id } => {
            let c = update(&mut a, id, None, Some(true)).await?;
            print_conversation(j, &c)?;
        }
        AdminCmd::Unarchive { id } => {
            let c = update(&mut a, id, None, Some(false)).await?;
            print_conversation(j, &c)?;
        }
        AdminCmd::AddMembers { id, accounts, role } => {
            let role = parse_role(role)?;
            let c = a
                .add_members(v1::AddMembersRequest {
                    conversation_id: id.clone(),
                    members: accounts.iter().map(|m| member(m, role)).collect(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_conversation(j, &c)?;
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
            print_conversation(j, &c)?;
        }
        AdminCmd::Show { id } => {
            let c = a
                .get_conversation(v1::GetConversationRequest {
                    conversation_id: id.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_conversation(j, &c)?;
        }
        AdminCmd::Policy { cmd } => policy(&mut a, j, cmd).await?,
        AdminCmd::Import {
            file,
            channels,
            group_prefix,
            batch,
            code_ttl_hours,
            codes_csv,
            codes_html,
            quiet,
        } => {
            let data =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let parsed = roster::parse_csv(&data)?;
            let n = parsed.rows.len() as u64;
            let bar = if *quiet || j {
                indicatif::ProgressBar::hidden()
            } else {
                let b = indicatif::ProgressBar::new(n);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40}] {pos}/{len} rows",
                ) {
                    b.set_style(style.progress_chars("=> "));
                }
                b
            };
            let start = tokio::time::Instant::now();
            let ttl = code_ttl_hours.map_or(0, |h| h.saturating_mul(3600));
            let mut total = roster::import_in_batches(
                parsed.rows,
                *batch,
                |rows| {
                    let mut a = a.clone();
                    let req = v1::ImportRosterRequest {
                        rows,
                        channels: channels.clone(),
                        group_prefix: group_prefix.clone(),
                        code_ttl_seconds: ttl,
                    };
                    async move { a.import_roster(req).await.map(tonic::Response::into_inner) }
                },
                |done| bar.set_position(done),
            )
            .await
            .map_err(status)?;
            bar.finish_and_clear();
            let secs = start.elapsed().as_secs_f64();
            total.failed += u32::try_from(parsed.errors.len()).unwrap_or(u32::MAX);
            total.errors.extend(parsed.errors);
            total.errors.sort_by_key(|e| e.line);
            write_codes(&total.codes, codes_csv.as_ref(), codes_html.as_ref(), None)?;
            if j {
                print_json(&json!({
                    "rows": n,
                    "created": total.created,
                    "unchanged": total.unchanged,
                    "failed": total.failed,
                    "conversations_created": total.conversations_created,
                    "codes": total.codes.len(),
                    "seconds": secs,
                    "errors": total.errors.iter().map(|e| json!({"line": e.line, "reason": e.reason})).collect::<Vec<_>>(),
                }))?;
            } else {
                table(
                    &[
                        "rows",
                        "created",
                        "unchanged",
                        "failed",
                        "groups/channels created",
                        "codes",
                        "seconds",
                    ],
                    &[vec![
                        n.to_string(),
                        total.created.to_string(),
                        total.unchanged.to_string(),
                        total.failed.to_string(),
                        total.conversations_created.to_string(),
                        total.codes.len().to_string(),
                        format!("{secs:.2}"),
                    ]],
                );
                if !total.errors.is_empty() {
                    println!();
                    let rows: Vec<Vec<String>> = total
                        .errors
                        .iter()
                        .map(|e| vec![e.line.to_string(), e.reason.clone()])
                        .collect();
                    table(&["line", "error"], &rows);
                }
            }
        }
        AdminCmd::Audit { limit, page_token } => {
            let r = a
                .list_audit_log(v1::ListAuditLogRequest {
                    page_token: page_token.clone().unwrap_or_default(),
                    page_size: *limit,
                })
                .await
                .map_err(status)?
                .into_inner();
            if j {
                print_json(&json!({
                    "entries": r.entries.iter().map(|e| json!({
                        "at_ms": e.at_ms, "operator": e.operator, "action": e.action,
                        "target": e.target, "outcome": e.outcome, "detail": e.detail,
                    })).collect::<Vec<_>>(),
                    "next_page_token": r.next_page_token,
                }))?;
            } else {
                let rows: Vec<Vec<String>> = r
                    .entries
                    .iter()
                    .map(|e| {
                        vec![
                            roster::utc(e.at_ms),
                            e.operator.clone(),
                            e.action.clone(),
                            e.target.clone(),
                            e.outcome.clone(),
                            e.detail.clone(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "when (UTC)",
                        "operator",
                        "action",
                        "target",
                        "outcome",
                        "detail",
                    ],
                    &rows,
                );
                if !r.next_page_token.is_empty() {
                    println!("(more: --page-token {})", r.next_page_token);
                }
            }
        }
    }
    Ok(())
}

async fn update(
    a: &mut super::Admin,
    id: &str,
    title: Option<String>,
    archived: Option<bool>,
) -> anyhow::Result<v1::Conversation> {
    Ok(a.update_conversation(v1::UpdateConversationRequest {
        conversation_id: id.to_owned(),
        title,
        archived,
    })
    .await
    .map_err(status)?
    .into_inner())
}

async fn account(a: &mut super::Admin, j: bool, cmd: &AccountCmd) -> anyhow::Result<()> {
    let show = |acc: &v1::Account| -> anyhow::Result<()> {
        if j {
            print_json(&account_json(acc))
        } else {
            print_accounts(std::slice::from_ref(acc));
            Ok(())
        }
    };
    match cmd {
        AccountCmd::Create { id, name, tags } => {
            let acc = a
                .create_account(v1::CreateAccountRequest {
                    account_id: id.clone(),
                    display_name: name.clone(),
                    tags: tags.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            if j {
                show(&acc)?;
            } else {
                println!("account {} created", acc.account_id);
            }
        }
        AccountCmd::Show { id } => {
            let acc = a
                .get_account(v1::GetAccountRequest {
                    account_id: id.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            show(&acc)?;
        }
        AccountCmd::List {
            tag,
            page_size,
            after,
            all,
        } => {
            let mut token = after.clone().unwrap_or_default();
            let mut list = Vec::new();
            let next = loop {
                let r = a
                    .list_accounts(v1::ListAccountsRequest {
                        tag: tag.clone().unwrap_or_default(),
                        page_token: token.clone(),
                        page_size: *page_size,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                list.extend(r.accounts);
                if !*all || r.next_page_token.is_empty() {
                    break r.next_page_token;
                }
                token = r.next_page_token;
            };
            if j {
                print_json(&json!({
                    "accounts": list.iter().map(account_json).collect::<Vec<_>>(),
                    "next_page_token": next,
                }))?;
            } else {
                print_accounts(&list);
                if !next.is_empty() {
                    println!("(more: --after {next})");
                }
            }
        }
        AccountCmd::Suspend { id } | AccountCmd::Resume { id } => {
            let acc = a
                .suspend_account(v1::SuspendAccountRequest {
                    account_id: id.clone(),
                    suspended: matches!(cmd, AccountCmd::Suspend { .. }),
                })
                .await
                .map_err(status)?
                .into_inner();
            show(&acc)?;
        }
        AccountCmd::Delete { id } => {
            let r = a
                .delete_account(v1::DeleteAccountRequest {
                    account_id: id.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            if j {
                print_json(&json!({
                    "devices_removed": r.devices_removed,
                    "memberships_removed": r.memberships_removed,
                }))?;
            } else {
                println!(
                    "account {id} deleted ({} devices, {} memberships removed)",
                    r.devices_removed, r.memberships_removed
                );
            }
        }
        AccountCmd::DeleteCohort { tag, dry_run, yes } => {
            if !*dry_run && !*yes {
                bail!("this deletes every account tagged {tag:?}: add --yes (or try --dry-run)");
            }
            let r = a
                .delete_accounts(v1::DeleteAccountsRequest {
                    tag: tag.clone(),
                    dry_run: *dry_run,
                })
                .await
                .map_err(status)?
                .into_inner();
            if j {
                print_json(&json!({
                    "dry_run": dry_run,
                    "accounts_deleted": r.accounts_deleted,
                    "devices_removed": r.devices_removed,
                    "memberships_removed": r.memberships_removed,
                }))?;
            } else if *dry_run {
                println!(
                    "{} accounts tagged {tag} would be deleted",
                    r.accounts_deleted
                );
            } else {
                println!(
                    "{} accounts tagged {tag} deleted ({} devices, {} memberships)",
                    r.accounts_deleted, r.devices_removed, r.memberships_removed
                );
            }
        }
    }
    Ok(())
}

async fn policy(a: &mut super::Admin, j: bool, cmd: &PolicyCmd) -> anyhow::Result<()> {
    let view = match cmd {
        PolicyCmd::Show { conversation } => a
            .get_policy(v1::GetPolicyRequest {
                conversation_id: conversation.clone().unwrap_or_default(),
            })
            .await
            .map_err(status)?
            .into_inner(),
        PolicyCmd::Set {
            conversation,
            default_expiry,
            max_expiry,
            max_devices,
            max_attachment_bytes,
            direct_chats,
        } => {
            let direct = match direct_chats.as_deref() {
                None => v1::DirectChats::Unspecified,
                Some("everyone") => v1::DirectChats::Everyone,
                Some("shared-group") => v1::DirectChats::SharedGroup,
                Some("nobody") => v1::DirectChats::Nobody,
                Some(other) => {
                    bail!("direct-chats {other:?} is not one of everyone, shared-group, nobody")
                }
            };
            a.set_policy(v1::SetPolicyRequest {
                conversation_id: conversation.clone().unwrap_or_default(),
                policy: Some(v1::Policy {
                    default_expiry_seconds: *default_expiry,
                    max_expiry_seconds: *max_expiry,
                    max_devices: *max_devices,
                    max_attachment_bytes: *max_attachment_bytes,
                    direct_chats: direct as i32,
                }),
            })
            .await
            .map_err(status)?
            .into_inner()
        }
    };
    let set = policy_json(view.set.as_ref());
    let eff = policy_json(view.effective.as_ref());
    if j {
        return print_json(&json!({
            "conversation_id": view.conversation_id,
            "set": set,
            "effective": eff,
        }));
    }
    let scope = if view.conversation_id.is_empty() {
        "organisation".to_owned()
    } else {
        view.conversation_id.clone()
    };
    println!("policy of {scope}");
    let keys = [
        "default_expiry_seconds",
        "max_expiry_seconds",
        "max_devices",
        "max_attachment_bytes",
        "direct_chats",
    ];
    let cell = |v: &Value, k: &str| match v.get(k) {
        None | Some(Value::Null) => "(inherited)".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| vec![(*k).to_owned(), cell(&set, k), cell(&eff, k)])
        .collect();
    table(&["setting", "set here", "enforced"], &rows);
    Ok(())
}
