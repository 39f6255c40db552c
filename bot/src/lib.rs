//! `herold-bot`: an example of a back-office integration (docs/bots.md).
//!
//! A bot is an account like any other whose device runs the SDK in a
//! service: it holds its own MLS keys, so messages stay end-to-end
//! encrypted up to the bot, and the relay never sees what it files. This
//! one stands in for a fines application or an e-file system: it joins
//! every conversation it is added to (MLS Welcomes need nothing from it),
//! files every photo or document sent to it into a folder per case, with
//! its metadata beside it, and answers with a receipt.
//!
//! Cases: a text `case <ID>` (say `case 2026-0042`) sets the sender's case
//! in that conversation; files go to the sender's case, or to a case named
//! after the conversation while none is set.

#![warn(missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use herold_client::attachment::{FileRef, safe_file_name};
use herold_client::e2e::{E2eClient, Message};
use sha2::{Digest, Sha256};

/// Longest case id.
pub const MAX_CASE_BYTES: usize = 64;

/// What the bot writes beside each filed file (`<file>.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The case it was filed under.
    pub case: String,
    /// The file's name as the sender gave it.
    pub name: String,
    /// Its media type as the sender gave it.
    pub media_type: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the contents, hex.
    pub sha256: String,
    /// Where it came from.
    pub conversation_id: String,
    /// Its message's position in the conversation.
    pub seq: u64,
    /// Sending account and device.
    pub sender_account_id: String,
    /// Sending device, as MLS authenticated it.
    pub sender_device_id: String,
    /// Relay time of acceptance, unix milliseconds.
    pub server_time_ms: i64,
}

/// What the bot did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// A file, filed: where, and its record.
    Filed {
        /// The file's path.
        path: PathBuf,
        /// What was written beside it.
        record: Record,
    },
    /// The sender's case in a conversation changed.
    CaseSet(String),
    /// Nothing to do (a text that is no command, or the bot's own message).
    Ignored,
}

/// Files received files into a folder per case.
#[derive(Debug)]
pub struct Filer {
    root: PathBuf,
    device_id: String,
    /// (conversation, sender account) -> case.
    cases: HashMap<(String, String), String>,
}

/// A case id from `case <ID>`; `None` for any other text. Ids keep to
/// letters, digits and `.`, `_`, `-`, so that they are safe folder names.
pub fn parse_case(text: &str) -> Option<Result<String, String>> {
    let rest = text.trim();
    let (word, id) = rest.split_once(char::is_whitespace)?;
    if !word.eq_ignore_ascii_case("case") {
        return None;
    }
    let id = id.trim();
    let ok = !id.is_empty()
        && id.len() <= MAX_CASE_BYTES
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    Some(if ok {
        Ok(id.to_owned())
    } else {
        Err(format!(
            "a case id is 1 to {MAX_CASE_BYTES} letters, digits, '.', '_' or '-' (not starting with '.')"
        ))
    })
}

impl Filer {
    /// Files under `root`, as device `device_id` (whose own messages it
    /// ignores).
    pub fn new(root: impl Into<PathBuf>, device_id: &str) -> Self {
        Self {
            root: root.into(),
            device_id: device_id.to_owned(),
            cases: HashMap::new(),
        }
    }

    /// The folder of a case.
    pub fn case_dir(&self, case: &str) -> PathBuf {
        self.root.join(case)
    }

    fn case_of(&self, m: &Message) -> String {
        self.cases
            .get(&(m.conversation_id.clone(), m.sender_account_id.clone()))
            .cloned()
            .unwrap_or_else(|| safe_file_name(&m.conversation_id))
    }

