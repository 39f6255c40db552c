//! The gRPC admin API, the management cockpit: service `Admin` (accounts,
//! devices and enrollment codes, groups and channels, policies, bulk
//! roster import, audit log) for operators, service `Enrollment` for
//! devices redeeming a one-time code, and the standard gRPC health and
//! reflection services, all on the admin port.
//!
//! Every `Admin` call is authenticated by the interceptor (see
//! [`crate::operators`]), which puts the [`Operator`] into the request's
//! extensions; each handler runs through `AdminService::audited` (in
//! `audit`), which authorises the operator against its role, runs the call
//! and records it in the audit log (ids, parameters and outcome; never
//! message content), refusals included. One module per area: `accounts`,
//! `devices`, `enrollment`, `conversations`, `policy`, `import`, `audit`,
//! `authz` (roles and rights) and `convert` (API and store types, ids,
//! pages). Directory changes go through [`Cluster::rosters_changed`], and
//! cutting devices off through [`Cluster::kick_devices`], so they reach every
//! relay of the cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt;
use herold_proto::ids;
use herold_proto::v1::admin_server::{Admin, AdminServer};
use herold_proto::v1::enrollment_server::{Enrollment, EnrollmentServer};
use herold_proto::v1::{self, ErrorCode};
use herold_store::{
    AccountState, AuditEntry, ConversationKind, DirectChats, Policy, PolicyScope, Role, Store,
    StoreError,
};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::cluster::Cluster;
use crate::config::{Config, Limits};
use crate::node::{Shared, now_ms};
use crate::operators::{Auth, Operator, OperatorRole};
use crate::policy::{Effective, MAX_DEVICES_CEILING};
use crate::rate::Buckets;
use crate::registry::Kick;

mod accounts;
mod audit;
mod authz;
mod conversations;
mod convert;
mod devices;
mod enrollment;
mod import;
mod policy;
mod subgroups;
#[cfg(test)]
mod tests;

use audit::*;
use authz::*;
use convert::*;
use devices::*;

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

/// Addresses whose failed enrollments are tracked at once before those
/// that failed nothing lately are forgotten.
const MAX_RATED_ENROLL_ADDRESSES: usize = 100_000;

/// What the admin API needs of the node: the store, the limits, and the
/// cluster, through which directory changes and cut-offs reach every relay.
#[derive(Debug)]
pub(crate) struct AdminNode {
    /// This relay's node id: the name of its audit chain.
    node_id: String,
    store: Arc<dyn Store>,
    limits: Limits,
    cluster: Arc<Cluster>,
    /// Failed enrollments per address (`crate::admission::address_key`).
    enroll_failures: Buckets,
}

impl AdminNode {
    pub fn new(shared: &Shared) -> Arc<Self> {
        Arc::new(Self {
            node_id: shared.node_id.clone(),
            store: shared.store.clone(),
            limits: shared.limits.clone(),
            cluster: shared.cluster.clone(),
            enroll_failures: Buckets::new(
                shared.limits.enroll_failure_rate,
                MAX_RATED_ENROLL_ADDRESSES,
            ),
        })
    }

    async fn rosters_changed(&self, conversations: &[String]) {
        self.cluster.rosters_changed(conversations).await;
    }

    async fn kick_devices(&self, devices: &[String], why: Kick) {
        self.cluster.kick_devices(devices, why).await;
    }

    /// A cut-off (revoke, delete, suspend) whose store write failed with
    /// `e`: if the write may have been applied all the same (the answer
    /// was lost, not the write refused), the devices are cut off and every
    /// roster dropped anyway. Cutting off a device whose revocation did not
    /// land costs it a reconnect; leaving one connected whose revocation
    /// did would keep a lost phone reading.
    async fn cut_off_after_failure(&self, e: &StoreError, devices: &[String], why: Kick) {
        if matches!(e, StoreError::Backend(_) | StoreError::Closed) && !devices.is_empty() {
            self.rosters_changed(&[]).await;
            self.kick_devices(devices, why).await;
        }
    }
}

