//! The example bot (`herold-bot`, docs/bots.md) end to end: added to a
//! field team's group, it joins by itself, files the photos sent there
//! under the case named, and answers with a receipt.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod mls_net;

use std::sync::Arc;

use common::*;
use herold_bot::{Filer, Handled, Record};
use herold_client::ClientConfig;
use herold_client::e2e::{E2eClient, E2eEvent};
use herold_mls::MlsDevice;
use herold_proto::v1;
use mls_net::*;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_files_photos_under_their_case_and_answers_with_a_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cases");
    let (relay, _store) = TestRelay::start_embedded(dir.path()).await;
    let net = Net::new(relay.addr, relay.fingerprint);
    let [fk] = relay.group_of("traffic-7", ["officer"]).await;
    relay.account("fines-bot").await;
    let bk = relay.device("fines-bot", "fines-bot.svc").await;

    // The bot runs its own device and MLS state, as `herold-bot` does.
    let config = ClientConfig::new(relay.addr, relay.fingerprint, "fines-bot.svc", bk);
    let mut bot = E2eClient::connect(config, MlsDevice::create("fines-bot.svc", None).unwrap())
        .await
        .unwrap();
    let filed = Arc::new(Mutex::new(Vec::<Handled>::new()));
    let (bot_done, mut bot_filed) = tokio::sync::watch::channel(0usize);
    let bot_task = {
        let (filed, out) = (filed.clone(), out.clone());
        tokio::spawn(async move {
            let mut filer = Filer::new(&out, "fines-bot.svc");
            while let Some(ev) = bot.next_event().await {
                if let E2eEvent::Message(m) = ev {
                    let h = filer.serve(&bot, &m).await;
                    let mut f = filed.lock().await;
                    f.push(h);
                    bot_done.send_replace(f.len());
                }
            }
        })
    };

    // IT adds the bot to the team's group; it joins with the next message.
    let officer = net.connect("officer.phone", &fk).await;
    let mut admin = relay.admin().await;
    admin
        .add_members(v1::AddMembersRequest {
            conversation_id: "traffic-7".into(),
            members: vec![v1::Member {
                account_id: "fines-bot".into(),
                role: v1::Role::Member as i32,
            }],
        })
        .await
        .unwrap();
    officer
        .send("traffic-7", b"case 2026-0042", 0)
        .await
        .unwrap();
    let offence: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    officer
        .send_file("traffic-7", &offence, "offence.jpg", "image/jpeg", 0)
        .await
        .unwrap();

    // Both answers come back to the officer: the case, then the receipt.
    net.until("the officer has the receipt", |i| {
        i.texts("officer.phone", "traffic-7")
            .iter()
            .any(|t| t.starts_with("Filed \"offence.jpg\""))
    })
    .await;
    let texts = net.inbox.texts("officer.phone", "traffic-7");
    assert!(
        texts
            .iter()
            .any(|t| t == "Case 2026-0042: the files you send here go to it."),
        "{texts:?}"
    );
    let receipt = texts.iter().find(|t| t.starts_with("Filed")).unwrap();
    let digest = hex::encode(Sha256::digest(&offence));
    assert!(receipt.contains(&digest[..16]), "{receipt}");
    assert!(receipt.contains("case 2026-0042"), "{receipt}");
    tokio::time::timeout(DEADLINE, bot_filed.wait_for(|n| *n >= 2))
        .await
        .unwrap()
        .unwrap();

    // The file and its record, in the case's folder.
    let case_dir = out.join("2026-0042");
    let mut names: Vec<String> = std::fs::read_dir(&case_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    let file = case_dir.join(&names[0]);
    assert!(names[0].ends_with("offence.jpg"), "{names:?}");
    assert_eq!(std::fs::read(&file).unwrap(), offence);
    let record: Record =
        serde_json::from_slice(&std::fs::read(case_dir.join(&names[1])).unwrap()).unwrap();
    assert_eq!(record.case, "2026-0042");
    assert_eq!(record.sha256, digest);
    assert_eq!(record.size, offence.len() as u64);
    assert_eq!(record.media_type, "image/jpeg");
    assert_eq!(
        (
            record.sender_account_id.as_str(),
            record.sender_device_id.as_str()
        ),
        ("officer", "officer.phone")
    );
    let handled = filed.lock().await;
    assert!(
        matches!(&handled[..], [Handled::CaseSet(c), Handled::Filed { .. }] if c == "2026-0042"),
        "the bot's own receipts are not handled again: {handled:?}"
    );
    drop(handled);
    bot_task.abort();
}
