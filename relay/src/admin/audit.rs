//! The audit log: every call recorded, and read back.

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
        let result = match authorize(op, action, need) {
            Ok(()) => run.await,
            Err(e) => Err(e),
        };
        let detail = detail(&result);
        self.audit(op, action, target, detail, &result).await;
        result.map(Response::new)
    }

    /// Records one call in the audit log; a failure to record is logged.
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
        record_audit(&self.node, &op.name, action, target, outcome, detail).await;
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
                        })
                        .collect(),
                    next_page_token,
                })
            },
        )
        .await
    }
}

pub(super) async fn record_audit(
    node: &AdminNode,
    operator: &str,
    action: &str,
    target: &str,
    outcome: String,
    detail: String,
) {
    let entry = AuditEntry {
        at_ms: now_ms(),
        id: random_id(),
        operator: operator.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        outcome,
        detail,
    };
    if let Err(e) = node.store.append_audit(entry).await {
        tracing::warn!(error = %e, action, "writing the audit log failed");
    }
}