/// The admin API's TLS, read now so that a bad file fails at start.
pub(crate) fn tls_config(
    config: &Config,
) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    let Some(t) = &config.admin_tls else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| {
        std::fs::read(p).with_context(|| format!("reading admin TLS file {}", p.display()))
    };
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(read(&t.cert)?, read(&t.key)?),
    );
    if let Some(ca) = &t.client_ca {
        // Optional: operators may authenticate with a token instead.
        tls = tls
            .client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?))
            .client_auth_optional(true);
    }
    Ok(Some(tls))
}

/// Who may call the admin API: the operators file plus the single token;
/// nobody configured means open (loopback only, checked by the config).
pub(crate) fn auth(config: &Config) -> crate::operators::Auth {
    let mut ops = config.admin_operators.clone();
    if let Some(token) = &config.admin_token {
        ops.push(crate::operators::OperatorEntry {
            name: "admin".into(),
            role: crate::operators::OperatorRole::OrgAdmin,
            token: Some(token.clone()),
            cert_sha256: None,
            groups: Vec::new(),
        });
    }
    if ops.is_empty() {
        crate::operators::Auth::Open
    } else {
        crate::operators::Auth::Operators(ops)
    }
}

/// The admin service.
#[derive(Debug, Clone)]
pub(crate) struct AdminService {
    node: Arc<AdminNode>,
}

impl AdminService {
    pub fn new(node: Arc<AdminNode>) -> Self {
        Self { node }
    }
}

/// The enrollment service: no operator, a one-time code instead.
#[derive(Debug, Clone)]
pub(crate) struct EnrollmentService {
    node: Arc<AdminNode>,
}

/// Serves the admin API on `listener` until `shutdown` completes: TLS when
/// `tls` is given (client certificates verified against its CA, if any),
/// operators authenticated by `auth`, and the gRPC health service whose
/// status the relay's readiness sets (`crate::health`).
pub(crate) async fn serve(
    node: Arc<AdminNode>,
    auth: Auth,
    tls: Option<tonic::transport::ServerTlsConfig>,
    listener: tokio::net::TcpListener,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // Failed authentications go to the audit log through a task: the
    // interceptor cannot wait for the store. A full queue drops them (the
    // metric still counts them).
    let (failures_tx, failures_rx) = tokio::sync::mpsc::channel::<String>(1024);
    let recorder = tokio::spawn(audit::record_auth_failures(node.clone(), failures_rx));
    let check = move |mut req: Request<()>| -> Result<Request<()>, Status> {
        let bearer = req
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("<not ascii>").to_owned());
        let cert_fp = req
            .peer_certs()
            .and_then(|c| c.first().map(|c| crate::tls::fingerprint(c.as_ref())));
        let op = auth
            .identify(bearer.as_deref(), cert_fp.as_deref())
            .inspect_err(|e| {
                metrics::counter!(crate::metrics::ADMIN_AUTH_FAILURES).increment(1);
                let _ = failures_tx.try_send(e.message().to_owned());
            })?;
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
            AdminService::new(node.clone()),
            check,
        ))
        .add_service(EnrollmentServer::new(EnrollmentService::new(node)))
        .add_service(health_service)
        .add_optional_service(reflection);
    let served = router
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await;
    recorder.abort();
    served
}

fn random_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

