//! Accounts: create, read, list, suspend, delete (one or many).

use super::*;

impl AdminService {
    pub(super) async fn account(&self, id: &str) -> Result<v1::Account, Status> {
        let store = &self.node.store;
        let a = store
            .get_account(id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no account {id:?}")))?;
        let s = store
            .account_state(id)
            .await
            .map_err(store_status)?
            .unwrap_or_default();
        Ok(account_to(a, s))
    }

    /// Deletes one account, cuts its devices off; the caller calls
    /// `rosters_changed`.
    pub(super) async fn delete_one(
        &self,
        account_id: &str,
    ) -> Result<herold_store::AccountPurge, Status> {
        let store = &self.node.store;
        let devices = store.list_devices(account_id).await.map_err(store_status)?;
        let ids: Vec<String> = devices.into_iter().map(|d| d.id).collect();
        let why = Kick {
            code: ErrorCode::DeviceRevoked,
            message: "this device's account was deleted".into(),
        };
        let purge = match store.delete_account(account_id).await {
            Ok(p) => p,
            Err(e) => {
                self.node.cut_off_after_failure(&e, &ids, why).await;
                return Err(store_status(e));
            }
        };
        self.node.kick_devices(&ids, why).await;
        Ok(purge)
    }

    pub(super) async fn create_account(
        &self,
        req: Request<v1::CreateAccountRequest>,
    ) -> Result<Response<v1::Account>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let target = r.account_id.clone();
        let detail = format!("tags={}", r.tags.join(","));
        self.audited(&op, "CreateAccount", Need::Org, &target, detail, async {
            check_id("account", &r.account_id)?;
            if r.display_name.len() > 256 {
                return Err(Status::invalid_argument(
                    "display_name is longer than 256 bytes",
                ));
            }
            for t in &r.tags {
                check_id("tag", t)?;
            }
            let a = herold_store::Account {
                id: r.account_id,
                display_name: r.display_name,
                created_at_ms: now_ms(),
            };
            let store = &self.node.store;
            store
                .create_account(a.clone())
                .await
                .map_err(store_status)?;
            let state = AccountState {
                tags: r.tags,
                ..AccountState::default()
            };
            if !state.tags.is_empty() {
                store
                    .set_account_state(&a.id, state.clone())
                    .await
                    .map_err(store_status)?;
            }
            self.account(&a.id).await
        })
        .await
    }

