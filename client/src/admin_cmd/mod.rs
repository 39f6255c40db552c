//! `herold admin ...`: every admin API call from the command line. Tables by
//! default, `--json` for scripts.

use std::fmt::Write as _;

use anyhow::{Context, bail};
use herold_client::roster;
use herold_proto::v1;
use serde_json::{Value, json};

use super::{Cli, admin_client, status};

mod args;
mod audit;
mod output;

pub(crate) use args::{AccountCmd, AdminCmd, AuditCmd, PolicyCmd};
use output::*;

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

/// A listing from the page `first` on: that page, or with `all` every page
/// to the end; the items and the token of the next page (empty at the end).
async fn pages<T, Fut>(
    first: String,
    all: bool,
    mut page: impl FnMut(String) -> Fut,
) -> anyhow::Result<(Vec<T>, String)>
where
    Fut: Future<Output = anyhow::Result<(Vec<T>, String)>>,
{
    let mut token = first;
    let mut items = Vec::new();
    loop {
        let (got, next) = page(token).await?;
        items.extend(got);
        if !all || next.is_empty() {
            return Ok((items, next));
        }
        token = next;
    }
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
            let json = json!({"name": o.name, "role": role, "groups": o.groups});
            let mut t = String::new();
            t += &table(
                &["operator", "role", "groups"],
                &[vec![o.name, role.to_owned(), o.groups.join(",")]],
            );
            Output::new(json, t).print(j)?;
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
            let json = Value::from(r.devices.iter().map(device_json).collect::<Vec<_>>());
            let mut t = String::new();
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
            t += &table(&["device", "state", "enrolled (UTC)"], &rows);
            Output::new(json, t).print(j)?;
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
            let json = device_json(&d);
            let mut t = String::new();
            writeln!(t, "device {} registered for {}", d.device_id, d.account_id)?;
            Output::new(json, t).print(j)?;
        }
        AdminCmd::Revoke { device } => {
            let d = a
                .revoke_device(v1::RevokeDeviceRequest {
                    device_id: device.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            let json = device_json(&d);
            let mut t = String::new();
            writeln!(t, "device {device} revoked")?;
            Output::new(json, t).print(j)?;
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
            let json = Value::from(r.codes.iter().map(code_json).collect::<Vec<_>>());
            let mut t = String::new();
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
            t += &table(
                &["account", "name", "station", "code", "expires (UTC)"],
                &rows,
            );
            if *qr {
                for c in &r.codes {
                    writeln!(t, "\n{} {}", c.account_id, c.code)?;
                    writeln!(t, "{}", roster::qr_terminal(&c.code))?;
                }
            }
            Output::new(json, t).print(j)?;
        }
        AdminCmd::Group {
            id,
            members,
            owners,
            title,
            ttl,
        } => {
            let ms = [(members, v1::Role::Member), (owners, v1::Role::Owner)];
            let c = create(&mut a, id, v1::ConversationKind::Group, title, &ms, *ttl, 0).await?;
            print_conversation(j, &c)?;
        }
        AdminCmd::Channel {
            id,
            publishers,
            members,
            title,
            sub_groups,
        } => {
            let ms = [
                (publishers, v1::Role::Publisher),
                (members, v1::Role::Member),
            ];
            let kind = v1::ConversationKind::Channel;
            let c = create(&mut a, id, kind, title, &ms, 0, *sub_groups).await?;
            print_conversation(j, &c)?;
        }
        AdminCmd::Direct { id, a: x, b: y } => {
            let both = vec![x.clone(), y.clone()];
            let ms = [(&both, v1::Role::Member)];
            let c = create(&mut a, id, v1::ConversationKind::Direct, "", &ms, 0, 0).await?;
            print_conversation(j, &c)?;
        }
        AdminCmd::Conversations {
            page_size,
            after,
            all,
        } => {
            let (list, next) = pages(after.clone().unwrap_or_default(), *all, |token| {
                let mut a = a.clone();
                let req = v1::ListConversationsRequest {
                    page_token: token,
                    page_size: *page_size,
                };
                async move {
                    let r = a.list_conversations(req).await.map_err(status)?;
                    let r = r.into_inner();
                    Ok((r.conversations, r.next_page_token))
                }
            })
            .await?;
            let json = json!({
                "conversations": list.iter().map(conversation_json).collect::<Vec<_>>(),
                "next_page_token": next,
            });
            let mut t = String::new();
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
            t += &table(
                &["conversation", "kind", "members", "state", "title"],
                &rows,
            );
            if !next.is_empty() {
                writeln!(t, "(more: --after {next})")?;
            }
            Output::new(json, t).print(j)?;
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
            let json = json!({
                "rows": n,
                "created": total.created,
                "unchanged": total.unchanged,
                "failed": total.failed,
                "conversations_created": total.conversations_created,
                "codes": total.codes.len(),
                "seconds": secs,
                "errors": total.errors.iter().map(|e| json!({"line": e.line, "reason": e.reason})).collect::<Vec<_>>(),
            });
            let mut t = String::new();
            t += &table(
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
                t.push('\n');
                let rows: Vec<Vec<String>> = total
                    .errors
                    .iter()
                    .map(|e| vec![e.line.to_string(), e.reason.clone()])
                    .collect();
                t += &table(&["line", "error"], &rows);
            }
            Output::new(json, t).print(j)?;
        }
        AdminCmd::Audit {
            check: Some(AuditCmd::Verify { expect_head }),
            ..
        } => audit::verify(&mut a, expect_head, j).await?,
        AdminCmd::Audit {
            check: None,
            limit,
            page_token,
        } => {
            let r = a
                .list_audit_log(v1::ListAuditLogRequest {
                    page_token: page_token.clone().unwrap_or_default(),
                    page_size: *limit,
                })
                .await
                .map_err(status)?
                .into_inner();
            let json = json!({
                "entries": r.entries.iter().map(|e| json!({
                    "at_ms": e.at_ms, "operator": e.operator, "action": e.action,
                    "target": e.target, "outcome": e.outcome, "detail": e.detail,
                    "id": e.id, "chain_seq": e.chain_seq,
                })).collect::<Vec<_>>(),
                "next_page_token": r.next_page_token,
            });
            let mut t = String::new();
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
            t += &table(
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
                writeln!(t, "(more: --page-token {})", r.next_page_token)?;
            }
            Output::new(json, t).print(j)?;
        }
    }
    Ok(())
}