    /// Handles one message: files its file, or takes its `case` command.
    /// The answer to send back, if any, comes with it.
    pub async fn handle(
        &mut self,
        client: &E2eClient,
        m: &Message,
    ) -> anyhow::Result<(Handled, Option<String>)> {
        if m.sender_device_id == self.device_id {
            return Ok((Handled::Ignored, None));
        }
        if let Some(file) = m.file() {
            let contents = client
                .fetch_file(&m.conversation_id, &file)
                .await
                .with_context(|| format!("fetching {} #{}", m.conversation_id, m.seq))?;
            let (path, record) = self.file(m, &file, &contents)?;
            let receipt = format!(
                "Filed {:?} ({} bytes, sha256 {}) under case {} as #{}.",
                record.name,
                record.size,
                &record.sha256[..16],
                record.case,
                record.seq
            );
            return Ok((Handled::Filed { path, record }, Some(receipt)));
        }
        let text = String::from_utf8_lossy(&m.plaintext);
        match parse_case(&text) {
            Some(Ok(case)) => {
                self.cases.insert(
                    (m.conversation_id.clone(), m.sender_account_id.clone()),
                    case.clone(),
                );
                let answer = format!("Case {case}: the files you send here go to it.");
                Ok((Handled::CaseSet(case), Some(answer)))
            }
            Some(Err(why)) => Ok((Handled::Ignored, Some(why))),
            None => Ok((Handled::Ignored, None)),
        }
    }

    /// Handles a message and sends the answer (a receipt) to its
    /// conversation; a file that cannot be filed is answered with why, so
    /// the sender can send it again.
    pub async fn serve(&mut self, client: &E2eClient, m: &Message) -> Handled {
        let (handled, answer) = match self.handle(client, m).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, conversation = %m.conversation_id, seq = m.seq, "not filed");
                (
                    Handled::Ignored,
                    Some(format!("Not filed: {e:#}. Please send it again.")),
                )
            }
        };
        if let Handled::Filed { path, record } = &handled {
            tracing::info!(case = %record.case, path = %path.display(), size = record.size, "filed");
        }
        if let Some(answer) = answer
            && let Err(e) = client.send(&m.conversation_id, answer.as_bytes(), 0).await
        {
            tracing::warn!(error = %e, conversation = %m.conversation_id, "could not answer");
        }
        handled
    }

    /// Writes the file and its record; the same message filed again
    /// overwrites its own copy (a redelivery after a restart).
    fn file(
        &self,
        m: &Message,
        file: &FileRef,
        contents: &[u8],
    ) -> anyhow::Result<(PathBuf, Record)> {
        let case = self.case_of(m);
        let dir = self.case_dir(&case);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!(
            "{}-{}-{}",
            safe_file_name(&m.conversation_id),
            m.seq,
            safe_file_name(&file.name)
        ));
        let record = Record {
            case,
            name: file.name.clone(),
            media_type: file.media_type.clone(),
            size: contents.len() as u64,
            sha256: hex::encode(Sha256::digest(contents)),
            conversation_id: m.conversation_id.clone(),
            seq: m.seq,
            sender_account_id: m.sender_account_id.clone(),
            sender_device_id: m.sender_device_id.clone(),
            server_time_ms: m.server_time_ms,
        };
        write_atomically(&path, contents)?;
        let mut meta = path.clone().into_os_string();
        meta.push(".json");
        write_atomically(Path::new(&meta), &serde_json::to_vec_pretty(&record)?)?;
        Ok((path, record))
    }
}

/// Writes a file whole or not at all (a new file renamed into place).
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_commands_and_ids() {
        assert_eq!(parse_case("case 2026-0042"), Some(Ok("2026-0042".into())));
        assert_eq!(parse_case("  CASE  A.b_c "), Some(Ok("A.b_c".into())));
        assert!(matches!(parse_case("case ../etc"), Some(Err(_))));
        assert!(matches!(parse_case("case a/b"), Some(Err(_))));
        assert!(matches!(
            parse_case(&format!("case {}", "x".repeat(65))),
            Some(Err(_))
        ));
        assert_eq!(parse_case("casework tomorrow"), None);
        assert_eq!(parse_case("case"), None);
        assert_eq!(parse_case("hello"), None);
        assert_eq!(safe_file_name("../../x.jpg"), "_.._x.jpg");
    }
}
