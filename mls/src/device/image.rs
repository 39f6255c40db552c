//! A device whose state database lives in memory and is read out whole:
//! the web messenger's, which the page keeps in IndexedDB (a browser has
//! no files). Saves go into the image as they go into a file; the page
//! stores [`MlsDevice::image`] after each change and hands it back to
//! [`MlsDevice::from_image`] after a reload.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use openmls::prelude::OpenMlsProvider as _;

use super::{MlsDevice, db_error};
use crate::error::MlsError;
use crate::state::{MemoryImage, State, StateDb};

/// What errors call the image in place of a path.
const IMAGE_LABEL: &str = "<the state image>";

impl MlsDevice {
    /// A fresh identity for `device_id` whose state is kept in a database
    /// image in memory ([`MlsDevice::image`]).
    pub fn create_in_image(device_id: &str) -> Result<Self, MlsError> {
        let mut device = Self::create(device_id, None)?;
        let label = Path::new(IMAGE_LABEL);
        let db = StateDb::create_in(MemoryImage::default(), &device.fresh_state()?)
            .map_err(|e| db_error(label, e))?;
        device.db = Some(Mutex::new(db));
        device.path = Some(PathBuf::from(IMAGE_LABEL));
        Ok(device)
    }

    /// The device whose state [`MlsDevice::image`] gave.
    pub fn from_image(image: Vec<u8>) -> Result<Self, MlsError> {
        let label = Path::new(IMAGE_LABEL);
        let (db, state) =
            StateDb::open_in(MemoryImage::from_bytes(image)).map_err(|e| db_error(label, e))?;
        Self::load(db, state, label)
    }

    /// A fresh device's state: its identity and openmls's store, no groups.
    pub(super) fn fresh_state(&self) -> Result<State, MlsError> {
        let values = self.provider.storage().values.read();
        Ok(State {
            device_id: self.device_id.clone(),
            signature_public_key: self.signer.to_public_vec(),
            groups: Vec::new(),
            storage: values
                .map_err(|_| MlsError::StoragePoisoned)?
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    /// The whole state database, for a device made with
    /// [`MlsDevice::create_in_image`] or [`MlsDevice::from_image`]; `None`
    /// for one kept in a file or nowhere.
    pub fn image(&self) -> Option<Vec<u8>> {
        self.db.as_ref()?.lock().ok()?.image_bytes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_device_comes_back_whole_from_its_image() {
        let mut alice = MlsDevice::create_in_image("alice.web").unwrap();
        let mut bob = MlsDevice::create("bob.phone", None).unwrap();
        let kp = bob.key_packages(1).unwrap().remove(0);
        alice.create_group(b"g").unwrap();
        let commit = alice
            .commit(b"g", vec![("bob.phone".into(), kp)], Vec::new())
            .unwrap();
        alice.confirm_commit(b"g").unwrap();
        bob.join(commit.welcome.as_deref().unwrap()).unwrap();
        let image = alice.image().unwrap();
        drop(alice);

        // After a reload: the same identity, the same group, and it reads
        // what a member sends and writes what the member reads.
        let mut alice = MlsDevice::from_image(image).unwrap();
        assert_eq!(alice.device_id(), "alice.web");
        assert_eq!(alice.epoch(b"g"), bob.epoch(b"g"));
        let to_alice = bob.encrypt(b"g", b"still there?", &[]).unwrap();
        match alice.process(b"g", &to_alice).unwrap() {
            crate::Processed::Application { plaintext, .. } => {
                assert_eq!(plaintext, b"still there?")
            }
            other => panic!("{other:?}"),
        }
        let to_bob = alice.encrypt(b"g", b"yes", &[]).unwrap();
        assert!(matches!(
            bob.process(b"g", &to_bob).unwrap(),
            crate::Processed::Application { .. }
        ));
        // Its image keeps up with every change.
        let again = MlsDevice::from_image(alice.image().unwrap()).unwrap();
        assert_eq!(again.epoch(b"g"), alice.epoch(b"g"));
        assert!(MlsDevice::create("x", None).unwrap().image().is_none());
        assert!(MlsDevice::from_image(b"not a database".to_vec()).is_err());
    }
}
