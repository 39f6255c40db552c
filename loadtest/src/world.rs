//! The simulated population: accounts, devices and conversations built from
//! a scenario, and their provisioning through the admin API.

use std::sync::Arc;

use anyhow::Context;
use ed25519_dalek::SigningKey;
use herold_client::admin::AdminClient;
use herold_proto::v1;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::scenario::{Kind, Scenario};
use crate::slice::Slice;

/// An account of the run.
#[derive(Debug)]
pub struct Account {
    /// Account id.
    pub id: String,
    /// Indices into [`World::devices`].
    pub devices: Vec<usize>,
}

/// A device of the run.
#[derive(Debug)]
pub struct Device {
    /// Device id.
    pub id: String,
    /// Index into [`World::accounts`].
    pub account: usize,
    /// Its key.
    pub key: SigningKey,
}

/// A conversation of the run.
#[derive(Debug)]
pub struct Conversation {
    /// Conversation id.
    pub id: String,
    /// Kind.
    pub kind: Kind,
    /// Member accounts.
    pub members: Vec<usize>,
    /// Accounts that may post.
    pub senders: Vec<usize>,
    /// Devices that receive every message (all devices of all members).
    pub devices: usize,
}

/// Everything a run simulates.
#[derive(Debug, Default)]
pub struct World {
    /// Accounts.
    pub accounts: Vec<Account>,
    /// Devices.
    pub devices: Vec<Device>,
    /// Conversations.
    pub conversations: Vec<Conversation>,
    /// Conversation indices per class, in scenario order.
    pub classes: Vec<Vec<usize>>,
}

impl World {
    /// Builds the population of `scenario`; ids start with `prefix` so runs
    /// against the same relay do not collide.
    pub fn build(scenario: &Scenario, prefix: &str) -> anyhow::Result<Self> {
        let mut w = World::default();
        let mut cohort_accounts: Vec<Vec<usize>> = Vec::new();
        for c in &scenario.cohorts {
            let mut ids = Vec::new();
            for i in 0..scenario.scaled_accounts(c) {
                let account = w.accounts.len();
                let id = format!("{prefix}-{}-{i}", c.name);
                let mut devices = Vec::new();
                for d in 0..c.devices_per_account {
                    devices.push(w.devices.len());
                    w.devices.push(Device {
                        id: format!("{id}.d{d}"),
                        account,
                        key: herold_client::generate_key()?,
                    });
                }
                w.accounts.push(Account { id, devices });
                ids.push(account);
            }
            cohort_accounts.push(ids);
        }
        let cohort = |name: &str| -> &[usize] {
            scenario
                .cohorts
                .iter()
                .position(|c| c.name == name)
                .map_or(&[][..], |i| &cohort_accounts[i][..])
        };
        for k in &scenario.conversations {
            let n = scenario.scaled_count(k);
            let mut class = Vec::new();
            for i in 0..n {
                let mut members: Vec<usize> = Vec::new();
                match k.kind {
                    Kind::Direct => {
                        let a = cohort(&k.split[0]);
                        let b = cohort(&k.everyone[0]);
                        members.push(a[i % a.len()]);
                        members.push(b[i % b.len()]);
                        if members[0] == members[1] {
                            continue;
                        }
                    }
                    Kind::Group | Kind::Channel => {
                        for s in &k.split {
                            let all = cohort(s);
                            // Account j goes to conversation j mod n.
                            members.extend(all.iter().skip(i).step_by(n).copied());
                        }
                        for e in &k.everyone {
                            members.extend_from_slice(cohort(e));
                        }
                    }
                }
                members.sort_unstable();
                members.dedup();
                if members.is_empty() {
                    continue;
                }
                let senders = if k.kind == Kind::Channel {
                    let publishers: Vec<usize> = k
                        .publishers
                        .iter()
                        .flat_map(|p| cohort(p).to_vec())
                        .collect();
                    members
                        .iter()
                        .copied()
                        .filter(|m| publishers.contains(m))
                        .collect()
                } else {
                    members.clone()
                };
                let devices = members.iter().map(|m| w.accounts[*m].devices.len()).sum();
                class.push(w.conversations.len());
                w.conversations.push(Conversation {
                    id: format!("{prefix}-{}-{i}", k.name),
                    kind: k.kind,
                    members,
                    senders,
                    devices,
                });
            }
            anyhow::ensure!(
                !class.is_empty(),
                "conversation class {:?} ends up empty at scale {}",
                k.name,
                scenario.scale
            );
            w.classes.push(class);
        }
        Ok(w)
    }

