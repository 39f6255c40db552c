//! Titles and display names that only members see (docs/e2e.md, "Titles
//! and display names"): set by members, learned by newcomers, and never
//! in anything the relay stores or the admin API shows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod mls_net;

use common::*;
use herold_proto::v1;
use herold_store::Store as _;
use mls_net::*;

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

const TITLE: &str = "Einsatzleitung Nord";
const ANNA: &str = "Anna Schmidt";
const BERND: &str = "Bernd K.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_see_titles_and_names_the_relay_never_stores() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, store) = TestRelay::start_embedded(dir.path()).await;
    let net = Net::new(relay.addr, relay.fingerprint);
    let [ak, bk] = relay.group_of("crew", ["na", "nb"]).await;
    let a = net.connect("na.phone", &ak).await;
    let b = net.connect("nb.phone", &bk).await;

    // Anna names herself before the group exists: it starts with her name.
    a.set_display_name(Some(ANNA)).unwrap();
    a.send("crew", b"hello", 0).await.unwrap();
    net.all_read(&["nb.phone".into()], "crew", &["hello"]).await;
    assert_eq!(b.display_name("crew", "na.phone").as_deref(), Some(ANNA));
    assert_eq!(a.display_name("crew", "nb.phone"), None);

    // A member sets the title; the other member's group has it.
    assert!(a.set_title("crew", Some(TITLE)).await.unwrap());
    net.until("b has the title", |_| {
        b.title("crew").as_deref() == Some(TITLE)
    })
    .await;
    assert_eq!(a.title("crew").as_deref(), Some(TITLE));
    // Refused before anything is sent.
    let e = a.set_title("crew", Some("bell\u{7}")).await.unwrap_err();
    assert!(e.to_string().contains("control characters"), "{e}");

    // Bernd's new name goes out with his next send, a self-update first.
    b.set_display_name(Some(BERND)).unwrap();
    b.send("crew", b"hi", 0).await.unwrap();
    net.all_read(&["na.phone".into()], "crew", &["hi"]).await;
    assert_eq!(a.display_name("crew", "nb.phone").as_deref(), Some(BERND));

    // A newcomer learns title and names from its Welcome.
    relay.account("nc").await;
    let ck = relay.device("nc", "nc.phone").await;
    let c = net.connect("nc.phone", &ck).await;
    let mut admin = relay.admin().await;
    admin
        .add_members(v1::AddMembersRequest {
            conversation_id: "crew".into(),
            members: vec![v1::Member {
                account_id: "nc".into(),
                role: v1::Role::Member as i32,
            }],
        })
        .await
        .unwrap();
    a.send("crew", b"welcome", 0).await.unwrap();
    net.all_read(&["nc.phone".into()], "crew", &["welcome"])
        .await;
    assert_eq!(c.title("crew").as_deref(), Some(TITLE));
    assert_eq!(c.display_name("crew", "na.phone").as_deref(), Some(ANNA));
    assert_eq!(c.display_name("crew", "nb.phone").as_deref(), Some(BERND));

    // Nothing the relay stores holds them: not the log (commits included),
    // not the Welcome, not the admin API's view of the conversation.
    let rows = store.read("crew", 0, 100, now_ms()).await.unwrap();
    assert!(rows.len() >= 6, "commits and messages: {}", rows.len());
    let (_, welcome) = store
        .welcome_for("nc.phone", "crew")
        .await
        .unwrap()
        .unwrap();
    for needle in [TITLE, ANNA, BERND] {
        for m in &rows {
            assert!(!contains(&m.ciphertext, needle), "{needle:?} in #{}", m.seq);
        }
        assert!(!contains(&welcome, needle), "{needle:?} in the Welcome");
    }
    let conv = admin
        .get_conversation(v1::GetConversationRequest {
            conversation_id: "crew".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(conv.title, "", "the members' title stays with the members");
}
