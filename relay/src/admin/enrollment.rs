//! One-time enrollment codes: issued by operators (service `Admin`),
//! redeemed by devices (service `Enrollment`).

use std::time::Instant;

use tonic::Code;

use super::*;
use crate::codes::{code_hash, new_code};
use crate::metrics as m;

impl AdminService {
    /// Voids the account's codes issued before `from_ms` (see
    /// `AccountState::codes_valid_from_ms`); never moves that time back.
    async fn void_codes_before(&self, account_id: &str, from_ms: i64) -> Result<(), Status> {
        let store = &self.node.store;
        let state = store
            .account_state(account_id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no account {account_id:?}")))?;
        if state.codes_valid_from_ms >= from_ms {
            return Ok(());
        }
        store
            .set_account_state(
                account_id,
                AccountState {
                    codes_valid_from_ms: from_ms,
                    ..state
                },
            )
            .await
            .map_err(store_status)
    }

    /// Issues a code for an account and returns it for printing; the
    /// account's earlier codes are void from now on (one valid code per
    /// account: a reprinted letter replaces the lost one).
    pub(super) async fn issue_code(
        &self,
        account: &herold_store::Account,
        ttl_seconds: u64,
        station: &str,
    ) -> Result<v1::EnrollmentCode, Status> {
        let (code, hash) = new_code().map_err(Status::internal)?;
        let now = now_ms();
        // Void first: if issuing fails after, the operator issues again;
        // the other way round, a failure would leave two codes valid.
        self.void_codes_before(&account.id, now).await?;
        let expires_at_ms =
            now.saturating_add(i64::try_from(ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX));
        self.node
            .store
            .create_enrollment_code(crate::codes::stored(hash, account, now, expires_at_ms))
            .await
            .map_err(store_status)?;
        Ok(v1::EnrollmentCode {
            account_id: account.id.clone(),
            display_name: account.display_name.clone(),
            code,
            expires_at_ms,
            station: station.to_owned(),
        })
    }

    /// RevokeEnrollmentCodes: every code issued so far for the account is
    /// void (a letter went astray); a new one can be issued after.
    pub(super) async fn revoke_enrollment_codes(
        &self,
        req: Request<v1::RevokeEnrollmentCodesRequest>,
    ) -> Result<Response<v1::Account>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        self.audited(
            &op,
            "RevokeEnrollmentCodes",
            Need::Org,
            &r.account_id,
            String::new(),
            async {
                check_id("account", &r.account_id)?;
                self.void_codes_before(&r.account_id, now_ms().saturating_add(1))
                    .await?;
                self.account(&r.account_id).await
            },
        )
        .await
    }

    /// A code for one account (none if it has devices and
    /// `only_without_devices`), with its station for printing.
    pub(super) async fn code_for(
        &self,
        a: herold_store::Account,
        ttl: u64,
        only_without_devices: bool,
    ) -> Result<Option<v1::EnrollmentCode>, Status> {
        let store = &self.node.store;
        if only_without_devices
            && !store
                .list_devices(&a.id)
                .await
                .map_err(store_status)?
                .is_empty()
        {
            return Ok(None);
        }
        // The station, for printing: the first group's title.
        let mut station = String::new();
        for c in store.conversations_of(&a.id).await.map_err(store_status)? {
            if let Some(conv) = store.get_conversation(&c).await.map_err(store_status)?
                && conv.kind == ConversationKind::Group
            {
                station = conv.title;
                break;
            }
        }
        self.issue_code(&a, ttl, &station).await.map(Some)
    }

