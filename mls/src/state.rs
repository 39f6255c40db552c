//! The state file: a device's identity, its groups and openmls's key store,
//! written atomically.
//!
//! Format (all integers big-endian, `bytes` = u64 length + bytes):
//! `"herold-mls-state"` (16 bytes), u32 format version (1), `bytes` device
//! id, `bytes` signature public key, u64 group count, per group `bytes` group
//! id + u64 epoch the device joined at, u64 entry count, per entry `bytes`
//! key + `bytes` value (openmls's `MemoryStorage`, sorted by key).

use std::fs::File;
use std::io::Write as _;
use std::path::Path;

const MAGIC: &[u8; 16] = b"herold-mls-state";
const VERSION: u32 = 1;

/// Everything a device persists.
#[derive(Default)]
pub(crate) struct State {
    pub device_id: String,
    pub signature_public_key: Vec<u8>,
    /// (group id, epoch the device joined at).
    pub groups: Vec<(Vec<u8>, u64)>,
    /// openmls's key store: key packages, signature key, group states.
    pub storage: Vec<(Vec<u8>, Vec<u8>)>,
}

impl State {
    pub fn encode(&self) -> Vec<u8> {
        let size = 64
            + self.device_id.len()
            + self.signature_public_key.len()
            + self.groups.iter().map(|(g, _)| g.len() + 16).sum::<usize>()
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
        for (group_id, joined) in &self.groups {
            put_bytes(&mut out, group_id);
            out.extend_from_slice(&joined.to_be_bytes());
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
        if version != VERSION {
            return Err(format!(
                "state format version {version}, this build reads {VERSION}"
            ));
        }
        let device_id = String::from_utf8(r.bytes()?.to_vec())
            .map_err(|_| "device id is not UTF-8".to_string())?;
        let signature_public_key = r.bytes()?.to_vec();
        let n = r.len()?;
        let mut groups = Vec::new();
        for _ in 0..n {
            let group_id = r.bytes()?.to_vec();
            groups.push((group_id, r.u64()?));
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
