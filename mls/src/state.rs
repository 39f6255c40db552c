//! The state file: a device's identity, its groups and openmls's key store.
//!
//! A redb database (crash-safe: copy-on-write pages, a checksummed commit,
//! fsync) with three tables: `meta` (device id, signature public key, the
//! display name), `groups` (group id -> epoch the device joined at, unix
//! ms its own leaf key was last renewed) and `openmls` (openmls's
//! `MemoryStorage`, key -> value). A save writes only the entries that changed since the last one,
//! in one transaction: an application message in a 7,000-member channel
//! rewrites its sender ratchet, not the group's tree.
//!
//! Files of the earlier single-file format (`"herold-mls-state"`, u32
//! version 1 or 2, then the whole state, rewritten on every change) are
//! converted when opened. That format: `bytes` = u64 length + bytes,
//! integers big-endian; `bytes` device id, `bytes` signature public key, u64
//! group count, per group `bytes` group id + u64 epoch joined (+ i64 unix ms
//! of the last key renewal in version 2), u64 entry count, per entry
//! `bytes` key + `bytes` value.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};

const MAGIC: &[u8; 16] = b"herold-mls-state";
const VERSION: u32 = 2;

/// Everything a device persists.
#[derive(Default)]
pub(crate) struct State {
    pub device_id: String,
    pub signature_public_key: Vec<u8>,
    /// (group id, epoch the device joined at, when its own leaf key was
    /// last renewed: unix ms, `None` in a version 1 file).
    pub groups: Vec<(Vec<u8>, u64, Option<i64>)>,
    /// openmls's key store: key packages, signature key, group states.
    pub storage: Vec<(Vec<u8>, Vec<u8>)>,
}

impl State {
    /// The earlier single-file format (tests make such files).
    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        let size = 64
            + self.device_id.len()
            + self.signature_public_key.len()
            + self
                .groups
                .iter()
                .map(|(g, ..)| g.len() + 24)
                .sum::<usize>()
            + self
                .storage
                .iter()
                .map(|(k, v)| k.len() + v.len() + 16)
                .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        put_bytes(&mut out, self.device_id.as_bytes());
        put_bytes(&mut out, &self.signature_public_key);
        put_len(&mut out, self.groups.len());
        for (group_id, joined, renewed) in &self.groups {
            put_bytes(&mut out, group_id);
            out.extend_from_slice(&joined.to_be_bytes());
            out.extend_from_slice(&renewed.unwrap_or(0).to_be_bytes());
        }
        put_len(&mut out, self.storage.len());
        for (k, v) in &self.storage {
            put_bytes(&mut out, k);
            put_bytes(&mut out, v);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len())? != MAGIC {
            return Err("not a Herold MLS state file (wrong magic)".into());
        }
        let version = r.u32()?;
        if version != 1 && version != VERSION {
            return Err(format!(
                "state format version {version}, this build reads 1 and {VERSION}"
            ));
        }
        let device_id = String::from_utf8(r.bytes()?.to_vec())
            .map_err(|_| "device id is not UTF-8".to_string())?;
        let signature_public_key = r.bytes()?.to_vec();
        let n = r.len()?;
        let mut groups = Vec::new();
        for _ in 0..n {
            let group_id = r.bytes()?.to_vec();
            let joined = r.u64()?;
            let renewed = if version == 1 {
                None
            } else {
                Some(r.u64()?.cast_signed())
            };
            groups.push((group_id, joined, renewed));
        }
        let n = r.len()?;
        let mut storage = Vec::new();
        for _ in 0..n {
            let k = r.bytes()?.to_vec();
            storage.push((k, r.bytes()?.to_vec()));
        }
        if !r.0.is_empty() {
            return Err(format!("{} trailing bytes", r.0.len()));
        }
        Ok(State {
            device_id,
            signature_public_key,
            groups,
            storage,
        })
    }
}

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const GROUPS: TableDefinition<&[u8], (u64, i64)> = TableDefinition::new("groups");
const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("openmls");

/// Why the state database failed.
#[derive(Debug)]
pub(crate) enum DbError {
    /// Reading or writing failed (disk full, permissions, ...).
    Io(std::io::Error),
    /// The file is not a state database, or its content is inconsistent.
    Corrupt(String),
}

fn io(e: impl Into<redb::Error>) -> DbError {
    DbError::Io(std::io::Error::other(e.into()))
}

