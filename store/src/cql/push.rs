//! Push endpoints on CQL (migration 11): one row per device, naming the
//! device's incarnation, deleted with the device's revocation or account.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::CqlStore;
use crate::StoreError;

/// The statements of push endpoints, prepared once.
#[derive(Debug)]
pub(super) struct PushStatements {
    put: PreparedStatement,
    get: PreparedStatement,
    delete: PreparedStatement,
}

impl PushStatements {
    pub(super) async fn prepare(s: &Session, ks: &str) -> Result<Self, StoreError> {
        let p = |cql: String| async move {
            let mut st = s.prepare(cql.clone()).await.map_err(|e| {
                StoreError::Backend(format!(
                    "cql prepare {cql:?}: {e} (is keyspace {ks} migrated to version 11?)"
                ))
            })?;
            st.set_is_idempotent(true);
            Ok::<_, StoreError>(st)
        };
        Ok(Self {
            put: p(format!("INSERT INTO {ks}.push_endpoints (device_id, incarnation, endpoint) VALUES (?, ?, ?)")).await?,
            get: p(format!("SELECT incarnation, endpoint FROM {ks}.push_endpoints WHERE device_id = ?")).await?,
            delete: p(format!("DELETE FROM {ks}.push_endpoints WHERE device_id = ?")).await?,
        })
    }
}

impl CqlStore {
    pub(super) async fn p_set(
        &self,
        device_id: &str,
        endpoint: Option<String>,
    ) -> Result<(), StoreError> {
        let incarnation = match self.device_row(device_id).await? {
            Some((d, incarnation)) if !d.revoked => incarnation,
            _ => return Err(StoreError::NoSuchDevice(device_id.to_owned())),
        };
        match endpoint {
            Some(e) => {
                self.exec(
                    &self.push.put,
                    (device_id, incarnation, e),
                    "write push endpoint",
                )
                .await?;
            }
            None => self.delete_push_endpoint(device_id).await?,
        }
        Ok(())
    }

    pub(super) async fn p_get(&self, device_id: &str) -> Result<Option<String>, StoreError> {
        let incarnation = match self.device_row(device_id).await? {
            Some((d, incarnation)) if !d.revoked => incarnation,
            _ => return Ok(None),
        };
        let row: Option<(Option<i64>, Option<String>)> = self
            .one(&self.push.get, (device_id,), "read push endpoint")
            .await?;
        Ok(row.and_then(|(i, e)| (i == Some(incarnation)).then_some(e).flatten()))
    }

    pub(super) async fn delete_push_endpoint(&self, device_id: &str) -> Result<(), StoreError> {
        self.exec(&self.push.delete, (device_id,), "delete push endpoint")
            .await?;
        Ok(())
    }
}
