//! The gRPC admin API (foundation subset): accounts, devices, conversations
//! and members. Every change invalidates the roster cache; revoking a device
//! or deleting an account disconnects its sessions at once.

use std::sync::Arc;

use herold_proto::ids;
use herold_proto::v1::admin_server::{Admin, AdminServer};
use herold_proto::v1::{self, ErrorCode};
use herold_store::{ConversationKind, Role, StoreError};
use tonic::{Request, Response, Status};

use crate::registry::Kick;
use crate::server::{Shared, now_ms};

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

/// Serves the admin API on `listener` until `shutdown` completes. With a
/// token, every call must carry `authorization: Bearer <token>`.
pub(crate) async fn serve(
    svc: AdminService,
    token: Option<String>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let expected = token.map(|t| format!("Bearer {t}"));
    let check = move |req: Request<()>| -> Result<Request<()>, Status> {
        let Some(expected) = &expected else {
            return Ok(req);
        };
        match req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
        {
            Some(got) if constant_time_eq(got.as_bytes(), expected.as_bytes()) => Ok(req),
            Some(_) => Err(Status::unauthenticated("the bearer token is wrong")),
            None => Err(Status::unauthenticated(
                "missing authorization: Bearer <token>",
            )),
        }
    };
    tonic::transport::Server::builder()
        .add_service(AdminServer::with_interceptor(svc, check))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

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
        StoreError::Closed | StoreError::Backend(_) | StoreError::Corrupt { .. } => {
            tracing::warn!(error = %e, "admin: store failed");
            Status::unavailable("storage is unavailable")
        }
        #[allow(unreachable_patterns)]
        _ => Status::internal(e.to_string()),
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

impl AdminService {
    async fn conversation(&self, id: &str) -> Result<v1::Conversation, Status> {
        let store = &self.shared.store;
        let c = store
            .get_conversation(id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no conversation {id:?}")))?;
        let members = store.members(id).await.map_err(store_status)?;
        Ok(v1::Conversation {
            conversation_id: c.id,
            kind: kind_to(c.kind) as i32,
            title: c.title,
            members: members
                .into_iter()
                .map(|m| v1::Member {
                    account_id: m.account_id,
                    role: role_to(m.role) as i32,
                })
                .collect(),
            default_ttl_seconds: c.default_ttl_seconds,
        })
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_account(
        &self,
        req: Request<v1::CreateAccountRequest>,
    ) -> Result<Response<v1::Account>, Status> {
        let r = req.into_inner();
        check_id("account", &r.account_id)?;
        if r.display_name.len() > 256 {
            return Err(Status::invalid_argument(
                "display_name is longer than 256 bytes",
            ));
        }
        let a = herold_store::Account {
            id: r.account_id,
            display_name: r.display_name,
            created_at_ms: now_ms(),
        };
        self.shared
            .store
            .create_account(a.clone())
            .await
            .map_err(store_status)?;
        Ok(Response::new(v1::Account {
            account_id: a.id,
            display_name: a.display_name,
            created_at_ms: a.created_at_ms,
        }))
    }

    async fn get_account(
        &self,
        req: Request<v1::GetAccountRequest>,
    ) -> Result<Response<v1::Account>, Status> {
        let r = req.into_inner();
        check_id("account", &r.account_id)?;
        let a = self
            .shared
            .store
            .get_account(&r.account_id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no account {:?}", r.account_id)))?;
        Ok(Response::new(v1::Account {
            account_id: a.id,
            display_name: a.display_name,
            created_at_ms: a.created_at_ms,
        }))
    }

    async fn delete_account(
        &self,
        req: Request<v1::DeleteAccountRequest>,
    ) -> Result<Response<v1::DeleteAccountResponse>, Status> {
        let r = req.into_inner();
        check_id("account", &r.account_id)?;
        let store = &self.shared.store;
        let devices = store
            .list_devices(&r.account_id)
            .await
            .map_err(store_status)?;
        let purge = store
            .delete_account(&r.account_id)
            .await
            .map_err(store_status)?;
        self.shared.rosters_changed(&[]).await;
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
        Ok(Response::new(v1::DeleteAccountResponse {
            devices_removed: purge.devices,
            memberships_removed: purge.memberships,
        }))
    }

    async fn register_device(
        &self,
        req: Request<v1::RegisterDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let r = req.into_inner();
        check_id("account", &r.account_id)?;
        check_id("device", &r.device_id)?;
        let key: [u8; 32] = r.public_key.as_slice().try_into().map_err(|_| {
            Status::invalid_argument(format!(
                "public_key must be a 32-byte Ed25519 key, not {} bytes",
                r.public_key.len()
            ))
        })?;
        if ed25519_dalek::VerifyingKey::from_bytes(&key).is_err() {
            return Err(Status::invalid_argument(
                "public_key is not a valid Ed25519 point",
            ));
        }
        let d = herold_store::Device {
            id: r.device_id,
            account_id: r.account_id,
            public_key: r.public_key,
            revoked: false,
            created_at_ms: now_ms(),
        };
        self.shared
            .store
            .add_device(d.clone(), self.shared.limits.max_devices_per_account)
            .await
            .map_err(store_status)?;
        self.shared.rosters_changed(&[]).await;
        Ok(Response::new(device_to(d)))
    }

    async fn list_devices(
        &self,
        req: Request<v1::ListDevicesRequest>,
    ) -> Result<Response<v1::ListDevicesResponse>, Status> {
        let r = req.into_inner();
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
        Ok(Response::new(v1::ListDevicesResponse {
            devices: devices.into_iter().map(device_to).collect(),
        }))
    }

    async fn revoke_device(
        &self,
        req: Request<v1::RevokeDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let r = req.into_inner();
        check_id("device", &r.device_id)?;
        let d = self
            .shared
            .store
            .revoke_device(&r.device_id)
            .await
            .map_err(store_status)?;
        self.shared.rosters_changed(&[]).await;
        self.shared
            .kick_devices(
                std::slice::from_ref(&d.id),
                Kick {
                    code: ErrorCode::DeviceRevoked,
                    message: "this device was revoked".into(),
                },
            )
            .await;
        Ok(Response::new(device_to(d)))
    }

    async fn create_conversation(
        &self,
        req: Request<v1::CreateConversationRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        let r = req.into_inner();
        check_id("conversation", &r.conversation_id)?;
        if r.title.len() > 256 {
            return Err(Status::invalid_argument("title is longer than 256 bytes"));
        }
        let kind = kind_from(r.kind)?;
        let members = members_from(r.members)?;
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
        Ok(Response::new(self.conversation(&r.conversation_id).await?))
    }

    async fn get_conversation(
        &self,
        req: Request<v1::GetConversationRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        let r = req.into_inner();
        check_id("conversation", &r.conversation_id)?;
        Ok(Response::new(self.conversation(&r.conversation_id).await?))
    }

    async fn add_members(
        &self,
        req: Request<v1::AddMembersRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        let r = req.into_inner();
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
        Ok(Response::new(self.conversation(&r.conversation_id).await?))
    }

    async fn remove_members(
        &self,
        req: Request<v1::RemoveMembersRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        let r = req.into_inner();
        check_id("conversation", &r.conversation_id)?;
        for a in &r.account_ids {
            check_id("account", a)?;
        }
        self.shared
            .store
            .remove_members(&r.conversation_id, r.account_ids)
            .await
            .map_err(store_status)?;
        self.shared
            .rosters_changed(std::slice::from_ref(&r.conversation_id))
            .await;
        Ok(Response::new(self.conversation(&r.conversation_id).await?))
    }
}