/// Every call is served by the method of the same name in its area's
/// module (`accounts`, `devices`, ...), which `AdminService` has as an
/// inherent method: the trait only dispatches.
#[tonic::async_trait]
impl Admin for AdminService {
    async fn who_am_i(
        &self,
        req: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::Operator>, Status> {
        AdminService::who_am_i(self, req).await
    }

    async fn revoke_enrollment_codes(
        &self,
        req: Request<v1::RevokeEnrollmentCodesRequest>,
    ) -> Result<Response<v1::Account>, Status> {
        AdminService::revoke_enrollment_codes(self, req).await
    }

    async fn create_account(
        &self,
        req: Request<v1::CreateAccountRequest>,
    ) -> Result<Response<v1::Account>, Status> {
        AdminService::create_account(self, req).await
    }

    async fn get_account(
        &self,
        req: Request<v1::GetAccountRequest>,
    ) -> Result<Response<v1::Account>, Status> {
        AdminService::get_account(self, req).await
    }

    async fn list_accounts(
        &self,
        req: Request<v1::ListAccountsRequest>,
    ) -> Result<Response<v1::ListAccountsResponse>, Status> {
        AdminService::list_accounts(self, req).await
    }

    async fn suspend_account(
        &self,
        req: Request<v1::SuspendAccountRequest>,
    ) -> Result<Response<v1::Account>, Status> {
        AdminService::suspend_account(self, req).await
    }

    async fn delete_account(
        &self,
        req: Request<v1::DeleteAccountRequest>,
    ) -> Result<Response<v1::DeleteAccountResponse>, Status> {
        AdminService::delete_account(self, req).await
    }

    async fn delete_accounts(
        &self,
        req: Request<v1::DeleteAccountsRequest>,
    ) -> Result<Response<v1::DeleteAccountsResponse>, Status> {
        AdminService::delete_accounts(self, req).await
    }

    async fn register_device(
        &self,
        req: Request<v1::RegisterDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        AdminService::register_device(self, req).await
    }

    async fn list_devices(
        &self,
        req: Request<v1::ListDevicesRequest>,
    ) -> Result<Response<v1::ListDevicesResponse>, Status> {
        AdminService::list_devices(self, req).await
    }

    async fn revoke_device(
        &self,
        req: Request<v1::RevokeDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        AdminService::revoke_device(self, req).await
    }

    async fn issue_enrollment_codes(
        &self,
        req: Request<v1::IssueEnrollmentCodesRequest>,
    ) -> Result<Response<v1::IssueEnrollmentCodesResponse>, Status> {
        AdminService::issue_enrollment_codes(self, req).await
    }

    async fn create_conversation(
        &self,
        req: Request<v1::CreateConversationRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        AdminService::create_conversation(self, req).await
    }

    async fn get_conversation(
        &self,
        req: Request<v1::GetConversationRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        AdminService::get_conversation(self, req).await
    }

    async fn list_conversations(
        &self,
        req: Request<v1::ListConversationsRequest>,
    ) -> Result<Response<v1::ListConversationsResponse>, Status> {
        AdminService::list_conversations(self, req).await
    }

    async fn update_conversation(
        &self,
        req: Request<v1::UpdateConversationRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        AdminService::update_conversation(self, req).await
    }

    async fn add_members(
        &self,
        req: Request<v1::AddMembersRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        AdminService::add_members(self, req).await
    }

    async fn remove_members(
        &self,
        req: Request<v1::RemoveMembersRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        AdminService::remove_members(self, req).await
    }

    async fn set_policy(
        &self,
        req: Request<v1::SetPolicyRequest>,
    ) -> Result<Response<v1::PolicyView>, Status> {
        AdminService::set_policy(self, req).await
    }

    async fn get_policy(
        &self,
        req: Request<v1::GetPolicyRequest>,
    ) -> Result<Response<v1::PolicyView>, Status> {
        AdminService::get_policy(self, req).await
    }

    async fn import_roster(
        &self,
        req: Request<v1::ImportRosterRequest>,
    ) -> Result<Response<v1::ImportRosterResponse>, Status> {
        AdminService::import_roster(self, req).await
    }

    async fn list_audit_log(
        &self,
        req: Request<v1::ListAuditLogRequest>,
    ) -> Result<Response<v1::ListAuditLogResponse>, Status> {
        AdminService::list_audit_log(self, req).await
    }
}