/// A table a state file must have is missing: not a state file of ours.
fn table_error(e: redb::TableError) -> DbError {
    match e {
        redb::TableError::TableDoesNotExist(t) => DbError::Corrupt(format!("no table {t}")),
        other => io(other),
    }
}

/// A database kept in memory and read out whole: the browser's state,
/// which the page keeps in IndexedDB (`MlsDevice::image`).
#[derive(Debug, Clone, Default)]
pub(crate) struct MemoryImage(std::sync::Arc<std::sync::RwLock<Vec<u8>>>);

impl MemoryImage {
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(std::sync::Arc::new(std::sync::RwLock::new(bytes)))
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl redb::StorageBackend for MemoryImage {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.0.read().unwrap_or_else(|p| p.into_inner()).len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let data = self.0.read().unwrap_or_else(|p| p.into_inner());
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match data.get(start..start.saturating_add(out.len())) {
            Some(src) => {
                out.copy_from_slice(src);
                Ok(())
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the image",
            )),
        }
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let len = usize::try_from(len)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::OutOfMemory, "image too large"))?;
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut image = self.0.write().unwrap_or_else(|p| p.into_inner());
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(data.len());
        if image.len() < end {
            image.resize(end, 0);
        }
        image[start..end].copy_from_slice(data);
        Ok(())
    }
}

/// A device's state database, and what it holds as of the last save.
pub(crate) struct StateDb {
    db: redb::Database,
    /// The image it lives in, when in memory.
    image: Option<MemoryImage>,
    /// The `openmls` table as last committed.
    saved: HashMap<Vec<u8>, Vec<u8>>,
    /// The `groups` table as last committed.
    saved_groups: HashMap<Vec<u8>, (u64, i64)>,
    /// Bytes of keys and values the last save wrote.
    last_written: u64,
}

