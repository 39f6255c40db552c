//! `herold admin audit verify`: the audit log's hash chain, checked on the
//! operator's machine (docs/admin.md, "A tamper-evident audit log").

use std::fmt::Write as _;

use anyhow::{Context, bail};
use herold_proto::v1;
use serde_json::json;

use super::Output;
use crate::{Admin, status};

pub(super) async fn verify(
    a: &mut Admin,
    expect_head: Option<&str>,
    j: bool,
) -> anyhow::Result<()> {
    let expect =
        match expect_head {
            Some(h) => Some(herold_proto::audit::parse_head(h).with_context(|| {
                format!("--expect-head {h:?} is not <position>:<64 hex digits>")
            })?),
            None => None,
        };
    // A listing that raced an append can miss that entry once; a
    // broken chain stays broken.
    let mut verdict = verify_once(a, expect).await?;
    if verdict.is_err() {
        verdict = verify_once(a, expect).await?;
    }
    match verdict {
        Ok(c) => {
            let json = json!({
                "intact": true,
                "first": c.head.first,
                "head": c.head.to_string(),
                "chained": c.chained,
                "unchained": c.unchained,
            });
            let mut t = format!(
                "the audit log is intact: entries {}..={} chained\nhead: {}\n",
                c.head.first, c.head.seq, c.head
            );
            if c.unchained > 0 {
                writeln!(
                    t,
                    "({} entries from before the chain are not checked)",
                    c.unchained
                )?;
            }
            Output::new(json, t).print(j)?;
        }
        Err(b) => bail!("the audit log was tampered with: {b}"),
    }
    Ok(())
}

/// Reads every page of the audit log and checks the chain.
async fn verify_once(
    a: &mut Admin,
    expect: Option<(u64, [u8; 32])>,
) -> anyhow::Result<Result<herold_client::admin::AuditCheck, herold_proto::audit::Break>> {
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = a
            .list_audit_log(v1::ListAuditLogRequest {
                page_token: page_token.clone(),
                page_size: 1000,
            })
            .await
            .map_err(status)?
            .into_inner();
        entries.extend(r.entries);
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    Ok(herold_client::admin::verify_audit_log(&entries, expect))
}
