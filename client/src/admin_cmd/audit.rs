//! `herold admin audit verify`: the audit log's hash chains (one per relay),
//! checked on the operator's machine (docs/admin.md, "A tamper-evident
//! audit log").

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, bail};
use herold_client::admin::{AuditCheck, ChainBroken, verify_audit_log};
use herold_proto::v1;
use serde_json::json;

use super::Output;
use crate::{Admin, status};

/// Heads recorded earlier, as `<chain>=<position>:<hash>`.
fn parse_expected(heads: &[String]) -> anyhow::Result<BTreeMap<String, (u64, [u8; 32])>> {
    heads
        .iter()
        .map(|h| {
            let parsed = h.split_once('=').and_then(|(chain, head)| {
                herold_proto::audit::parse_head(head).map(|p| (chain.to_owned(), p))
            });
            parsed.with_context(|| {
                format!("--expect-head {h:?} is not <chain>=<position>:<64 hex digits>")
            })
        })
        .collect()
}

pub(super) async fn verify(a: &mut Admin, expect_heads: &[String], j: bool) -> anyhow::Result<()> {
    let expect = parse_expected(expect_heads)?;
    // A listing that raced an append can miss that entry once; a broken
    // chain stays broken.
    let mut verdict = verify_once(a, &expect).await?;
    if verdict.is_err() {
        verdict = verify_once(a, &expect).await?;
    }
    let c = match verdict {
        Ok(c) => c,
        Err(b) => bail!("the audit log was tampered with: {b}"),
    };
    let heads: Vec<String> = c
        .heads
        .iter()
        .map(|(chain, h)| format!("{chain}={h}"))
        .collect();
    let json = json!({
        "intact": true,
        "chains": c.heads.iter().map(|(chain, h)| json!({
            "chain": chain, "first": h.first, "last": h.seq, "head": format!("{chain}={h}"),
        })).collect::<Vec<_>>(),
        "chained": c.chained,
        "unchained": c.unchained,
    });
    let mut t = format!(
        "the audit log is intact: {} entries in {} chain(s)\n",
        c.chained,
        c.heads.len()
    );
    for (chain, h) in &c.heads {
        writeln!(t, "chain {chain}: entries {}..={}", h.first, h.seq)?;
    }
    if c.unchained > 0 {
        writeln!(
            t,
            "({} entries from before the chains are not checked)",
            c.unchained
        )?;
    }
    writeln!(
        t,
        "keep for the next check: {}",
        heads
            .iter()
            .map(|h| format!("--expect-head {h}"))
            .collect::<Vec<_>>()
            .join(" ")
    )?;
    Output::new(json, t).print(j)?;
    Ok(())
}

/// Reads every page of the audit log and checks the chains.
async fn verify_once(
    a: &mut Admin,
    expect: &BTreeMap<String, (u64, [u8; 32])>,
) -> anyhow::Result<Result<AuditCheck, ChainBroken>> {
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
    Ok(verify_audit_log(&entries, expect))
}

#[cfg(test)]
mod tests {
    use super::parse_expected;

    #[test]
    fn expected_heads_name_their_chain() {
        let hash = "ab".repeat(32);
        let got = parse_expected(&[format!("relay-1=7:{hash}")]).unwrap();
        assert_eq!(got["relay-1"].0, 7);
        for bad in ["7:00", "relay-1=7", &format!("relay-1={hash}")] {
            let e = parse_expected(&[bad.to_owned()]).unwrap_err();
            assert!(e.to_string().contains("<chain>="), "{e}");
        }
    }
}
