//! What `herold admin` prints: tables for a person, JSON for scripts, and
//! the files of enrollment codes.

use std::path::PathBuf;

use anyhow::Context;
use herold_client::roster;
use herold_proto::v1;
use serde_json::{Value, json};

/// What a command prints: its result once as JSON (`--json`, for scripts)
/// and once for a person (tables and lines), through this one path.
pub(super) struct Output {
    json: Value,
    text: String,
}

impl Output {
    pub(super) fn new(json: Value, text: String) -> Self {
        Self { json, text }
    }

    pub(super) fn print(self, as_json: bool) -> anyhow::Result<()> {
        if as_json {
            println!("{}", serde_json::to_string_pretty(&self.json)?);
        } else {
            print!("{}", self.text);
        }
        Ok(())
    }
}

/// Rows as a table with aligned columns, one line each.
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut text = String::new();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        text.push_str(out.trim_end());
        text.push('\n');
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
    text
}

pub(super) fn kind_name(k: i32) -> &'static str {
    match v1::ConversationKind::try_from(k) {
        Ok(v1::ConversationKind::Direct) => "direct",
        Ok(v1::ConversationKind::Group) => "group",
        Ok(v1::ConversationKind::Channel) => "channel",
        _ => "?",
    }
}

pub(super) fn role_name(r: i32) -> &'static str {
    match v1::Role::try_from(r) {
        Ok(v1::Role::Member) | Ok(v1::Role::Unspecified) => "member",
        Ok(v1::Role::Publisher) => "publisher",
        Ok(v1::Role::Admin) => "admin",
        Ok(v1::Role::Owner) => "owner",
        _ => "?",
    }
}

pub(super) fn account_json(a: &v1::Account) -> Value {
    json!({
        "account_id": a.account_id,
        "display_name": a.display_name,
        "created_at_ms": a.created_at_ms,
        "tags": a.tags,
        "suspended": a.suspended,
    })
}

pub(super) fn device_json(d: &v1::Device) -> Value {
    json!({
        "device_id": d.device_id,
        "account_id": d.account_id,
        "public_key": hex::encode(&d.public_key),
        "revoked": d.revoked,
        "created_at_ms": d.created_at_ms,
    })
}

pub(super) fn conversation_json(c: &v1::Conversation) -> Value {
    json!({
        "conversation_id": c.conversation_id,
        "kind": kind_name(c.kind),
        "title": c.title,
        "archived": c.archived,
        "default_ttl_seconds": c.default_ttl_seconds,
        "created_at_ms": c.created_at_ms,
        "member_count": c.member_count,
        "sub_groups": c.sub_groups,
        "members": c.members.iter().map(|m| json!({
            "account_id": m.account_id,
            "role": role_name(m.role),
        })).collect::<Vec<_>>(),
    })
}

pub(super) fn code_json(c: &v1::EnrollmentCode) -> Value {
    json!({
        "account_id": c.account_id,
        "display_name": c.display_name,
        "station": c.station,
        "code": c.code,
        "expires_at_ms": c.expires_at_ms,
    })
}

pub(super) fn policy_json(p: Option<&v1::Policy>) -> Value {
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
        "sealed_sender": p.sealed_sender,
    })
}

pub(super) fn print_conversation(json_out: bool, c: &v1::Conversation) -> anyhow::Result<()> {
    let mut t = format!(
        "{} ({}{}{}) {}\n",
        c.conversation_id,
        kind_name(c.kind),
        if c.archived { ", archived" } else { "" },
        if c.sub_groups > 0 {
            format!(", {} sub-groups", c.sub_groups)
        } else {
            String::new()
        },
        c.title
    );
    let rows: Vec<Vec<String>> = c
        .members
        .iter()
        .map(|m| vec![m.account_id.clone(), role_name(m.role).to_owned()])
        .collect();
    t += &table(&["member", "role"], &rows);
    Output::new(conversation_json(c), t).print(json_out)
}

pub(super) fn accounts_table(accounts: &[v1::Account]) -> String {
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
    )
}

pub(super) fn write_codes(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_aligns_its_columns_and_leaves_no_trailing_space() {
        let t = table(
            &["account", "name"],
            &[
                vec!["alice".into(), "Alice".into()],
                vec!["bartholomew".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            "account      name\n-----------  -----\nalice        Alice\nbartholomew\n"
        );
    }
}
