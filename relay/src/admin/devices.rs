//! Devices: register a public key, list, revoke.

use super::*;

impl AdminService {
    pub(super) async fn register_device(
        &self,
        req: Request<v1::RegisterDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let target = r.device_id.clone();
        let detail = format!("account={}", r.account_id);
        self.audited(&op, "RegisterDevice", Need::Org, &target, detail, async {
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
            let limit = Effective::org(&self.node.limits, org.as_ref()).max_devices;
            self.node
                .store
                .add_device(d.clone(), limit)
                .await
                .map_err(store_status)?;
            devices_changed(&self.node, &d.account_id).await;
            Ok(device_to(d))
        })
        .await
    }

    pub(super) async fn list_devices(
        &self,
        req: Request<v1::ListDevicesRequest>,
    ) -> Result<Response<v1::ListDevicesResponse>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        self.audited(
            &op,
            "ListDevices",
            Need::Read,
            &r.account_id,
            String::new(),
            async {
                check_id("account", &r.account_id)?;
                self.may_read_account(&op, &r.account_id).await?;
                let store = &self.node.store;
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
            },
        )
        .await
    }

    pub(super) async fn revoke_device(
        &self,
        req: Request<v1::RevokeDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        self.audited(
            &op,
            "RevokeDevice",
            Need::Org,
            &r.device_id,
            String::new(),
            async {
                check_id("device", &r.device_id)?;
                let why = Kick {
                    code: ErrorCode::DeviceRevoked,
                    message: "this device was revoked".into(),
                };
                let d = match self.node.store.revoke_device(&r.device_id).await {
                    Ok(d) => d,
                    Err(e) => {
                        self.node
                            .cut_off_after_failure(&e, std::slice::from_ref(&r.device_id), why)
                            .await;
                        return Err(store_status(e));
                    }
                };
                devices_changed(&self.node, &d.account_id).await;
                self.node
                    .kick_devices(std::slice::from_ref(&d.id), why)
                    .await;
                Ok(device_to(d))
            },
        )
        .await
    }
}

/// An account's devices changed: only the rosters of its conversations are
/// stale (a volunteer enrolling does not flush every roster of the city). If
/// its conversations cannot be read, every roster is dropped.
pub(super) async fn devices_changed(node: &AdminNode, account_id: &str) {
    match node.store.conversations_of(account_id).await {
        Ok(convs) if convs.is_empty() => {}
        Ok(convs) => node.rosters_changed(&convs).await,
        Err(_) => node.rosters_changed(&[]).await,
    }
}
