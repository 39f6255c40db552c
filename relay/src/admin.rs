//! The gRPC admin API, the management cockpit: service `Admin` (accounts,
//! devices and enrollment codes, groups and channels, policies, bulk
//! roster import, audit log) for operators, service `Enrollment` for
//! devices redeeming a one-time code, and the standard gRPC health and
//! reflection services, all on the admin port.
//!
//! Every `Admin` call is authenticated by the interceptor (see
//! [`crate::operators`]), which puts the [`Operator`] into the request's
//! extensions; each handler authorises it against its role and records the
//! call in the audit log (ids, parameters and outcome; never message
//! content). Directory changes go through [`Shared::rosters_changed`], and
//! cutting devices off through [`Shared::kick_devices`], so they reach every
//! relay of the cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures_util::StreamExt;
use herold_proto::ids;
use herold_proto::v1::admin_server::{Admin, AdminServer};
use herold_proto::v1::enrollment_server::{Enrollment, EnrollmentServer};
use herold_proto::v1::{self, ErrorCode};
use herold_store::{
    AccountState, AuditEntry, ConversationKind, DirectChats, EnrollmentCode, Policy, PolicyScope,
    Role, StoreError,
};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::operators::{Auth, Operator, OperatorRole};
use crate::policy::{Effective, MAX_DEVICES_CEILING};
use crate::registry::Kick;
use crate::server::{Shared, now_ms};

/// Default and largest page of a listing.
const PAGE_DEFAULT: u32 = 100;
const PAGE_MAX: u32 = 1000;
/// Default and longest lifetime of an enrollment code.
const CODE_TTL_DEFAULT: u64 = 7 * 24 * 3600;
const CODE_TTL_MAX: u64 = 30 * 24 * 3600;
/// Largest roster batch of one ImportRoster call.
pub(crate) const IMPORT_BATCH_MAX: usize = 5000;
/// Store operations one bulk call keeps in flight.
const BULK_CONCURRENCY: usize = 64;
/// Crockford's base32: no I, L, O, U, so a printed code reads unambiguously.
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const CODE_CHARS: usize = 12;

/// The admin service.
#[derive(Debug, Clone)]
pub(crate) struct AdminService {
    shared: Arc<Shared>,
}

impl AdminService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// The enrollment service: no operator, a one-time code instead.
#[derive(Debug, Clone)]
pub(crate) struct EnrollmentService {
    shared: Arc<Shared>,
}

/// Serves the admin API on `listener` until `shutdown` completes: TLS when
/// `tls` is given (client certificates verified against its CA, if any),
/// operators authenticated by `auth`, and the gRPC health service whose
/// status the relay's readiness sets (`crate::health`).
pub(crate) async fn serve(
    shared: Arc<Shared>,
    auth: Auth,
    tls: Option<tonic::transport::ServerTlsConfig>,
    listener: tokio::net::TcpListener,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let check = move |mut req: Request<()>| -> Result<Request<()>, Status> {
        let bearer = req
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("<not ascii>").to_owned());
        let cert_fp = req
            .peer_certs()
            .and_then(|c| c.first().map(|c| crate::tls::fingerprint(c.as_ref())));
        let op = auth.identify(bearer.as_deref(), cert_fp.as_deref())?;
        req.extensions_mut().insert(op);
        Ok(req)
    };
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(herold_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    let reflection = match reflection {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "gRPC reflection unavailable");
            None
        }
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let router = builder
        .layer(crate::grpc_metrics::AdminMetricsLayer)
        .add_service(AdminServer::with_interceptor(
            AdminService::new(shared.clone()),
            check,
        ))
        .add_service(EnrollmentServer::new(EnrollmentService { shared }))
        .add_service(health_service)
        .add_optional_service(reflection);
    router
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await
}

// ---------------------------------------------------------------------------
// conversions and checks

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::AccountExists(_)
        | StoreError::DeviceExists(_)
        | StoreError::ConversationExists(_) => Status::already_exists(e.to_string()),
        StoreError::NoSuchAccount(_)
        | StoreError::NoSuchDevice(_)
        | StoreError::NoSuchConversation(_) => Status::not_found(e.to_string()),
        StoreError::DeviceLimit { .. } => Status::failed_precondition(e.to_string()),
        StoreError::DirectNeedsTwo(_) => Status::invalid_argument(e.to_string()),
        StoreError::NoSuchCode => Status::unauthenticated(e.to_string()),
        StoreError::Closed | StoreError::Backend(_) | StoreError::Corrupt { .. } => {
            tracing::warn!(error = %e, "admin: store failed");
            Status::unavailable("storage is unavailable")
        }
        StoreError::InvalidConfig(_) => Status::internal(e.to_string()),
        StoreError::WrongEpoch { .. }
        | StoreError::MembershipPending { .. }
        | StoreError::InvalidRosterVersion { .. }
        | StoreError::MlsRequired
        | StoreError::KeyPackageLimit { .. } => Status::failed_precondition(e.to_string()),
    }
}

