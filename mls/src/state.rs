//! The state file: a device's identity, its groups and openmls's key store,
//! written atomically.
//!
//! Format (all integers big-endian, `bytes` = u64 length + bytes):
//! `"herold-mls-state"` (16 bytes), u32 format version (2), `bytes` device
//! id, `bytes` signature public key, u64 group count, per group `bytes` group
//! id + u64 epoch the device joined at + i64 unix ms when the device's own
//! leaf key in the group was last renewed, u64 entry count, per entry
//! `bytes` key + `bytes` value (openmls's `MemoryStorage`, sorted by key).
//! Version 1 (no renewal time) is read too.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;

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

/// Replaces `path` with `bytes` so that a crash leaves either the old or the
/// new file: temp file in the same directory (mode 0600), fsync, rename,
/// fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".herold-mls-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&(len as u64).to_be_bytes());
}

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
