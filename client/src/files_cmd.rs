//! Files in the CLI: `herold send --file PHOTO` and the files `herold
//! listen` saves.

use std::path::{Path, PathBuf};

use anyhow::Context;
use herold_client::attachment::{FileRef, safe_file_name};
use herold_client::e2e::{E2eClient, Message};
use sha2::{Digest, Sha256};

/// The media type of a file, from its extension; `application/octet-stream`
/// for anything else.
pub fn media_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "heic" => "image/heic",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "mp4" => "video/mp4",
        "mov" => "video/quicktime",
        _ => "application/octet-stream",
    }
}

/// The name a file is sent under: its file name, without directories.
pub fn send_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Where the file of message `m` is saved: `<dir>/<conversation>/<seq>-<name>`.
pub fn save_path(dir: &Path, m: &Message, file: &FileRef) -> PathBuf {
    dir.join(safe_file_name(&m.conversation_id)).join(format!(
        "{}-{}",
        m.seq,
        safe_file_name(&file.name)
    ))
}

/// Fetches, decrypts and saves the file of `m`; prints where, with the
/// SHA-256 of its contents (compare with `sha256sum` on the sender's copy).
pub async fn save(
    client: &E2eClient,
    dir: &Path,
    m: &Message,
    file: &FileRef,
) -> anyhow::Result<PathBuf> {
    let contents = client
        .fetch_file(&m.conversation_id, file)
        .await
        .with_context(|| format!("fetching the file of {} #{}", m.conversation_id, m.seq))?;
    let path = save_path(dir, m, file);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&path, &contents).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "[{} #{}] {} ({}): file {:?} ({}, {} bytes, sha256 {}) saved to {}",
        m.conversation_id,
        m.seq,
        m.sender_account_id,
        m.sender_device_id,
        file.name,
        if file.media_type.is_empty() {
            "no type"
        } else {
            &file.media_type
        },
        contents.len(),
        hex::encode(Sha256::digest(&contents)),
        path.display()
    );
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_senders_name_cannot_leave_the_folder() {
        for (name, want) in [
            ("../../etc/passwd", "_.._etc_passwd"),
            ("..", "file"),
            ("", "file"),
            ("a\u{7}b.jpg", "a_b.jpg"),
            ("C:\\x.pdf", "C:_x.pdf"),
            ("pothole.jpg", "pothole.jpg"),
        ] {
            assert_eq!(safe_file_name(name), want, "{name:?}");
        }
        assert_eq!(media_type(Path::new("x/IMG_1.JPG")), "image/jpeg");
        assert_eq!(media_type(Path::new("note")), "application/octet-stream");
    }
}
