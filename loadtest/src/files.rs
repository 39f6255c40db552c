//! Attachments in the traffic: uploads before their message, downloads by
//! every recipient device, and their counters and latencies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::report::Latency;
use crate::run::new_hist;
use crate::scenario::{ATTACHMENT_REF_BYTES, HEADER_BYTES};

/// Attachment counters and latencies (microseconds).
#[derive(Debug, Default)]
pub(crate) struct Files {
    pub(crate) uploaded: AtomicU64,
    pub(crate) upload_failed: AtomicU64,
    pub(crate) downloads_started: AtomicU64,
    pub(crate) downloaded: AtomicU64,
    pub(crate) download_failed: AtomicU64,
    pub(crate) bytes_up: AtomicU64,
    pub(crate) bytes_down: AtomicU64,
    /// (upload, download) latencies.
    pub(crate) latency: Mutex<Option<(Histogram<u64>, Histogram<u64>)>>,
}

impl Files {
    pub(crate) fn record(&self, upload: bool, took: Duration) {
        let Ok(mut l) = self.latency.lock() else {
            return;
        };
        if l.is_none() {
            *l = new_hist().ok().zip(new_hist().ok());
        }
        if let Some((up, down)) = l.as_mut() {
            let h = if upload { up } else { down };
            let _ = h.record((took.as_micros() as u64).max(1));
        }
    }

    pub(crate) fn report(&self) -> crate::report::Attachments {
        let l = self.latency.lock().ok();
        let (up, down) = l
            .as_ref()
            .and_then(|l| l.as_ref())
            .map(|(u, d)| (Latency::from(u), Latency::from(d)))
            .unwrap_or_default();
        crate::report::Attachments {
            uploaded: self.uploaded.load(Ordering::Relaxed),
            upload_failed: self.upload_failed.load(Ordering::Relaxed),
            downloaded: self.downloaded.load(Ordering::Relaxed),
            download_failed: self.download_failed.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            upload: up,
            download: down,
        }
    }
}

/// Uploads an attachment of `size` bytes as `sender`; the payload's
/// reference to it (flag, id, size) after the header.
pub(crate) async fn upload_for(
    sender: &herold_client::Sender,
    conv: &str,
    size: u64,
    files: &Files,
) -> Result<Vec<u8>, herold_client::ClientError> {
    let data = vec![0x5au8; usize::try_from(size).unwrap_or(0)];
    let began = Instant::now();
    match sender.upload(conv, &data, 0).await {
        Ok(up) => {
            files.record(true, began.elapsed());
            files.uploaded.fetch_add(1, Ordering::Relaxed);
            files.bytes_up.fetch_add(size, Ordering::Relaxed);
            let mut r = vec![1u8];
            r.extend_from_slice(&up.attachment_id);
            r.resize(1 + 16, 0);
            r.extend_from_slice(&size.to_be_bytes());
            Ok(r)
        }
        Err(e) => {
            files.upload_failed.fetch_add(1, Ordering::Relaxed);
            Err(e)
        }
    }
}

/// The attachment a delivered payload refers to: (id, size).
pub(crate) fn attachment_of(p: &[u8]) -> Option<(Vec<u8>, u64)> {
    if p.len() < ATTACHMENT_REF_BYTES || p[HEADER_BYTES] != 1 {
        return None;
    }
    let id = p[HEADER_BYTES + 1..HEADER_BYTES + 17].to_vec();
    let size = u64::from_be_bytes(p[HEADER_BYTES + 17..HEADER_BYTES + 25].try_into().ok()?);
    Some((id, size))
}

/// Fetches a delivered attachment as a recipient device does.
pub(crate) async fn download_for<C: AsRef<Files>>(
    sender: herold_client::Sender,
    conv: String,
    id: Vec<u8>,
    size: u64,
    counters: Arc<C>,
) {
    let files = (*counters).as_ref();
    let began = Instant::now();
    match sender.download(&conv, &id, size).await {
        Ok(bytes) if bytes.len() as u64 == size && bytes.iter().all(|b| *b == 0x5a) => {
            files.record(false, began.elapsed());
            files.downloaded.fetch_add(1, Ordering::Relaxed);
            files.bytes_down.fetch_add(size, Ordering::Relaxed);
        }
        _ => {
            files.download_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
