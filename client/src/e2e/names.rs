//! Titles and display names that only members see (docs/e2e.md, "Titles
//! and display names"): the title lives in the group's context, a display
//! name in the device's leaf. The relay stores neither.

use super::renew::OwnChange;
use super::{E2eClient, E2eError, lock, newest_group};

impl E2eClient {
    /// The conversation's title as its members set it (end-to-end
    /// encrypted); `None` if none is set or this device has no group.
    /// Titles an organisation sets through the admin API are not here:
    /// the relay never hands those to devices.
    pub fn title(&self, conversation_id: &str) -> Option<String> {
        let m = lock(&self.mls);
        m.title(&newest_group(&m, conversation_id))
    }

    /// Sets (`None` or "": removes) the conversation's title for all its
    /// members: a commit, after bringing the group up to date. Ok(false)
    /// when the relay refused the commit (a reader of a channel may not
    /// commit). Fails with a specific error for a title that is too long
    /// or holds control characters, and while a member's app does not
    /// support titles yet.
    pub async fn set_title(
        &self,
        conversation_id: &str,
        title: Option<&str>,
    ) -> Result<bool, E2eError> {
        // Checked before any network round trip.
        herold_mls::check_title(title)?;
        self.own_change(conversation_id, OwnChange::Title(title))
            .await
    }

    /// The display name a member's device set for itself, as this device's
    /// group of the conversation knows it; `None` if it set none.
    pub fn display_name(&self, conversation_id: &str, device_id: &str) -> Option<String> {
        let m = lock(&self.mls);
        m.member_display_name(&newest_group(&m, conversation_id), device_id)
    }

    /// Sets (`None` or "": clears) this device's display name, kept in its
    /// MLS state. Key packages made from now on carry it (a device added
    /// with one shows it at once); each group this device is in learns it
    /// with its next send there, which first commits a self-update, or
    /// with [`E2eClient::renew_key`].
    pub fn set_display_name(&self, name: Option<&str>) -> Result<(), E2eError> {
        lock(&self.mls).set_display_name(name)?;
        Ok(())
    }
}