fn check_id(what: &'static str, id: &str) -> Result<(), Status> {
    ids::validate_id(what, id).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn kind_from(k: i32) -> Result<ConversationKind, Status> {
    match v1::ConversationKind::try_from(k) {
        Ok(v1::ConversationKind::Direct) => Ok(ConversationKind::Direct),
        Ok(v1::ConversationKind::Group) => Ok(ConversationKind::Group),
        Ok(v1::ConversationKind::Channel) => Ok(ConversationKind::Channel),
        _ => Err(Status::invalid_argument(
            "kind must be DIRECT, GROUP or CHANNEL",
        )),
    }
}

fn kind_to(k: ConversationKind) -> v1::ConversationKind {
    match k {
        ConversationKind::Direct => v1::ConversationKind::Direct,
        ConversationKind::Group => v1::ConversationKind::Group,
        ConversationKind::Channel => v1::ConversationKind::Channel,
    }
}

fn role_from(r: i32) -> Result<Role, Status> {
    match v1::Role::try_from(r) {
        Ok(v1::Role::Unspecified) | Ok(v1::Role::Member) => Ok(Role::Member),
        Ok(v1::Role::Publisher) => Ok(Role::Publisher),
        Ok(v1::Role::Admin) => Ok(Role::Admin),
        Ok(v1::Role::Owner) => Ok(Role::Owner),
        Err(_) => Err(Status::invalid_argument(format!("unknown role {r}"))),
    }
}

fn role_to(r: Role) -> v1::Role {
    match r {
        Role::Member => v1::Role::Member,
        Role::Publisher => v1::Role::Publisher,
        Role::Admin => v1::Role::Admin,
        Role::Owner => v1::Role::Owner,
    }
}

/// A roster file's role: `member`, `publisher`, `admin` or `owner`.
fn parse_roster_role(s: &str) -> Result<Role, String> {
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

fn members_from(ms: Vec<v1::Member>) -> Result<Vec<herold_store::Member>, Status> {
    ms.into_iter()
        .map(|m| {
            check_id("account", &m.account_id)?;
            Ok(herold_store::Member {
                account_id: m.account_id,
                role: role_from(m.role)?,
            })
        })
        .collect()
}

fn device_to(d: herold_store::Device) -> v1::Device {
    v1::Device {
        device_id: d.id,
        account_id: d.account_id,
        public_key: d.public_key,
        revoked: d.revoked,
        created_at_ms: d.created_at_ms,
    }
}

fn account_to(a: herold_store::Account, s: AccountState) -> v1::Account {
    v1::Account {
        account_id: a.id,
        display_name: a.display_name,
        created_at_ms: a.created_at_ms,
        tags: s.tags,
        suspended: s.suspended,
    }
}

fn direct_to(d: DirectChats) -> v1::DirectChats {
    match d {
        DirectChats::Everyone => v1::DirectChats::Everyone,
        DirectChats::SharedGroup => v1::DirectChats::SharedGroup,
        DirectChats::Nobody => v1::DirectChats::Nobody,
    }
}

fn policy_to(p: &Policy) -> v1::Policy {
    v1::Policy {
        default_expiry_seconds: p.default_expiry_seconds,
        max_expiry_seconds: p.max_expiry_seconds,
        max_devices: p.max_devices,
        max_attachment_bytes: p.max_attachment_bytes,
        direct_chats: p
            .direct_chats
            .map_or(v1::DirectChats::Unspecified, direct_to) as i32,
    }
}

/// A policy for the audit log: the settings given, `name=value`.
fn policy_detail(p: &v1::Policy) -> String {
    let mut parts = Vec::new();
    let mut put = |name: &str, v: Option<u64>| {
        if let Some(v) = v {
            parts.push(format!("{name}={v}"));
        }
    };
    put("default_expiry_seconds", p.default_expiry_seconds);
    put("max_expiry_seconds", p.max_expiry_seconds);
    put("max_devices", p.max_devices.map(u64::from));
    put("max_attachment_bytes", p.max_attachment_bytes);
    if let Ok(d) = v1::DirectChats::try_from(p.direct_chats)
        && d != v1::DirectChats::Unspecified
    {
        parts.push(format!("direct_chats={}", d.as_str_name()));
    }
    parts.join(" ")
}

fn page_size(n: u32) -> usize {
    (if n == 0 {
        PAGE_DEFAULT
    } else {
        n.min(PAGE_MAX)
    }) as usize
}

fn valid_public_key(key: &[u8]) -> Result<(), Status> {
    let bytes: [u8; 32] = key.try_into().map_err(|_| {
        Status::invalid_argument(format!(
            "public_key must be a 32-byte Ed25519 key, not {} bytes",
            key.len()
        ))
    })?;
    if ed25519_dalek::VerifyingKey::from_bytes(&bytes).is_err() {
        return Err(Status::invalid_argument(
            "public_key is not a valid Ed25519 point",
        ));
    }
    Ok(())
}

fn role_name(r: OperatorRole) -> &'static str {
    match r {
        OperatorRole::OrgAdmin => "org-admin",
        OperatorRole::GroupAdmin => "group-admin",
        OperatorRole::Auditor => "auditor",
    }
}

/// What a call needs of its operator.
#[derive(Debug, Clone, Copy)]
enum Need<'a> {
    /// Reads of the directory: every role.
    Read,
    /// The audit log: org admins and auditors.
    AuditRead,
    /// Changes of one group or channel: org admins and its group admins.
    Group(&'a str),
    /// Everything else: org admins.
    Org,
}

fn authorize(op: &Operator, action: &str, need: Need<'_>) -> Result<(), Status> {
    let denied = || {
        Status::permission_denied(format!(
            "operator {:?} ({}) may not call {action}",
            op.name,
            role_name(op.role)
        ))
    };
    match (op.role, need) {
        (OperatorRole::OrgAdmin, _) | (_, Need::Read) => Ok(()),
        (OperatorRole::Auditor, Need::AuditRead) => Ok(()),
        (OperatorRole::GroupAdmin, Need::Group(id)) => {
            if op.groups.iter().any(|g| g == id) {
                Ok(())
            } else {
                Err(Status::permission_denied(format!(
                    "operator {:?} (group-admin) manages only {}; not {id:?}",
                    op.name,
                    op.groups.join(", ")
                )))
            }
        }
        _ => Err(denied()),
    }
}

/// A fresh enrollment code, `XXXX-XXXX-XXXX`, and its hash.
fn new_code() -> Result<(String, Vec<u8>), Status> {
    let mut raw = [0u8; CODE_CHARS];
    getrandom::fill(&mut raw).map_err(|e| Status::internal(format!("no randomness: {e}")))?;
    let chars: String = raw
        .iter()
        .map(|b| char::from(CODE_ALPHABET[usize::from(b & 31)]))
        .collect();
    let hash = code_hash(&chars);
    let shown = format!("{}-{}-{}", &chars[0..4], &chars[4..8], &chars[8..12]);
    Ok((shown, hash))
}

/// SHA-256 of a code as typed: case, dashes and spaces ignored, and the
/// letters Crockford's base32 confuses read as digits.
pub(crate) fn code_hash(code: &str) -> Vec<u8> {
    let norm: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        })
        .collect();
    Sha256::digest(norm.as_bytes()).to_vec()
}

