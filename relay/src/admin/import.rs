//! Bulk roster import: a cohort's accounts, groups and codes from one
//! table, in batches.

use super::*;

impl AdminService {
    pub(super) async fn import_roster(
        &self,
        req: Request<v1::ImportRosterRequest>,
    ) -> Result<Response<v1::ImportRosterResponse>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let lines = match (r.rows.first(), r.rows.last()) {
            (Some(a), Some(b)) => format!("lines {}-{}", a.line, b.line),
            _ => "no rows".into(),
        };
        self.audited_then(
            &op,
            "ImportRoster",
            Need::Org,
            "",
            async { self.import(r).await },
            |result| match result {
                Ok(o) => format!(
                    "{lines}: created={} unchanged={} failed={} conversations_created={}",
                    o.created, o.unchanged, o.failed, o.conversations_created
                ),
                Err(_) => lines,
            },
        )
        .await
    }

    /// One batch of an import: see docs/admin.md, "Bulk provisioning".
    pub(super) async fn import(
        &self,
        r: v1::ImportRosterRequest,
    ) -> Result<v1::ImportRosterResponse, Status> {
        if r.rows.len() > IMPORT_BATCH_MAX {
            return Err(Status::invalid_argument(format!(
                "{} rows in one call; send at most {IMPORT_BATCH_MAX} per call",
                r.rows.len()
            )));
        }
        let prefix = if r.group_prefix.is_empty() {
            "station-".to_owned()
        } else {
            r.group_prefix.clone()
        };
        for c in &r.channels {
            check_id("channel", c)?;
        }
        let ttl = match r.code_ttl_seconds {
            0 => CODE_TTL_DEFAULT,
            t if t > CODE_TTL_MAX => {
                return Err(Status::invalid_argument(format!(
                    "code_ttl_seconds {t} is above the maximum of {CODE_TTL_MAX} (30 days)"
                )));
            }
            t => t,
        };
        let store = &self.node.store;
        let mut out = v1::ImportRosterResponse::default();
        let fail = |out: &mut v1::ImportRosterResponse, line: u32, reason: String| {
            out.failed += 1;
            out.errors.push(v1::RowError { line, reason });
        };

        // 1. Validate; the same account twice in one batch is an error.
        let mut rows: Vec<Row> = Vec::with_capacity(r.rows.len());
        let mut seen: HashMap<String, u32> = HashMap::new();
        for raw in &r.rows {
            match validate_row(raw, &prefix) {
                Ok(row) => {
                    if let Some(first) = seen.get(&row.account_id) {
                        fail(
                            &mut out,
                            raw.line,
                            format!(
                                "the same volunteer as line {first} (same name, station and \
                                 cohort, or the same account_id)"
                            ),
                        );
                    } else {
                        seen.insert(row.account_id.clone(), row.line);
                        rows.push(row);
                    }
                }
                Err(reason) => fail(&mut out, raw.line, reason),
            }
        }

        // 2. The station groups and the channels, created when missing.
        let mut groups: BTreeMap<String, String> = BTreeMap::new();
        for row in &rows {
            groups
                .entry(row.group_id.clone())
                .or_insert_with(|| row.station.clone());
        }
        let wanted = groups
            .iter()
            .map(|(id, title)| (id.clone(), title.clone(), ConversationKind::Group))
            .chain(
                r.channels
                    .iter()
                    .map(|c| (c.clone(), c.clone(), ConversationKind::Channel)),
            );
        // Many in flight: a first import creates 600-odd groups at once.
        let futs: Vec<_> = wanted
            .map(|(id, title, kind)| {
                let store = store.clone();
                async move {
                    match store.get_conversation(&id).await.map_err(store_status)? {
                        Some(c) if c.kind == kind => Ok((id, None, false)),
                        Some(c) => {
                            let why = format!(
                                "conversation {id:?} exists but is a {:?}, not a {kind:?}",
                                c.kind
                            );
                            Ok((id, Some(why), false))
                        }
                        None => {
                            let conv = herold_store::Conversation {
                                id: id.clone(),
                                kind,
                                title,
                                default_ttl_seconds: 0,
                                created_at_ms: now_ms(),
                            };
                            match store.create_conversation(conv, Vec::new()).await {
                                Ok(()) => Ok((id, None, true)),
                                Err(StoreError::ConversationExists(_)) => Ok((id, None, false)),
                                Err(e) => Err(store_status(e)),
                            }
                        }
                    }
                }
            })
            .collect();
        let made: Vec<Result<Ensured, Status>> = futures_util::stream::iter(futs)
            .buffer_unordered(BULK_CONCURRENCY)
            .collect()
            .await;
        let mut bad_groups: HashMap<String, String> = HashMap::new();
        for m in made {
            let (id, bad, created) = m?;
            if created {
                out.conversations_created += 1;
            }
            if let Some(why) = bad {
                bad_groups.insert(id, why);
            }
        }
        if let Some(reason) = r.channels.iter().find_map(|c| bad_groups.get(c)) {
            return Err(Status::failed_precondition(reason.clone()));
        }
        rows.retain(|row| match bad_groups.get(&row.group_id) {
            Some(reason) => {
                fail(&mut out, row.line, reason.clone());
                false
            }
            None => true,
        });

        // 3. Accounts (and their cohort tag), many in flight: the embedded
        //    store commits them in a few group commits.
        let now = now_ms();
        let futs: Vec<_> = rows
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, row)| {
                let this = self.clone();
                async move { (i, this.import_account(&row, now).await) }
            })
            .collect();
        let outcomes: Vec<(usize, Result<AccountOutcome, String>)> =
            futures_util::stream::iter(futs)
                .buffer_unordered(BULK_CONCURRENCY)
                .collect()
                .await;
        let mut ok: Vec<Option<bool>> = vec![None; rows.len()];
        let mut created_accounts: Vec<(usize, herold_store::Account)> = Vec::new();
        for (i, res) in outcomes {
            match res {
                Ok(AccountOutcome::Created(a)) => {
                    ok[i] = Some(true);
                    created_accounts.push((i, a));
                }
                Ok(AccountOutcome::Existing) => ok[i] = Some(false),
                Err(reason) => {
                    if let Some(row) = rows.get(i) {
                        fail(&mut out, row.line, reason);
                    }
                }
            }
        }

        // 4. Memberships: one read and one write per conversation.
        let mut touched: Vec<String> = Vec::new();
        let mut changed = vec![false; rows.len()];
        let mut by_group: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, row) in rows.iter().enumerate() {
            if ok[i].is_some() {
                by_group.entry(row.group_id.as_str()).or_default().push(i);
            }
        }
        let all_ok: Vec<usize> = (0..rows.len()).filter(|i| ok[*i].is_some()).collect();
        let targets = by_group
            .into_iter()
            .map(|(g, idx)| (g.to_owned(), idx, true))
            .chain(
                r.channels
                    .iter()
                    .map(|c| (c.clone(), all_ok.clone(), false)),
            );
        // One read and one bulk write per conversation, many in flight.
        let futs: Vec<_> = targets
            .map(|(conv, idx, station_role)| {
                let want: Vec<(usize, String, Role)> = idx
                    .into_iter()
                    .filter_map(|i| {
                        let row = rows.get(i)?;
                        let role = if station_role { row.role } else { Role::Member };
                        Some((i, row.account_id.clone(), role))
                    })
                    .collect();
                let store = store.clone();
                async move {
                    let current: HashMap<String, Role> = store
                        .members(&conv)
                        .await
                        .map_err(store_status)?
                        .into_iter()
                        .map(|m| (m.account_id, m.role))
                        .collect();
                    let mut add = Vec::new();
                    let mut changed_rows = Vec::new();
                    for (i, account_id, role) in want {
                        if current.get(&account_id) != Some(&role) {
                            add.push(herold_store::Member { account_id, role });
                            changed_rows.push(i);
                        }
                    }
                    if !add.is_empty() {
                        store.put_members(&conv, add).await.map_err(store_status)?;
                    }
                    Ok::<_, Status>((conv, changed_rows))
                }
            })
            .collect();
        let results: Vec<Result<(String, Vec<usize>), Status>> = futures_util::stream::iter(futs)
            .buffer_unordered(BULK_CONCURRENCY)
            .collect()
            .await;
        let mut failure = None;
        for res in results {
            match res {
                Ok((conv, changed_rows)) => {
                    if !changed_rows.is_empty() {
                        touched.push(conv);
                    }
                    for i in changed_rows {
                        if let Some(c) = changed.get_mut(i) {
                            *c = true;
                        }
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            // What was written stays; the caller retries the batch, which
            // is idempotent.
            if !touched.is_empty() {
                self.node.rosters_changed(&touched).await;
            }
            return Err(e);
        }
        // Large channels' sub-groups follow their channels: every time, so
        // that a retry after a failure halfway brings them in line too (a
        // channel already in line costs reads only).
        for c in &r.channels {
            let subs = self.mirror_sub_groups(c).await;
            if let Ok(subs) = &subs {
                touched.extend(subs.iter().cloned());
            }
            if let Err(e) = subs {
                self.node.rosters_changed(&touched).await;
                return Err(e);
            }
        }
        if !touched.is_empty() {
            self.node.rosters_changed(&touched).await;
        }

        // 5. Codes for the new accounts, for printing.
        let futs: Vec<_> = created_accounts
            .into_iter()
            .map(|(i, a)| {
                let station = rows.get(i).map(|r| r.station.clone()).unwrap_or_default();
                let this = self.clone();
                async move { this.issue_code(&a, ttl, &station).await }
            })
            .collect();
        let codes: Vec<Result<v1::EnrollmentCode, Status>> = futures_util::stream::iter(futs)
            .buffered(BULK_CONCURRENCY)
            .collect()
            .await;
        for c in codes {
            out.codes.push(c?);
        }
        for (i, state) in ok.iter().enumerate() {
            match state {
                Some(true) => out.created += 1,
                Some(false) if changed[i] => out.created += 1,
                Some(false) => out.unchanged += 1,
                None => {}
            }
        }
        out.errors.sort_by_key(|e| e.line);
        Ok(out)
    }

    /// Creates a row's account, or finds it; makes sure it has the cohort tag.
    pub(super) async fn import_account(
        &self,
        row: &Row,
        now: i64,
    ) -> Result<AccountOutcome, String> {
        let store = &self.node.store;
        let account = herold_store::Account {
            id: row.account_id.clone(),
            display_name: row.name.clone(),
            created_at_ms: now,
        };
        let created = match store.create_account(account.clone()).await {
            Ok(()) => true,
            Err(StoreError::AccountExists(_)) => false,
            Err(e) => return Err(format!("creating account {:?}: {e}", row.account_id)),
        };
        let mut state = if created {
            AccountState::default()
        } else {
            store
                .account_state(&row.account_id)
                .await
                .map_err(|e| format!("reading account {:?}: {e}", row.account_id))?
                .unwrap_or_default()
        };
        if !state.tags.contains(&row.cohort) {
            state.tags.push(row.cohort.clone());
            store
                .set_account_state(&row.account_id, state)
                .await
                .map_err(|e| format!("tagging account {:?}: {e}", row.account_id))?;
        }
        Ok(if created {
            AccountOutcome::Created(account)
        } else {
            AccountOutcome::Existing
        })
    }
}

/// A roster file's role: `member`, `publisher`, `admin` or `owner`.
pub(super) fn parse_roster_role(s: &str) -> Result<Role, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "member" => Ok(Role::Member),
        "publisher" => Ok(Role::Publisher),
        "admin" => Ok(Role::Admin),
        "owner" => Ok(Role::Owner),
        other => Err(format!(
            "role {other:?} is not one of member, publisher, admin, owner"
        )),
    }
}