impl StateDb {
    /// Creates the database holding `state` and puts it at `path`
    /// atomically (replacing a file there): written whole in one transaction
    /// at a temporary path in the same directory (owner-only permissions:
    /// it holds private keys), then renamed. A crash leaves no half-made
    /// file at `path`.
    pub fn create(path: &Path, state: &State) -> Result<Self, DbError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".herold-mls-")
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(DbError::Io)?
            .into_temp_path();
        let db = redb::Database::create(&tmp).map_err(io)?;
        let this = Self::init(db, state)?;
        std::fs::rename(&tmp, path).map_err(DbError::Io)?;
        // Renamed: nothing left for the guard to delete.
        let _ = tmp.keep();
        #[cfg(unix)]
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(DbError::Io)?;
        Ok(this)
    }

    /// Creates the database holding `state` in a new memory image.
    pub fn create_in(image: MemoryImage, state: &State) -> Result<Self, DbError> {
        let db = redb::Builder::new()
            .create_with_backend(image.clone())
            .map_err(io)?;
        let mut this = Self::init(db, state)?;
        this.image = Some(image);
        Ok(this)
    }

    /// Opens the database in a memory image.
    pub fn open_in(image: MemoryImage) -> Result<(Self, State), DbError> {
        let db = redb::Builder::new()
            .create_with_backend(image.clone())
            .map_err(|e| DbError::Corrupt(e.to_string()))?;
        let (mut this, state) = Self::load(db)?;
        this.image = Some(image);
        Ok((this, state))
    }

    /// The whole database, if it lives in memory.
    pub fn image_bytes(&self) -> Option<Vec<u8>> {
        self.image.as_ref().map(MemoryImage::bytes)
    }

    /// Writes `state` into the empty database `db`.
    fn init(db: redb::Database, state: &State) -> Result<Self, DbError> {
        let saved: HashMap<Vec<u8>, Vec<u8>> = state.storage.iter().cloned().collect();
        let saved_groups: HashMap<Vec<u8>, (u64, i64)> = state
            .groups
            .iter()
            .map(|(g, j, r)| (g.clone(), (*j, r.unwrap_or(0))))
            .collect();
        let txn = db.begin_write().map_err(io)?;
        {
            let mut meta = txn.open_table(META).map_err(io)?;
            meta.insert("device_id", state.device_id.as_bytes())
                .map_err(io)?;
            meta.insert(
                "signature_public_key",
                state.signature_public_key.as_slice(),
            )
            .map_err(io)?;
            let mut groups = txn.open_table(GROUPS).map_err(io)?;
            for (g, row) in &saved_groups {
                groups.insert(g.as_slice(), *row).map_err(io)?;
            }
            let mut entries = txn.open_table(ENTRIES).map_err(io)?;
            for (k, v) in &saved {
                entries.insert(k.as_slice(), v.as_slice()).map_err(io)?;
            }
        }
        txn.commit().map_err(io)?;
        Ok(Self {
            db,
            image: None,
            saved,
            saved_groups,
            last_written: 0,
        })
    }

    /// Opens the database at `path`; a file of the earlier single-file
    /// format is converted first (the new file replaces it atomically).
    pub fn open(path: &Path) -> Result<(Self, State), DbError> {
        let mut head = [0u8; 16];
        let is_old = {
            use std::io::Read as _;
            let mut f = File::open(path).map_err(DbError::Io)?;
            let n = f.read(&mut head).map_err(DbError::Io)?;
            n == head.len() && &head == MAGIC
        };
        if is_old {
            convert(path)?;
        }
        let db = redb::Database::open(path).map_err(|e| match e {
            // redb says "not a redb database" as an InvalidData I/O error.
            redb::DatabaseError::Storage(redb::StorageError::Io(e))
                if e.kind() != std::io::ErrorKind::InvalidData =>
            {
                DbError::Io(e)
            }
            // Two processes for one device would make it reuse keys.
            redb::DatabaseError::DatabaseAlreadyOpen => DbError::Io(std::io::Error::new(
                std::io::ErrorKind::ResourceBusy,
                "the state file is open in another process of this device",
            )),
            other => DbError::Corrupt(other.to_string()),
        })?;
        Self::load(db)
    }

    /// What the database `db` holds.
    fn load(db: redb::Database) -> Result<(Self, State), DbError> {
        let txn = db.begin_read().map_err(io)?;
        let meta = txn.open_table(META).map_err(table_error)?;
        let get = |key: &str| -> Result<Vec<u8>, DbError> {
            meta.get(key)
                .map_err(io)?
                .map(|v| v.value().to_vec())
                .ok_or_else(|| DbError::Corrupt(format!("no {key}")))
        };
        let device_id = String::from_utf8(get("device_id")?)
            .map_err(|_| DbError::Corrupt("device id is not UTF-8".into()))?;
        let signature_public_key = get("signature_public_key")?;
        let mut saved_groups = HashMap::new();
        let groups_table = txn.open_table(GROUPS).map_err(table_error)?;
        for row in groups_table.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            saved_groups.insert(k.value().to_vec(), v.value());
        }
        let mut saved = HashMap::new();
        let entries_table = txn.open_table(ENTRIES).map_err(table_error)?;
        for row in entries_table.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            saved.insert(k.value().to_vec(), v.value().to_vec());
        }
        drop(groups_table);
        drop(entries_table);
        drop(meta);
        drop(txn);
        let mut groups: Vec<(Vec<u8>, u64, Option<i64>)> = saved_groups
            .iter()
            .map(|(g, (j, r))| (g.clone(), *j, Some(*r)))
            .collect();
        groups.sort();
        let state = State {
            device_id,
            signature_public_key,
            groups,
            storage: saved.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        Ok((
            Self {
                db,
                image: None,
                saved,
                saved_groups,
                last_written: 0,
            },
            state,
        ))
    }

    /// Writes what changed since the last save, in one durable transaction:
    /// after a crash the file holds this save or the one before, whole.
    pub fn save(
        &mut self,
        groups: &[(Vec<u8>, u64, i64)],
        entries: &HashMap<Vec<u8>, Vec<u8>>,
    ) -> Result<(), DbError> {
        let changed: Vec<(&Vec<u8>, &Vec<u8>)> = entries
            .iter()
            .filter(|(k, v)| self.saved.get(*k) != Some(*v))
            .collect();
        let gone: Vec<Vec<u8>> = self
            .saved
            .keys()
            .filter(|k| !entries.contains_key(*k))
            .cloned()
            .collect();
        let group_rows: HashMap<Vec<u8>, (u64, i64)> = groups
            .iter()
            .map(|(g, j, r)| (g.clone(), (*j, *r)))
            .collect();
        if changed.is_empty() && gone.is_empty() && group_rows == self.saved_groups {
            self.last_written = 0;
            return Ok(());
        }
        let mut written = 0u64;
        let txn = self.db.begin_write().map_err(io)?;
        {
            let mut table = txn.open_table(ENTRIES).map_err(io)?;
            for (k, v) in &changed {
                table.insert(k.as_slice(), v.as_slice()).map_err(io)?;
                written += (k.len() + v.len()) as u64;
            }
            for k in &gone {
                table.remove(k.as_slice()).map_err(io)?;
                written += k.len() as u64;
            }
            let mut table = txn.open_table(GROUPS).map_err(io)?;
            for (g, row) in &group_rows {
                if self.saved_groups.get(g) != Some(row) {
                    table.insert(g.as_slice(), *row).map_err(io)?;
                    written += g.len() as u64 + 16;
                }
            }
            for g in self.saved_groups.keys() {
                if !group_rows.contains_key(g) {
                    table.remove(g.as_slice()).map_err(io)?;
                }
            }
        }
        txn.commit().map_err(io)?;
        for (k, v) in changed {
            self.saved.insert(k.clone(), v.clone());
        }
        for k in gone {
            self.saved.remove(&k);
        }
        self.saved_groups = group_rows;
        self.last_written = written;
        Ok(())
    }

    /// Bytes of keys and values the last save wrote (0: nothing changed).
    pub fn last_written(&self) -> u64 {
        self.last_written
    }

    /// A setting of the device kept next to its identity (`None`: unset).
    pub fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, DbError> {
        let txn = self.db.begin_read().map_err(io)?;
        let meta = txn.open_table(META).map_err(table_error)?;
        let value = meta.get(key).map_err(io)?.map(|v| v.value().to_vec());
        Ok(value)
    }

    /// The settings whose key starts with `prefix`, in key order.
    pub fn settings_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, DbError> {
        let txn = self.db.begin_read().map_err(io)?;
        let meta = txn.open_table(META).map_err(table_error)?;
        let mut out = Vec::new();
        for row in meta.range(prefix..).map_err(io)? {
            let (k, v) = row.map_err(io)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Sets (or with `None` clears) a setting, in one durable transaction.
    pub fn set_setting(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), DbError> {
        let txn = self.db.begin_write().map_err(io)?;
        {
            let mut meta = txn.open_table(META).map_err(io)?;
            match value {
                Some(v) => {
                    meta.insert(key, v).map_err(io)?;
                }
                None => {
                    meta.remove(key).map_err(io)?;
                }
            }
        }
        txn.commit().map_err(io)
    }
}

/// Converts a file of the earlier single-file format at `path` into a
/// database, atomically: a crash leaves the old file or the new one.
fn convert(path: &Path) -> Result<(), DbError> {
    let bytes = std::fs::read(path).map_err(DbError::Io)?;
    let mut state = State::decode(&bytes).map_err(DbError::Corrupt)?;
    // A version 1 file does not say when keys were renewed: count from now,
    // so that an upgrade does not make every device renew at once.
    let now = crate::device::now_ms();
    for (_, _, renewed) in &mut state.groups {
        renewed.get_or_insert(now);
    }
    // Written whole elsewhere, then renamed over the old file.
    drop(StateDb::create(path, &state)?);
    Ok(())
}

#[cfg(test)]
fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&(len as u64).to_be_bytes());
}