/// The id part of a station name: lowercase ASCII letters and digits, other
/// runs as one `-`; German umlauts transliterated.
fn slug(s: &str) -> String {
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
fn derived_account_id(cohort: &str, station: &str, name: &str) -> String {
    let mut h = Sha256::new();
    for part in [cohort, station, name.trim()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!("v-{}", &hex::encode(h.finalize())[..20])
}

fn random_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

fn operator_of<T>(req: &Request<T>) -> Result<Operator, Status> {
    req.extensions()
        .get::<Operator>()
        .cloned()
        .ok_or_else(|| Status::internal("no operator on the request"))
}

// ---------------------------------------------------------------------------
// shared helpers

impl AdminService {
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
        record_audit(&self.shared, &op.name, action, target, outcome, detail).await;
    }

    async fn org_policy(&self) -> Result<Option<Policy>, Status> {
        self.shared
            .store
            .get_policy(PolicyScope::Org)
            .await
            .map_err(store_status)
    }

    async fn conversation(&self, id: &str, with_members: bool) -> Result<v1::Conversation, Status> {
        let store = &self.shared.store;
        let c = store
            .get_conversation(id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no conversation {id:?}")))?;
        let members = store.members(id).await.map_err(store_status)?;
        let archived = store
            .conversation_archived(id)
            .await
            .map_err(store_status)?;
        let member_count = u32::try_from(members.len()).unwrap_or(u32::MAX);
        Ok(v1::Conversation {
            conversation_id: c.id,
            kind: kind_to(c.kind) as i32,
            title: c.title,
            members: if with_members {
                members
                    .into_iter()
                    .map(|m| v1::Member {
                        account_id: m.account_id,
                        role: role_to(m.role) as i32,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            default_ttl_seconds: c.default_ttl_seconds,
            archived,
            created_at_ms: c.created_at_ms,
            member_count,
        })
    }

    async fn account(&self, id: &str) -> Result<v1::Account, Status> {
        let store = &self.shared.store;
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
    async fn delete_one(&self, account_id: &str) -> Result<herold_store::AccountPurge, Status> {
        let store = &self.shared.store;
        let devices = store.list_devices(account_id).await.map_err(store_status)?;
        let purge = store
            .delete_account(account_id)
            .await
            .map_err(store_status)?;
        let ids: Vec<String> = devices.into_iter().map(|d| d.id).collect();
        self.shared
            .kick_devices(
                &ids,
                Kick {
                    code: ErrorCode::DeviceRevoked,
                    message: "this device's account was deleted".into(),
                },
            )
            .await;
        Ok(purge)
    }

    /// Issues a code for an account and returns it for printing.
    async fn issue_code(
        &self,
        account: &herold_store::Account,
        ttl_seconds: u64,
        station: &str,
    ) -> Result<v1::EnrollmentCode, Status> {
        let (code, hash) = new_code()?;
        let now = now_ms();
        let expires_at_ms =
            now.saturating_add(i64::try_from(ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX));
        self.shared
            .store
            .create_enrollment_code(EnrollmentCode {
                code_hash: hash,
                account_id: account.id.clone(),
                account_created_at_ms: account.created_at_ms,
                created_at_ms: now,
                expires_at_ms,
            })
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

    /// A code for one account (none if it has devices and
    /// `only_without_devices`), with its station for printing.
    async fn code_for(
        &self,
        a: herold_store::Account,
        ttl: u64,
        only_without_devices: bool,
    ) -> Result<Option<v1::EnrollmentCode>, Status> {
        let store = &self.shared.store;
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

    /// Whether two accounts may start a direct conversation.
    async fn direct_allowed(&self, a: &str, b: &str) -> Result<(), Status> {
        let org = self.org_policy().await?;
        let eff = Effective::org(&self.shared.limits, org.as_ref());
        match eff.direct_chats {
            DirectChats::Everyone => Ok(()),
            DirectChats::Nobody => Err(Status::failed_precondition(
                "the organisation's policy allows no direct conversations",
            )),
            DirectChats::SharedGroup => {
                let store = &self.shared.store;
                let of_a: BTreeSet<String> = store
                    .conversations_of(a)
                    .await
                    .map_err(store_status)?
                    .into_iter()
                    .collect();
                for c in store.conversations_of(b).await.map_err(store_status)? {
                    if of_a.contains(&c)
                        && let Some(conv) =
                            store.get_conversation(&c).await.map_err(store_status)?
                        && conv.kind != ConversationKind::Direct
                    {
                        return Ok(());
                    }
                }
                Err(Status::failed_precondition(format!(
                    "the organisation's policy allows direct conversations only between \
                     accounts that share a group; {a:?} and {b:?} share none"
                )))
            }
        }
    }
}

/// An account's devices changed: only the rosters of its conversations are
/// stale (a volunteer enrolling does not flush every roster of the city). If
/// its conversations cannot be read, every roster is dropped.
async fn devices_changed(shared: &Shared, account_id: &str) {
    match shared.store.conversations_of(account_id).await {
        Ok(convs) if convs.is_empty() => {}
        Ok(convs) => shared.rosters_changed(&convs).await,
        Err(_) => shared.rosters_changed(&[]).await,
    }
}

async fn record_audit(
    shared: &Shared,
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
    if let Err(e) = shared.store.append_audit(entry).await {
        tracing::warn!(error = %e, action, "writing the audit log failed");
    }
}

fn validate_policy(
    p: &v1::Policy,
    org: bool,
    limits: &crate::config::Limits,
) -> Result<Policy, Status> {
    let max_expiry = limits.max_expiry.as_secs();
    let check_expiry = |name: &str, v: Option<u64>| -> Result<(), Status> {
        match v {
            Some(0) => Err(Status::invalid_argument(format!(
                "{name} must be greater than 0 (leave it unset to inherit)"
            ))),
            Some(s) if s > max_expiry => Err(Status::invalid_argument(format!(
                "{name} {s} is above this relay's maximum of {max_expiry} seconds"
            ))),
            _ => Ok(()),
        }
    };
    check_expiry("default_expiry_seconds", p.default_expiry_seconds)?;
    check_expiry("max_expiry_seconds", p.max_expiry_seconds)?;
    if let (Some(d), Some(m)) = (p.default_expiry_seconds, p.max_expiry_seconds)
        && d > m
    {
        return Err(Status::invalid_argument(format!(
            "default_expiry_seconds {d} is above max_expiry_seconds {m}"
        )));
    }
    let direct = match v1::DirectChats::try_from(p.direct_chats) {
        Ok(v1::DirectChats::Unspecified) => None,
        Ok(v1::DirectChats::Everyone) => Some(DirectChats::Everyone),
        Ok(v1::DirectChats::SharedGroup) => Some(DirectChats::SharedGroup),
        Ok(v1::DirectChats::Nobody) => Some(DirectChats::Nobody),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown direct_chats {}",
                p.direct_chats
            )));
        }
    };
    if !org && (p.max_devices.is_some() || direct.is_some()) {
        return Err(Status::invalid_argument(
            "max_devices and direct_chats apply to the organisation only",
        ));
    }
    if let Some(d) = p.max_devices
        && (d == 0 || d > MAX_DEVICES_CEILING)
    {
        return Err(Status::invalid_argument(format!(
            "max_devices must be 1..={MAX_DEVICES_CEILING}, not {d}"
        )));
    }
    if p.max_attachment_bytes == Some(0) {
        return Err(Status::invalid_argument(
            "max_attachment_bytes must be greater than 0",
        ));
    }
    Ok(Policy {
        default_expiry_seconds: p.default_expiry_seconds,
        max_expiry_seconds: p.max_expiry_seconds,
        max_devices: p.max_devices,
        max_attachment_bytes: p.max_attachment_bytes,
        direct_chats: direct,
    })
}

/// One validated roster row.
#[derive(Debug, Clone)]
struct Row {
    line: u32,
    account_id: String,
    name: String,
    station: String,
    group_id: String,
    role: Role,
    cohort: String,
}

fn validate_row(r: &v1::RosterRow, prefix: &str) -> Result<Row, String> {
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
    ids::validate_id("conversation", &group_id)
        .map_err(|e| format!("polling station {station:?} gives group id {group_id:?}: {e}"))?;
    let role = parse_roster_role(&r.role)?;
    let cohort = r.cohort.trim();
    ids::validate_id("cohort tag", cohort).map_err(|e| e.to_string())?;
    let account_id = if r.account_id.trim().is_empty() {
        derived_account_id(cohort, station, name)
    } else {
        r.account_id.trim().to_owned()
    };
    ids::validate_id("account", &account_id).map_err(|e| e.to_string())?;
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
type Ensured = (String, Option<String>, bool);

/// What happened to one row's account.
#[derive(Debug)]
enum AccountOutcome {
    Created(herold_store::Account),
    Existing,
}

// ---------------------------------------------------------------------------
// the service

#[tonic::async_trait]
impl Admin for AdminService {
    async fn who_am_i(
        &self,
        req: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::Operator>, Status> {
        let op = operator_of(&req)?;
        Ok(Response::new(v1::Operator {
            name: op.name,
            role: match op.role {
                OperatorRole::OrgAdmin => v1::OperatorRole::OrgAdmin,
                OperatorRole::GroupAdmin => v1::OperatorRole::GroupAdmin,
                OperatorRole::Auditor => v1::OperatorRole::Auditor,
            } as i32,
            groups: op.groups,
        }))
    }

    async fn create_account(
        &self,
        req: Request<v1::CreateAccountRequest>,
    ) -> Result<Response<v1::Account>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let target = r.account_id.clone();
        let detail = format!("tags={}", r.tags.join(","));
        let result = async {
            authorize(&op, "CreateAccount", Need::Org)?;
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
            let store = &self.shared.store;
            store
                .create_account(a.clone())
                .await
                .map_err(store_status)?;
            let state = AccountState {
                tags: r.tags,
                suspended: false,
            };
            if !state.tags.is_empty() {
                store
                    .set_account_state(&a.id, state.clone())
                    .await
                    .map_err(store_status)?;
            }
            self.account(&a.id).await
        }
        .await;
        self.audit(&op, "CreateAccount", &target, detail, &result)
            .await;
        result.map(Response::new)
    }

    async fn get_account(
        &self,
        req: Request<v1::GetAccountRequest>,
    ) -> Result<Response<v1::Account>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let result = async {
            authorize(&op, "GetAccount", Need::Read)?;
            check_id("account", &r.account_id)?;
            self.account(&r.account_id).await
        }
        .await;
        self.audit(&op, "GetAccount", &r.account_id, String::new(), &result)
            .await;
        result.map(Response::new)
    }

    async fn list_accounts(
        &self,
        req: Request<v1::ListAccountsRequest>,
    ) -> Result<Response<v1::ListAccountsResponse>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let result = async {
            authorize(&op, "ListAccounts", Need::Read)?;
            if !r.tag.is_empty() {
                check_id("tag", &r.tag)?;
            }
            if !r.page_token.is_empty() {
                check_id("page_token", &r.page_token)?;
            }
            let store = &self.shared.store;
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
        }
        .await;
        self.audit(&op, "ListAccounts", &r.tag, String::new(), &result)
            .await;
        result.map(Response::new)
    }

    async fn suspend_account(
        &self,
        req: Request<v1::SuspendAccountRequest>,
    ) -> Result<Response<v1::Account>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let detail = format!("suspended={}", r.suspended);
        let result = async {
            authorize(&op, "SuspendAccount", Need::Org)?;
            check_id("account", &r.account_id)?;
            let store = &self.shared.store;
            let mut state = store
                .account_state(&r.account_id)
                .await
                .map_err(store_status)?
                .ok_or_else(|| Status::not_found(format!("no account {:?}", r.account_id)))?;
            state.suspended = r.suspended;
            store
                .set_account_state(&r.account_id, state)
                .await
                .map_err(store_status)?;
            if r.suspended {
                let ids: Vec<String> = store
                    .list_devices(&r.account_id)
                    .await
                    .map_err(store_status)?
                    .into_iter()
                    .map(|d| d.id)
                    .collect();
                self.shared
                    .kick_devices(
                        &ids,
                        Kick {
                            code: ErrorCode::DeviceRevoked,
                            message: "this device's account was suspended".into(),
                        },
                    )
                    .await;
            }
            self.account(&r.account_id).await
        }
        .await;
        self.audit(&op, "SuspendAccount", &r.account_id, detail, &result)
            .await;
        result.map(Response::new)
    }

    async fn delete_account(
        &self,
        req: Request<v1::DeleteAccountRequest>,
    ) -> Result<Response<v1::DeleteAccountResponse>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let result = async {
            authorize(&op, "DeleteAccount", Need::Org)?;
            check_id("account", &r.account_id)?;
            let purge = self.delete_one(&r.account_id).await?;
            self.shared.rosters_changed(&[]).await;
            Ok(v1::DeleteAccountResponse {
                devices_removed: purge.devices,
                memberships_removed: purge.memberships,
            })
        }
        .await;
        let detail = match &result {
            Ok(p) => format!(
                "devices={} memberships={}",
                p.devices_removed, p.memberships_removed
            ),
            Err(_) => String::new(),
        };
        self.audit(&op, "DeleteAccount", &r.account_id, detail, &result)
            .await;
        result.map(Response::new)
    }

    async fn delete_accounts(
        &self,
        req: Request<v1::DeleteAccountsRequest>,
    ) -> Result<Response<v1::DeleteAccountsResponse>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let result = async {
            authorize(&op, "DeleteAccounts", Need::Org)?;
            if r.tag.is_empty() {
                return Err(Status::invalid_argument(
                    "tag is required: bulk delete works on one cohort",
                ));
            }
            check_id("tag", &r.tag)?;
            let store = &self.shared.store;
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
                            self.shared.rosters_changed(&[]).await;
                            return Err(s);
                        }
                    }
                }
            }
            if !r.dry_run {
                self.shared.rosters_changed(&[]).await;
            }
            Ok(out)
        }
        .await;
        let detail = match &result {
            Ok(o) => format!(
                "dry_run={} accounts={} devices={} memberships={}",
                r.dry_run, o.accounts_deleted, o.devices_removed, o.memberships_removed
            ),
            Err(_) => format!("dry_run={}", r.dry_run),
        };
        self.audit(&op, "DeleteAccounts", &r.tag, detail, &result)
            .await;
        result.map(Response::new)
    }

    async fn register_device(
        &self,
        req: Request<v1::RegisterDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let target = r.device_id.clone();
        let detail = format!("account={}", r.account_id);
        let result = async {
            authorize(&op, "RegisterDevice", Need::Org)?;
            check_id("account", &r.account_id)?;
            check_id("device", &r.device_id)?;
            valid_public_key(&r.public_key)?;
            let d = herold_store::Device {
                id: r.device_id,
                account_id: r.account_id,
                public_key: r.public_key,
                revoked: false,
                created_at_ms: now_ms(),
            };
            let org = self.org_policy().await?;
            let limit = Effective::org(&self.shared.limits, org.as_ref()).max_devices;
            self.shared
                .store
                .add_device(d.clone(), limit)
                .await
                .map_err(store_status)?;
            devices_changed(&self.shared, &d.account_id).await;
            Ok(device_to(d))
        }
        .await;
        self.audit(&op, "RegisterDevice", &target, detail, &result)
            .await;
        result.map(Response::new)
    }

    async fn list_devices(
        &self,
        req: Request<v1::ListDevicesRequest>,
    ) -> Result<Response<v1::ListDevicesResponse>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let result = async {
            authorize(&op, "ListDevices", Need::Read)?;
            check_id("account", &r.account_id)?;
            let store = &self.shared.store;
            if store
                .get_account(&r.account_id)
                .await
                .map_err(store_status)?
                .is_none()
            {
                return Err(Status::not_found(format!("no account {:?}", r.account_id)));
            }
            let devices = store
                .list_devices(&r.account_id)
                .await
                .map_err(store_status)?;
            Ok(v1::ListDevicesResponse {
                devices: devices.into_iter().map(device_to).collect(),
            })
        }
        .await;
        self.audit(&op, "ListDevices", &r.account_id, String::new(), &result)
            .await;
        result.map(Response::new)
    }

    async fn revoke_device(
        &self,
        req: Request<v1::RevokeDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let result = async {
            authorize(&op, "RevokeDevice", Need::Org)?;
            check_id("device", &r.device_id)?;
            let d = self
                .shared
                .store
                .revoke_device(&r.device_id)
                .await
                .map_err(store_status)?;
            devices_changed(&self.shared, &d.account_id).await;
            self.shared
                .kick_devices(
                    std::slice::from_ref(&d.id),
                    Kick {
                        code: ErrorCode::DeviceRevoked,
                        message: "this device was revoked".into(),
                    },
                )
                .await;
            Ok(device_to(d))
        }
        .await;
        self.audit(&op, "RevokeDevice", &r.device_id, String::new(), &result)
            .await;
        result.map(Response::new)
    }

    async fn issue_enrollment_codes(
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
        let result = async {
            authorize(&op, "IssueEnrollmentCodes", Need::Org)?;
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
            let store = &self.shared.store;
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
        }
        .await;
        let detail = match &result {
            Ok(o) => format!("codes={}", o.codes.len()),
            Err(_) => String::new(),
        };
        self.audit(&op, "IssueEnrollmentCodes", &target, detail, &result)
            .await;
        result.map(Response::new)
    }

    async fn create_conversation(
        &self,
        req: Request<v1::CreateConversationRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let target = r.conversation_id.clone();
        let detail = format!("kind={} members={}", r.kind, r.members.len());
        let result = async {
            authorize(&op, "CreateConversation", Need::Org)?;
            check_id("conversation", &r.conversation_id)?;
            if r.title.len() > 256 {
                return Err(Status::invalid_argument("title is longer than 256 bytes"));
            }
            let kind = kind_from(r.kind)?;
            let members = members_from(r.members)?;
            if kind == ConversationKind::Direct {
                let distinct: BTreeSet<&str> =
                    members.iter().map(|m| m.account_id.as_str()).collect();
                if let [a, b] = distinct.into_iter().collect::<Vec<_>>()[..] {
                    self.direct_allowed(a, b).await?;
                }
            }
            let c = herold_store::Conversation {
                id: r.conversation_id.clone(),
                kind,
                title: r.title,
                default_ttl_seconds: r.default_ttl_seconds,
                created_at_ms: now_ms(),
            };
            self.shared
                .store
                .create_conversation(c, members)
                .await
                .map_err(store_status)?;
            self.shared
                .rosters_changed(std::slice::from_ref(&r.conversation_id))
                .await;
            self.conversation(&r.conversation_id, true).await
        }
        .await;
        self.audit(&op, "CreateConversation", &target, detail, &result)
            .await;
        result.map(Response::new)
    }

    async fn get_conversation(
        &self,
        req: Request<v1::GetConversationRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let result = async {
            authorize(&op, "GetConversation", Need::Read)?;
            check_id("conversation", &r.conversation_id)?;
            self.conversation(&r.conversation_id, true).await
        }
        .await;
        self.audit(
            &op,
            "GetConversation",
            &r.conversation_id,
            String::new(),
            &result,
        )
        .await;
        result.map(Response::new)
    }

    async fn list_conversations(
        &self,
        req: Request<v1::ListConversationsRequest>,
    ) -> Result<Response<v1::ListConversationsResponse>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let result = async {
            authorize(&op, "ListConversations", Need::Read)?;
            if !r.page_token.is_empty() {
                check_id("page_token", &r.page_token)?;
            }
            let page = self
                .shared
                .store
                .list_conversations(
                    (!r.page_token.is_empty()).then_some(r.page_token.as_str()),
                    page_size(r.page_size),
                )
                .await
                .map_err(store_status)?;
            let mut conversations = Vec::with_capacity(page.items.len());
            for c in page.items {
                conversations.push(self.conversation(&c.id, false).await?);
            }
            Ok(v1::ListConversationsResponse {
                conversations,
                next_page_token: page.next.unwrap_or_default(),
            })
        }
        .await;
        self.audit(&op, "ListConversations", "", String::new(), &result)
            .await;
        result.map(Response::new)
    }

    async fn update_conversation(
        &self,
        req: Request<v1::UpdateConversationRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let detail = format!(
            "rename={}{}",
            r.title.is_some(),
            r.archived
                .map(|a| format!(" archived={a}"))
                .unwrap_or_default()
        );
        let result = async {
            authorize(&op, "UpdateConversation", Need::Group(&r.conversation_id))?;
            check_id("conversation", &r.conversation_id)?;
            if r.title.as_ref().is_some_and(|t| t.len() > 256) {
                return Err(Status::invalid_argument("title is longer than 256 bytes"));
            }
            if r.title.is_none() && r.archived.is_none() {
                return Err(Status::invalid_argument(
                    "nothing to change: give a title and/or archived",
                ));
            }
            self.shared
                .store
                .update_conversation(&r.conversation_id, r.title.clone(), r.archived)
                .await
                .map_err(store_status)?;
            self.shared
                .rosters_changed(std::slice::from_ref(&r.conversation_id))
                .await;
            self.conversation(&r.conversation_id, true).await
        }
        .await;
        self.audit(
            &op,
            "UpdateConversation",
            &r.conversation_id,
            detail,
            &result,
        )
        .await;
        result.map(Response::new)
    }

    async fn add_members(
        &self,
        req: Request<v1::AddMembersRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let detail = format!("members={}", r.members.len());
        let result = async {
            authorize(&op, "AddMembers", Need::Group(&r.conversation_id))?;
            check_id("conversation", &r.conversation_id)?;
            let members = members_from(r.members)?;
            self.shared
                .store
                .put_members(&r.conversation_id, members)
                .await
                .map_err(store_status)?;
            self.shared
                .rosters_changed(std::slice::from_ref(&r.conversation_id))
                .await;
            self.conversation(&r.conversation_id, true).await
        }
        .await;
        self.audit(&op, "AddMembers", &r.conversation_id, detail, &result)
            .await;
        result.map(Response::new)
    }

    async fn remove_members(
        &self,
        req: Request<v1::RemoveMembersRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let detail = format!("members={}", r.account_ids.len());
        let result = async {
            authorize(&op, "RemoveMembers", Need::Group(&r.conversation_id))?;
            check_id("conversation", &r.conversation_id)?;
            for a in &r.account_ids {
                check_id("account", a)?;
            }
            self.shared
                .store
                .remove_members(&r.conversation_id, r.account_ids.clone())
                .await
                .map_err(store_status)?;
            self.shared
                .rosters_changed(std::slice::from_ref(&r.conversation_id))
                .await;
            self.conversation(&r.conversation_id, true).await
        }
        .await;
        self.audit(&op, "RemoveMembers", &r.conversation_id, detail, &result)
            .await;
        result.map(Response::new)
    }

    async fn set_policy(
        &self,
        req: Request<v1::SetPolicyRequest>,
    ) -> Result<Response<v1::PolicyView>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let org = r.conversation_id.is_empty();
        let target = if org {
            "org"
        } else {
            r.conversation_id.as_str()
        }
        .to_owned();
        let detail = r.policy.as_ref().map(policy_detail).unwrap_or_default();
        let result = async {
            if org {
                authorize(&op, "SetPolicy", Need::Org)?;
            } else {
                authorize(&op, "SetPolicy", Need::Group(&r.conversation_id))?;
                check_id("conversation", &r.conversation_id)?;
            }
            let p = r
                .policy
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("policy is missing"))?;
            let policy = validate_policy(p, org, &self.shared.limits)?;
            let scope = if org {
                PolicyScope::Org
            } else {
                PolicyScope::Conversation(r.conversation_id.clone())
            };
            self.shared
                .store
                .put_policy(scope, policy)
                .await
                .map_err(store_status)?;
            if org {
                self.shared.rosters_changed(&[]).await;
            } else {
                self.shared
                    .rosters_changed(std::slice::from_ref(&r.conversation_id))
                    .await;
            }
            self.policy_view(&r.conversation_id).await
        }
        .await;
        self.audit(&op, "SetPolicy", &target, detail, &result).await;
        result.map(Response::new)
    }

    async fn get_policy(
        &self,
        req: Request<v1::GetPolicyRequest>,
    ) -> Result<Response<v1::PolicyView>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let result = async {
            authorize(&op, "GetPolicy", Need::Read)?;
            if !r.conversation_id.is_empty() {
                check_id("conversation", &r.conversation_id)?;
            }
            self.policy_view(&r.conversation_id).await
        }
        .await;
        self.audit(&op, "GetPolicy", &r.conversation_id, String::new(), &result)
            .await;
        result.map(Response::new)
    }

    async fn import_roster(
        &self,
        req: Request<v1::ImportRosterRequest>,
    ) -> Result<Response<v1::ImportRosterResponse>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let lines = match (r.rows.first(), r.rows.last()) {
            (Some(a), Some(b)) => format!("lines {}-{}", a.line, b.line),
            _ => "no rows".into(),
        };
        let result = async {
            authorize(&op, "ImportRoster", Need::Org)?;
            self.import(r).await
        }
        .await;
        let detail = match &result {
            Ok(o) => format!(
                "{lines}: created={} unchanged={} failed={} conversations_created={}",
                o.created, o.unchanged, o.failed, o.conversations_created
            ),
            Err(_) => lines,
        };
        self.audit(&op, "ImportRoster", "", detail, &result).await;
        result.map(Response::new)
    }

    async fn list_audit_log(
        &self,
        req: Request<v1::ListAuditLogRequest>,
    ) -> Result<Response<v1::ListAuditLogResponse>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let result = async {
            authorize(&op, "ListAuditLog", Need::AuditRead)?;
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
                .shared
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
        }
        .await;
        // Reading the audit log is itself an audited action.
        self.audit(&op, "ListAuditLog", "", String::new(), &result)
            .await;
        result.map(Response::new)
    }
}