/// The id part of a station name: lowercase ASCII letters and digits, other
/// runs as one `-`; German umlauts transliterated.
pub(super) fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.trim().chars().flat_map(char::to_lowercase) {
        match c {
            'a'..='z' | '0'..='9' => out.push(c),
            'ä' => out.push_str("ae"),
            'ö' => out.push_str("oe"),
            'ü' => out.push_str("ue"),
            'ß' => out.push_str("ss"),
            _ => {
                if !out.is_empty() && !out.ends_with('-') {
                    out.push('-');
                }
            }
        }
    }
    out.trim_end_matches('-').to_owned()
}

/// The account id of a roster row without one: stable across re-runs.
pub(super) fn derived_account_id(cohort: &str, station: &str, name: &str) -> String {
    let mut h = Sha256::new();
    for part in [cohort, station, name.trim()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!("v-{}", &hex::encode(h.finalize())[..20])
}

/// One validated roster row.
#[derive(Debug, Clone)]
pub(super) struct Row {
    line: u32,
    account_id: String,
    name: String,
    station: String,
    group_id: String,
    role: Role,
    cohort: String,
}

pub(super) fn validate_row(r: &v1::RosterRow, prefix: &str) -> Result<Row, String> {
    let name = r.name.trim();
    if name.is_empty() {
        return Err("name is empty".into());
    }
    if name.len() > 256 {
        return Err("name is longer than 256 bytes".into());
    }
    let station = r.station.trim();
    if station.is_empty() {
        return Err("polling station is empty".into());
    }
    let s = slug(station);
    if s.is_empty() {
        return Err(format!(
            "polling station {station:?} has no letters or digits"
        ));
    }
    let group_id = format!("{prefix}{s}");
    check_id("conversation", &group_id).map_err(|e| {
        format!(
            "polling station {station:?} gives group id {group_id:?}: {}",
            e.message()
        )
    })?;
    let role = parse_roster_role(&r.role)?;
    let cohort = r.cohort.trim();
    ids::validate_id("cohort tag", cohort).map_err(|e| e.to_string())?;
    let account_id = if r.account_id.trim().is_empty() {
        derived_account_id(cohort, station, name)
    } else {
        r.account_id.trim().to_owned()
    };
    check_id("account", &account_id).map_err(|e| e.message().to_owned())?;
    Ok(Row {
        line: r.line,
        account_id,
        name: name.to_owned(),
        station: station.to_owned(),
        group_id,
        role,
        cohort: cohort.to_owned(),
    })
}

/// A conversation an import made sure of: its id, why it cannot be used
/// (it exists as another kind), and whether this batch created it.
pub(super) type Ensured = (String, Option<String>, bool);

/// What happened to one row's account.
#[derive(Debug)]
pub(super) enum AccountOutcome {
    Created(herold_store::Account),
    Existing,
}
