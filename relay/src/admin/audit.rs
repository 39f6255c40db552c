//! The audit log: every call recorded, and read back.
//!
//! No change without a record: a call that changes something (it needs
//! more than [`Need::Read`] or [`Need::AuditRead`]) is recorded as
//! `started` before it runs, and refused `UNAVAILABLE` if that cannot be
//! written; its outcome is recorded after. A read is recorded after it ran.
//! Failed operator authentications are recorded too, a row at most every
//! [`AUTH_FAILURE_ROWS`] with how many there were
//! ([`record_auth_failures`]).

use super::*;

impl AdminService {
    /// The skeleton of every audited call: `op` authorised for `action` by
    /// `need`, then `run`, then one audit record with `target` and `detail`
    /// whatever the outcome (a refusal is recorded too).
    pub(super) async fn audited<T>(
        &self,
        op: &Operator,
        action: &str,
        need: Need<'_>,
        target: &str,
        detail: String,
        run: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        self.audited_then(op, action, need, target, run, |_| detail)
            .await
    }

    /// As [`Self::audited`], with the detail taken from the outcome.
    pub(super) async fn audited_then<T>(
        &self,
        op: &Operator,
        action: &str,
        need: Need<'_>,
        target: &str,
        run: impl Future<Output = Result<T, Status>>,
        detail: impl FnOnce(&Result<T, Status>) -> String,
    ) -> Result<Response<T>, Status> {
        let changes = matches!(need, Need::Group(_) | Need::Org);
        let result = match authorize(op, action, need) {
            Ok(()) if changes => {
                match record_audit(
                    &self.node,
                    &op.name,
                    action,
                    target,
                    STARTED.into(),
                    String::new(),
                )
                .await
                {
                    Ok(()) => run.await,
                    Err(e) => Err(audit_unavailable(&e)),
                }
            }
            Ok(()) => run.await,
            Err(e) => Err(e),
        };
        let detail = detail(&result);
        self.audit(op, action, target, detail, &result).await;
        result.map(Response::new)
    }

    /// Records the outcome of a call in the audit log; a failure to record
    /// it is logged and counted (a change's `started` row stands).
    async fn audit<T>(
        &self,
        op: &Operator,
        action: &str,
        target: &str,
        detail: String,
        result: &Result<T, Status>,
    ) {
        let outcome = match result {
            Ok(_) => "ok".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        let _ = record_audit(&self.node, &op.name, action, target, outcome, detail).await;
    }

    pub(super) async fn list_audit_log(
        &self,
        req: Request<v1::ListAuditLogRequest>,
    ) -> Result<Response<v1::ListAuditLogResponse>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        // Reading the audit log is itself an audited action.
        self.audited(
            &op,
            "ListAuditLog",
            Need::AuditRead,
            "",
            String::new(),
            async {
                let (before_ms, before_id) = if r.page_token.is_empty() {
                    (now_ms().saturating_add(1), String::new())
                } else {
                    let (ms, id) = r
                        .page_token
                        .split_once(':')
                        .ok_or_else(|| Status::invalid_argument("page_token is malformed"))?;
                    let ms: i64 = ms
                        .parse()
                        .map_err(|_| Status::invalid_argument("page_token is malformed"))?;
                    (ms, id.to_owned())
                };
                let limit = page_size(r.page_size);
                let entries = self
                    .node
                    .store
                    .list_audit(before_ms, &before_id, limit)
                    .await
                    .map_err(store_status)?;
                let next_page_token = if entries.len() >= limit {
                    entries
                        .last()
                        .map(|e| format!("{}:{}", e.at_ms, e.id))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                Ok(v1::ListAuditLogResponse {
                    entries: entries
                        .into_iter()
                        .map(|e| v1::AuditEntry {
                            at_ms: e.at_ms,
                            operator: e.operator,
                            action: e.action,
                            target: e.target,
                            outcome: e.outcome,
                            detail: e.detail,
                            id: e.id,
                            chain_seq: e.chain_seq,
                            hash: e.hash,
                            chain: e.chain,
                        })
                        .collect(),
                    next_page_token,
                })
            },
        )
        .await
    }
}

/// The outcome of a change's first row, written before it runs.
pub(super) const STARTED: &str = "started";

/// A change refused because its `started` row could not be written.
pub(super) fn audit_unavailable(e: &StoreError) -> Status {
    Status::unavailable(format!(
        "the audit log cannot be written ({e}); nothing was changed; retry"
    ))
}

/// How often failed operator authentications make an audit row, at most.
pub(super) const AUTH_FAILURE_ROWS: std::time::Duration = std::time::Duration::from_secs(10);

/// Records failed operator authentications (sent by the admin API's
/// interceptor, which cannot wait for the store) until `failures` closes:
/// the first after a quiet spell at once, the rest counted into one row
/// every [`AUTH_FAILURE_ROWS`], so a flood of bad tokens costs a row every
/// 10 s, not a row each.
pub(crate) async fn record_auth_failures(
    node: Arc<AdminNode>,
    mut failures: tokio::sync::mpsc::Receiver<String>,
) {
    let mut last_row: Option<tokio::time::Instant> = None;
    let mut counted: u64 = 0;
    let mut why = String::new();
    loop {
        let due = match (counted, last_row) {
            (0, _) | (_, None) => None,
            (_, Some(t)) => Some(t + AUTH_FAILURE_ROWS),
        };
        tokio::select! {
            f = failures.recv() => {
                let Some(f) = f else { break };
                counted += 1;
                why = f;
                if last_row.is_some_and(|t| t.elapsed() < AUTH_FAILURE_ROWS) {
                    continue;
                }
            }
            () = async {
                match due {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let detail = format!("{counted} failed; last: {why}");
        let _ = record_audit(
            &node,
            "unauthenticated",
            "Authenticate",
            "",
            format!("{:?}", tonic::Code::Unauthenticated),
            detail,
        )
        .await;
        last_row = Some(tokio::time::Instant::now());
        counted = 0;
    }
}

pub(super) async fn record_audit(
    node: &AdminNode,
    operator: &str,
    action: &str,
    target: &str,
    outcome: String,
    detail: String,
) -> Result<(), StoreError> {
    let entry = AuditEntry {
        at_ms: now_ms(),
        id: random_id(),
        operator: operator.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        outcome,
        detail,
        chain: node.node_id.clone(),
        chain_seq: 0,
        hash: Vec::new(),
    };
    node.store.append_audit(entry).await.inspect_err(|e| {
        metrics::counter!(crate::metrics::AUDIT_WRITE_FAILURES).increment(1);
        tracing::warn!(error = %e, action, "writing the audit log failed");
    })
}