impl AdminService {
    async fn policy_view(&self, conversation_id: &str) -> Result<v1::PolicyView, Status> {
        let store = &self.shared.store;
        let org = self.org_policy().await?;
        if conversation_id.is_empty() {
            let eff = Effective::org(&self.shared.limits, org.as_ref());
            return Ok(v1::PolicyView {
                conversation_id: String::new(),
                set: Some(policy_to(&org.unwrap_or_default())),
                effective: Some(policy_to(&eff.as_policy())),
            });
        }
        let conv = store
            .get_conversation(conversation_id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no conversation {conversation_id:?}")))?;
        let set = store
            .get_policy(PolicyScope::Conversation(conversation_id.to_owned()))
            .await
            .map_err(store_status)?;
        let eff = Effective::resolve(
            &self.shared.limits,
            org.as_ref(),
            set.as_ref(),
            conv.default_ttl_seconds,
        );
        Ok(v1::PolicyView {
            conversation_id: conversation_id.to_owned(),
            set: Some(policy_to(&set.unwrap_or_default())),
            effective: Some(policy_to(&eff.as_policy())),
        })
    }

    /// One batch of an import: see docs/admin.md, "Bulk provisioning".
    async fn import(&self, r: v1::ImportRosterRequest) -> Result<v1::ImportRosterResponse, Status> {
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
        let store = &self.shared.store;
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
                self.shared.rosters_changed(&touched).await;
            }
            return Err(e);
        }
        if !touched.is_empty() {
            self.shared.rosters_changed(&touched).await;
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
    async fn import_account(&self, row: &Row, now: i64) -> Result<AccountOutcome, String> {
        let store = &self.shared.store;
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

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        req: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let r = req.into_inner();
        let result = async {
            check_id("device", &r.device_id)?;
            valid_public_key(&r.public_key)?;
            if r.code.trim().is_empty() || r.code.len() > 64 {
                return Err(Status::invalid_argument("code is empty or too long"));
            }
            let store = &self.shared.store;
            let org = store
                .get_policy(PolicyScope::Org)
                .await
                .map_err(store_status)?;
            let limit = Effective::org(&self.shared.limits, org.as_ref()).max_devices;
            let device = herold_store::Device {
                id: r.device_id.clone(),
                account_id: String::new(),
                public_key: r.public_key,
                revoked: false,
                created_at_ms: now_ms(),
            };
            let d = store
                .redeem_enrollment_code(&code_hash(&r.code), device, now_ms(), limit)
                .await
                .map_err(store_status)?;
            devices_changed(&self.shared, &d.account_id).await;
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
        record_audit(
            &self.shared,
            &operator,
            "Enroll",
            &r.device_id,
            outcome,
            detail,
        )
        .await;
        result.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_printable_and_forgiving() {
        let (code, hash) = new_code().unwrap();
        assert_eq!(code.len(), 14);
        assert!(
            code.chars()
                .all(|c| c == '-' || CODE_ALPHABET.contains(&(c as u8)))
        );
        assert_eq!(code_hash(&code.to_lowercase().replace('-', " ")), hash);
        assert_eq!(code_hash("0O1I-L"), code_hash("00111"));
        let (other, _) = new_code().unwrap();
        assert_ne!(code, other);
    }

    #[test]
    fn station_slugs_and_ids() {
        assert_eq!(
            slug("  Grundschule Türkenstraße 1 "),
            "grundschule-tuerkenstrasse-1"
        );
        assert_eq!(slug("***"), "");
        let a = derived_account_id("election-2026", "WL 001", "Anna Huber");
        assert_eq!(
            a,
            derived_account_id("election-2026", "WL 001", " Anna Huber ")
        );
        assert_ne!(
            a,
            derived_account_id("election-2026", "WL 002", "Anna Huber")
        );
        assert!(ids::validate_id("account", &a).is_ok());
    }

    #[test]
    fn roles_authorize() {
        let op = |role, groups: &[&str]| Operator {
            name: "x".into(),
            role,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        };
        let org = op(OperatorRole::OrgAdmin, &[]);
        let lead = op(OperatorRole::GroupAdmin, &["g1"]);
        let auditor = op(OperatorRole::Auditor, &[]);
        assert!(authorize(&org, "X", Need::Org).is_ok());
        assert!(authorize(&lead, "X", Need::Group("g1")).is_ok());
        assert_eq!(
            authorize(&lead, "X", Need::Group("g2")).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(authorize(&lead, "X", Need::Org).is_err());
        assert!(authorize(&lead, "X", Need::AuditRead).is_err());
        assert!(authorize(&auditor, "X", Need::AuditRead).is_ok());
        assert!(authorize(&auditor, "X", Need::Read).is_ok());
        assert!(authorize(&auditor, "X", Need::Group("g1")).is_err());
    }
}
