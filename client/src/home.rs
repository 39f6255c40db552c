//! The client home (`--home`, default `.herold`): where a device's key,
//! MLS state and cursors live, shared by `herold` and `herold-bot`.
//!
//! - `devices/<device>.key`: the Ed25519 key, hex (mode 0600);
//! - `mls/<device>.mls`: the MLS state ([`herold_mls::MlsDevice`]);
//! - `state/<device>.json`: the last seq handled per conversation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ed25519_dalek::SigningKey;
use herold_mls::MlsDevice;

/// Opens (or creates) the device's MLS state in the home.
pub fn open_mls(home: &Path, device: &str) -> anyhow::Result<MlsDevice> {
    let path = home.join("mls").join(format!("{device}.mls"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    MlsDevice::open_or_create(device, &path)
        .with_context(|| format!("opening the MLS state {}", path.display()))
}

/// Where the device's key is kept.
pub fn key_path(home: &Path, device: &str) -> PathBuf {
    home.join("devices").join(format!("{device}.key"))
}

/// Where the device's cursors are kept.
pub fn state_path(home: &Path, device: &str) -> PathBuf {
    home.join("state").join(format!("{device}.json"))
}

/// Writes a new key file (never over an existing one), readable by the
/// owner only.
pub fn save_key(path: &Path, key: &SigningKey) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(hex::encode(key.to_bytes()).as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Reads a key file.
pub fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "no key at {} (create the device with `herold device new`)",
            path.display()
        )
    })?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{} does not hold a 32-byte hex key", path.display()))?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Reads the cursors; none yet is an empty map.
pub fn load_state(path: &Path) -> anyhow::Result<HashMap<String, u64>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Replaces the cursors atomically (a new file renamed over the old).
pub fn save_state(path: &Path, cursors: &HashMap<String, u64>) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(cursors)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// The relay's certificate fingerprint: `explicit` (hex) if given, else
/// the one a dev relay writes to `<data_dir>/tls/cert.sha256`.
pub fn relay_fingerprint(explicit: Option<&str>, data_dir: &Path) -> anyhow::Result<[u8; 32]> {
    let text = match explicit {
        Some(f) => f.to_owned(),
        None => {
            let path = data_dir.join("tls").join("cert.sha256");
            std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "no --fingerprint given and cannot read {} (start the relay with --dev, \
                     or pass the fingerprint it printed)",
                    path.display()
                )
            })?
        }
    };
    crate::tls::parse_fingerprint(&text).map_err(anyhow::Error::msg)
}