    pub(super) async fn issue_enrollment_codes(
        &self,
        req: Request<v1::IssueEnrollmentCodesRequest>,
    ) -> Result<Response<v1::IssueEnrollmentCodesResponse>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let target = if r.tag.is_empty() {
            r.account_ids.join(",")
        } else {
            r.tag.clone()
        };
        self.audited_then(
            &op,
            "IssueEnrollmentCodes",
            Need::Org,
            &target,
            async {
                let ttl = match r.ttl_seconds {
                    0 => CODE_TTL_DEFAULT,
                    t if t > CODE_TTL_MAX => {
                        return Err(Status::invalid_argument(format!(
                            "ttl_seconds {t} is above the maximum of {CODE_TTL_MAX} (30 days)"
                        )));
                    }
                    t => t,
                };
                if r.account_ids.is_empty() && r.tag.is_empty() {
                    return Err(Status::invalid_argument("give account_ids or a tag"));
                }
                for a in &r.account_ids {
                    check_id("account", a)?;
                }
                let store = &self.node.store;
                let mut accounts = Vec::new();
                for a in &r.account_ids {
                    accounts.push(
                        store
                            .get_account(a)
                            .await
                            .map_err(store_status)?
                            .ok_or_else(|| Status::not_found(format!("no account {a:?}")))?,
                    );
                }
                if !r.tag.is_empty() {
                    check_id("tag", &r.tag)?;
                    let mut after: Option<String> = None;
                    loop {
                        let page = store
                            .list_accounts(Some(&r.tag), after.as_deref(), PAGE_MAX as usize)
                            .await
                            .map_err(store_status)?;
                        accounts.extend(page.items);
                        match page.next {
                            Some(n) => after = Some(n),
                            None => break,
                        }
                    }
                }
                let only_without_devices = r.only_without_devices;
                let futs: Vec<_> = accounts
                    .into_iter()
                    .map(|a| {
                        let this = self.clone();
                        async move { this.code_for(a, ttl, only_without_devices).await }
                    })
                    .collect();
                let results: Vec<Result<Option<v1::EnrollmentCode>, Status>> =
                    futures_util::stream::iter(futs)
                        .buffered(BULK_CONCURRENCY)
                        .collect()
                        .await;

                let mut codes = Vec::new();
                for res in results {
                    if let Some(c) = res? {
                        codes.push(c);
                    }
                }
                Ok(v1::IssueEnrollmentCodesResponse { codes })
            },
            |result| match result {
                Ok(o) => format!("codes={}", o.codes.len()),
                Err(_) => String::new(),
            },
        )
        .await
    }
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        req: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let from = req.remote_addr().map(|a| a.ip());
        self.redeem(from, req.into_inner()).await.map(Response::new)
    }
}

impl EnrollmentService {
    /// The service on the node's state (its failure limits shared with
    /// every other way in: the gRPC service and the web listener).
    pub(crate) fn new(node: Arc<AdminNode>) -> Self {
        Self { node }
    }

    /// Redeems a one-time code for the device in `r`, asked from the
    /// address `from`.
    pub(crate) async fn redeem(
        &self,
        from: Option<std::net::IpAddr>,
        r: v1::EnrollRequest,
    ) -> Result<v1::Device, Status> {
        // Per address: an office or a carrier's NAT is one address, so
        // only failures count, and only those that are the caller's.
        let from = from.map_or_else(String::new, |ip| {
            crate::admission::address_key(ip).to_string()
        });
        let at = Instant::now();
        if let Err(wait) = self.node.enroll_failures.peek(&from, at) {
            metrics::counter!(m::ENROLL_RATE_LIMITED).increment(1);
            return Err(Status::resource_exhausted(format!(
                "too many failed enrollments from this address; try again in {} ms",
                wait.as_millis().max(1)
            )));
        }
        let result = async {
            check_id("device", &r.device_id)?;
            valid_public_key(&r.public_key)?;
            if r.code.trim().is_empty() || r.code.len() > 64 {
                return Err(Status::invalid_argument("code is empty or too long"));
            }
            let store = &self.node.store;
            let org = store
                .get_policy(PolicyScope::Org)
                .await
                .map_err(store_status)?;
            let limit = Effective::org(&self.node.limits, org.as_ref()).max_devices;
            let device = herold_store::Device {
                id: r.device_id.clone(),
                account_id: String::new(),
                public_key: r.public_key,
                revoked: false,
                created_at_ms: now_ms(),
            };
            // No enrollment without a record (see `audit`).
            record_audit(
                &self.node,
                "device",
                "Enroll",
                &r.device_id,
                STARTED.into(),
                String::new(),
            )
            .await
            .map_err(|e| audit_unavailable(&e))?;
            let d = store
                .redeem_enrollment_code(&code_hash(&r.code), device, now_ms(), limit)
                .await
                .map_err(store_status)?;
            devices_changed(&self.node, &d.account_id).await;
            Ok(device_to(d))
        }
        .await;
        let (operator, detail) = match &result {
            Ok(d) => (
                format!("device:{}", d.device_id),
                format!("account={}", d.account_id),
            ),
            Err(_) => ("device".to_owned(), String::new()),
        };
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        // A guesser's failures: a wrong or used code, or input that is
        // not even well-formed. A valid code refused by policy (the device
        // limit) or a store that did not answer is not the caller's doing.
        if let Err(s) = &result
            && matches!(s.code(), Code::Unauthenticated | Code::InvalidArgument)
        {
            let _ = self.node.enroll_failures.take(&from, at);
        }
        let _ = record_audit(
            &self.node,
            &operator,
            "Enroll",
            &r.device_id,
            outcome,
            detail,
        )
        .await;
        result
    }
}