    /// Creates every account and conversation and the devices of `slice`'s
    /// accounts through the admin API, `concurrency` calls at a time. What
    /// exists already (made by another slice of the run) is taken as it is.
    pub async fn provision(
        self: &Arc<Self>,
        admin: AdminClient<Channel>,
        token: Option<String>,
        concurrency: usize,
        progress: &indicatif::ProgressBar,
        slice: Slice,
    ) -> anyhow::Result<()> {
        let auth: Option<MetadataValue<Ascii>> = match token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .context("the admin token is not a valid header value")?,
            ),
            None => None,
        };
        let limit = Arc::new(Semaphore::new(concurrency.max(1)));
        progress.set_length((self.accounts.len() + self.conversations.len()) as u64);
        let mut tasks = JoinSet::new();
        for a in 0..self.accounts.len() {
            let (w, mut admin, limit, auth) =
                (self.clone(), admin.clone(), limit.clone(), auth.clone());
            tasks.spawn(async move {
                let _p = limit.acquire().await?;
                let acc = &w.accounts[a];
                let created = admin
                    .create_account(request(
                        v1::CreateAccountRequest {
                            account_id: acc.id.clone(),
                            display_name: String::new(),
                            tags: Vec::new(),
                        },
                        &auth,
                    ))
                    .await;
                exists_is_fine(created).with_context(|| format!("creating account {}", acc.id))?;
                if !slice.owns_account(a) {
                    return anyhow::Ok(());
                }
                for d in &acc.devices {
                    let dev = &w.devices[*d];
                    admin
                        .register_device(request(
                            v1::RegisterDeviceRequest {
                                account_id: acc.id.clone(),
                                device_id: dev.id.clone(),
                                public_key: dev.key.verifying_key().to_bytes().to_vec(),
                            },
                            &auth,
                        ))
                        .await
                        .with_context(|| format!("enrolling device {}", dev.id))?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
            progress.inc(1);
        }
        for c in 0..self.conversations.len() {
            let (w, mut admin, limit, auth) =
                (self.clone(), admin.clone(), limit.clone(), auth.clone());
            tasks.spawn(async move {
                let _p = limit.acquire().await?;
                let conv = &w.conversations[c];
                let kind = match conv.kind {
                    Kind::Group => v1::ConversationKind::Group,
                    Kind::Channel => v1::ConversationKind::Channel,
                    Kind::Direct => v1::ConversationKind::Direct,
                };
                let members = conv
                    .members
                    .iter()
                    .map(|m| v1::Member {
                        account_id: w.accounts[*m].id.clone(),
                        role: if conv.kind == Kind::Channel && conv.senders.contains(m) {
                            v1::Role::Publisher as i32
                        } else {
                            v1::Role::Member as i32
                        },
                    })
                    .collect();
                let created = admin
                    .create_conversation(request(
                        v1::CreateConversationRequest {
                            conversation_id: conv.id.clone(),
                            kind: kind as i32,
                            title: String::new(),
                            members,
                            default_ttl_seconds: 0,
                            sub_groups: 0,
                        },
                        &auth,
                    ))
                    .await;
                exists_is_fine(created)
                    .with_context(|| format!("creating conversation {}", conv.id))?;
                anyhow::Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
            progress.inc(1);
        }
        Ok(())
    }
}

/// A creation's answer, with "it exists already" (another slice of the
/// run made it: every slice derives the same world) taken as success.
fn exists_is_fine<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<(), tonic::Status> {
    match r {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(s) => Err(s),
    }
}

/// An admin request, with the bearer token if there is one.
fn request<T>(message: T, auth: &Option<MetadataValue<Ascii>>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(a) = auth {
        r.metadata_mut().insert("authorization", a.clone());
    }
    r
}