/// Creates a conversation with these accounts in these roles.
async fn create(
    a: &mut super::Admin,
    id: &str,
    kind: v1::ConversationKind,
    title: &str,
    members: &[(&Vec<String>, v1::Role)],
    default_ttl_seconds: u64,
    sub_groups: u32,
) -> anyhow::Result<v1::Conversation> {
    let members = members
        .iter()
        .flat_map(|(accounts, role)| accounts.iter().map(|m| member(m, *role)))
        .collect();
    let req = v1::CreateConversationRequest {
        conversation_id: id.to_owned(),
        kind: kind as i32,
        title: title.to_owned(),
        members,
        default_ttl_seconds,
        sub_groups,
    };
    Ok(a.create_conversation(req)
        .await
        .map_err(status)?
        .into_inner())
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
    let show = |acc: &v1::Account| {
        Output::new(account_json(acc), accounts_table(std::slice::from_ref(acc))).print(j)
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
            let t = format!("account {} created\n", acc.account_id);
            Output::new(account_json(&acc), t).print(j)?;
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
            let (list, next) = pages(after.clone().unwrap_or_default(), *all, |token| {
                let mut a = a.clone();
                let req = v1::ListAccountsRequest {
                    tag: tag.clone().unwrap_or_default(),
                    page_token: token,
                    page_size: *page_size,
                };
                async move {
                    let r = a.list_accounts(req).await.map_err(status)?;
                    let r = r.into_inner();
                    Ok((r.accounts, r.next_page_token))
                }
            })
            .await?;
            let json = json!({
                "accounts": list.iter().map(account_json).collect::<Vec<_>>(),
                "next_page_token": next,
            });
            let mut t = accounts_table(&list);
            if !next.is_empty() {
                writeln!(t, "(more: --after {next})")?;
            }
            Output::new(json, t).print(j)?;
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
        AccountCmd::RevokeCodes { id } => {
            let acc = a
                .revoke_enrollment_codes(v1::RevokeEnrollmentCodesRequest {
                    account_id: id.clone(),
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
            let json = json!({
                "devices_removed": r.devices_removed,
                "memberships_removed": r.memberships_removed,
            });
            let mut t = String::new();
            writeln!(
                t,
                "account {id} deleted ({} devices, {} memberships removed)",
                r.devices_removed, r.memberships_removed
            )?;
            Output::new(json, t).print(j)?;
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
            let json = json!({
                "dry_run": dry_run,
                "accounts_deleted": r.accounts_deleted,
                "devices_removed": r.devices_removed,
                "memberships_removed": r.memberships_removed,
            });
            let t = if *dry_run {
                format!(
                    "{} accounts tagged {tag} would be deleted\n",
                    r.accounts_deleted
                )
            } else {
                format!(
                    "{} accounts tagged {tag} deleted ({} devices, {} memberships)\n",
                    r.accounts_deleted, r.devices_removed, r.memberships_removed
                )
            };
            Output::new(json, t).print(j)?;
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
            sealed_sender,
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
                    sealed_sender: *sealed_sender,
                }),
            })
            .await
            .map_err(status)?
            .into_inner()
        }
    };
    let set = policy_json(view.set.as_ref());
    let eff = policy_json(view.effective.as_ref());
    let json = json!({
        "conversation_id": view.conversation_id,
        "set": set,
        "effective": eff,
    });
    let scope = if view.conversation_id.is_empty() {
        "organisation".to_owned()
    } else {
        view.conversation_id.clone()
    };
    let mut t = format!("policy of {scope}\n");
    let keys = [
        "default_expiry_seconds",
        "max_expiry_seconds",
        "max_devices",
        "max_attachment_bytes",
        "direct_chats",
        "sealed_sender",
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
    t += &table(&["setting", "set here", "enforced"], &rows);
    Output::new(json, t).print(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing of 5 items in pages of 2, as the admin API pages them.
    async fn page(token: String) -> anyhow::Result<(Vec<u32>, String)> {
        let from: u32 = if token.is_empty() { 0 } else { token.parse()? };
        let items: Vec<u32> = (from..5).take(2).collect();
        let next = match items.last() {
            Some(&last) if last + 1 < 5 => (last + 1).to_string(),
            _ => String::new(),
        };
        Ok((items, next))
    }

    #[tokio::test]
    async fn pages_reads_one_page_or_all_of_them() {
        assert_eq!(
            pages(String::new(), false, page).await.unwrap(),
            (vec![0, 1], "2".to_owned())
        );
        assert_eq!(
            pages("2".into(), true, page).await.unwrap(),
            (vec![2, 3, 4], String::new())
        );
        assert_eq!(
            pages(String::new(), true, page).await.unwrap(),
            (vec![0, 1, 2, 3, 4], String::new())
        );
    }
}
