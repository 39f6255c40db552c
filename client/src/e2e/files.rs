//! Photos and documents end to end (docs/attachments.md), and the push
//! endpoint that wakes the device for them (docs/push.md): the file is
//! encrypted on this device, its ciphertext uploaded on a stream of its
//! own, and its [`FileRef`] (id, key, digest, name) sent as the MLS
//! message, so only the conversation's members can read it.

use super::events::Message;
use super::{E2eClient, E2eError};
use crate::Accepted;
use crate::attachment::{self, AttachmentError, FileRef};

impl From<AttachmentError> for E2eError {
    fn from(e: AttachmentError) -> Self {
        E2eError::File(e.to_string())
    }
}

impl Message {
    /// The file this message carries, if it is one (see
    /// [`E2eClient::send_file`]); `None` for a text.
    pub fn file(&self) -> Option<FileRef> {
        FileRef::decode(&self.plaintext).ok()
    }
}

impl E2eClient {
    /// Sends a file: encrypts it with a fresh key, uploads the ciphertext
    /// (resuming after a broken connection), then sends its [`FileRef`]
    /// as a message. The relay refuses a file over the conversation's
    /// policy (`ATTACHMENT_TOO_LARGE`) before a byte of it is uploaded.
    /// `expires_at_ms` applies to the file and to the message alike.
    pub async fn send_file(
        &self,
        conversation_id: &str,
        contents: &[u8],
        name: &str,
        media_type: &str,
        expires_at_ms: i64,
    ) -> Result<(Accepted, FileRef), E2eError> {
        let (sealed, mut file) = attachment::seal(contents)?;
        file.name = name.to_owned();
        file.media_type = media_type.to_owned();
        // The name and type are checked before anything goes out.
        file.id = vec![0; herold_proto::ids::ATTACHMENT_ID_BYTES];
        file.encode()?;
        let up = self
            .sender
            .upload(conversation_id, &sealed, expires_at_ms)
            .await?;
        file.id = up.attachment_id;
        let accepted = self
            .send(conversation_id, &file.encode()?, up.expires_at_ms)
            .await?;
        Ok((accepted, file))
    }

    /// See [`crate::Sender::register_push`].
    pub async fn register_push(&self, endpoint: &str) -> Result<String, E2eError> {
        Ok(self.sender.register_push(endpoint).await?)
    }

    /// Fetches and decrypts the file of a message of `conversation_id`,
    /// checking it against the digest the sender signed.
    pub async fn fetch_file(
        &self,
        conversation_id: &str,
        file: &FileRef,
    ) -> Result<Vec<u8>, E2eError> {
        let sealed = self
            .sender
            .download(conversation_id, &file.id, file.sealed_size())
            .await?;
        Ok(attachment::open(&sealed, file)?)
    }
}