#[cfg(test)]
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_len(out, b.len());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| "truncated")?;
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| "truncated")?;
        Ok(u64::from_be_bytes(b))
    }

    fn len(&mut self) -> Result<usize, String> {
        usize::try_from(self.u64()?).map_err(|_| "length too large".to_string())
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.len()?;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn version_2_round_trips_and_version_1_is_read() {
        let state = State {
            device_id: "dev".into(),
            signature_public_key: vec![1, 2],
            groups: vec![(b"g".to_vec(), 3, Some(1_790_000_000_000))],
            storage: vec![(b"k".to_vec(), b"v".to_vec())],
        };
        let back = State::decode(&state.encode()).unwrap();
        assert_eq!(back.groups, state.groups);
        assert_eq!(back.storage, state.storage);

        let mut v1 = MAGIC.to_vec();
        v1.extend_from_slice(&1u32.to_be_bytes());
        put_bytes(&mut v1, b"dev");
        put_bytes(&mut v1, &[1, 2]);
        put_len(&mut v1, 1);
        put_bytes(&mut v1, b"g");
        v1.extend_from_slice(&3u64.to_be_bytes());
        put_len(&mut v1, 0);
        let old = State::decode(&v1).unwrap();
        assert_eq!(old.groups, vec![(b"g".to_vec(), 3, None)]);

        let mut v3 = state.encode();
        v3[16..20].copy_from_slice(&3u32.to_be_bytes());
        let e = State::decode(&v3).err().unwrap();
        assert!(e.contains("version 3"), "{e}");
    }
}