    pub(super) async fn get_account(
        &self,
        req: Request<v1::GetAccountRequest>,
    ) -> Result<Response<v1::Account>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        self.audited(
            &op,
            "GetAccount",
            Need::Read,
            &r.account_id,
            String::new(),
            async {
                check_id("account", &r.account_id)?;
                self.may_read_account(&op, &r.account_id).await?;
                self.account(&r.account_id).await
            },
        )
        .await
    }

    pub(super) async fn list_accounts(
        &self,
        req: Request<v1::ListAccountsRequest>,
    ) -> Result<Response<v1::ListAccountsResponse>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        self.audited(
            &op,
            "ListAccounts",
            Need::Read,
            &r.tag,
            String::new(),
            async {
                if !r.tag.is_empty() {
                    check_id("tag", &r.tag)?;
                }
                if !r.page_token.is_empty() {
                    check_id("page_token", &r.page_token)?;
                }
                if let Some(ids) = self.readable_accounts(&op).await? {
                    return self.list_some_accounts(ids, &r).await;
                }
                let store = &self.node.store;
                let page = store
                    .list_accounts(
                        (!r.tag.is_empty()).then_some(r.tag.as_str()),
                        (!r.page_token.is_empty()).then_some(r.page_token.as_str()),
                        page_size(r.page_size),
                    )
                    .await
                    .map_err(store_status)?;
                let mut accounts = Vec::with_capacity(page.items.len());
                for a in page.items {
                    let s = store
                        .account_state(&a.id)
                        .await
                        .map_err(store_status)?
                        .unwrap_or_default();
                    accounts.push(account_to(a, s));
                }
                Ok(v1::ListAccountsResponse {
                    accounts,
                    next_page_token: page.next.unwrap_or_default(),
                })
            },
        )
        .await
    }

    /// A page of `ids` (in order, after the page token), with the tag if
    /// one is asked for: a group admin's ListAccounts.
    async fn list_some_accounts(
        &self,
        ids: BTreeSet<String>,
        r: &v1::ListAccountsRequest,
    ) -> Result<v1::ListAccountsResponse, Status> {
        let limit = page_size(r.page_size);
        let mut accounts = Vec::new();
        let after = |id: &String| r.page_token.is_empty() || id.as_str() > r.page_token.as_str();
        for id in ids.iter().filter(|id| after(id)) {
            let a = match self.account(id).await {
                Ok(a) => a,
                // Deleted since it was a member.
                Err(s) if s.code() == tonic::Code::NotFound => continue,
                Err(s) => return Err(s),
            };
            if r.tag.is_empty() || a.tags.contains(&r.tag) {
                accounts.push(a);
            }
            if accounts.len() >= limit {
                break;
            }
        }
        let next_page_token = if accounts.len() >= limit {
            accounts
                .last()
                .map(|a| a.account_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(v1::ListAccountsResponse {
            accounts,
            next_page_token,
        })
    }

    pub(super) async fn suspend_account(
        &self,
        req: Request<v1::SuspendAccountRequest>,
    ) -> Result<Response<v1::Account>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let detail = format!("suspended={}", r.suspended);
        self.audited(
            &op,
            "SuspendAccount",
            Need::Org,
            &r.account_id,
            detail,
            async {
                check_id("account", &r.account_id)?;
                let store = &self.node.store;
                let mut state = store
                    .account_state(&r.account_id)
                    .await
                    .map_err(store_status)?
                    .ok_or_else(|| Status::not_found(format!("no account {:?}", r.account_id)))?;
                state.suspended = r.suspended;
                let ids: Vec<String> = if r.suspended {
                    store
                        .list_devices(&r.account_id)
                        .await
                        .map_err(store_status)?
                        .into_iter()
                        .map(|d| d.id)
                        .collect()
                } else {
                    Vec::new()
                };
                let why = Kick {
                    code: ErrorCode::DeviceRevoked,
                    message: "this device's account was suspended".into(),
                };
                if let Err(e) = store.set_account_state(&r.account_id, state).await {
                    self.node.cut_off_after_failure(&e, &ids, why).await;
                    return Err(store_status(e));
                }
                if r.suspended {
                    self.node.kick_devices(&ids, why).await;
                }
                self.account(&r.account_id).await
            },
        )
        .await
    }

    pub(super) async fn delete_account(
        &self,
        req: Request<v1::DeleteAccountRequest>,
    ) -> Result<Response<v1::DeleteAccountResponse>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        self.audited_then(
            &op,
            "DeleteAccount",
            Need::Org,
            &r.account_id,
            async {
                check_id("account", &r.account_id)?;
                let purge = self.delete_one(&r.account_id).await?;
                self.node.rosters_changed(&[]).await;
                Ok(v1::DeleteAccountResponse {
                    devices_removed: purge.devices,
                    memberships_removed: purge.memberships,
                })
            },
            |result| match result {
                Ok(p) => format!(
                    "devices={} memberships={}",
                    p.devices_removed, p.memberships_removed
                ),
                Err(_) => String::new(),
            },
        )
        .await
    }

    pub(super) async fn delete_accounts(
        &self,
        req: Request<v1::DeleteAccountsRequest>,
    ) -> Result<Response<v1::DeleteAccountsResponse>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        self.audited_then(
            &op,
            "DeleteAccounts",
            Need::Org,
            &r.tag,
            async {
                if r.tag.is_empty() {
                    return Err(Status::invalid_argument(
                        "tag is required: bulk delete works on one cohort",
                    ));
                }
                check_id("tag", &r.tag)?;
                let store = &self.node.store;
                let mut out = v1::DeleteAccountsResponse::default();
                let mut after: Option<String> = None;
                loop {
                    // Deleted accounts leave the tag, so a real run always reads
                    // the first page; a dry run pages on.
                    let page = store
                        .list_accounts(Some(&r.tag), after.as_deref(), PAGE_MAX as usize)
                        .await
                        .map_err(store_status)?;
                    if page.items.is_empty() {
                        break;
                    }
                    if r.dry_run {
                        out.accounts_deleted += u32::try_from(page.items.len()).unwrap_or(u32::MAX);
                        match page.next {
                            Some(n) => {
                                after = Some(n);
                                continue;
                            }
                            None => break,
                        }
                    }
                    let futs: Vec<_> = page
                        .items
                        .into_iter()
                        .map(|a| {
                            let this = self.clone();
                            async move { this.delete_one(&a.id).await }
                        })
                        .collect();
                    let results: Vec<Result<herold_store::AccountPurge, Status>> =
                        futures_util::stream::iter(futs)
                            .buffer_unordered(BULK_CONCURRENCY)
                            .collect()
                            .await;
                    for res in results {
                        match res {
                            Ok(p) => {
                                out.accounts_deleted += 1;
                                out.devices_removed += p.devices;
                                out.memberships_removed += p.memberships;
                            }
                            // Deleted concurrently by someone else: fine.
                            Err(s) if s.code() == tonic::Code::NotFound => {}
                            Err(s) => {
                                self.node.rosters_changed(&[]).await;
                                return Err(s);
                            }
                        }
                    }
                }
                if !r.dry_run {
                    self.node.rosters_changed(&[]).await;
                }
                Ok(out)
            },
            |result| match result {
                Ok(o) => format!(
                    "dry_run={} accounts={} devices={} memberships={}",
                    r.dry_run, o.accounts_deleted, o.devices_removed, o.memberships_removed
                ),
                Err(_) => format!("dry_run={}", r.dry_run),
            },
        )
        .await
    }
}
