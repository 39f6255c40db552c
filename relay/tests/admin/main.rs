//! The admin API over a real gRPC client on loopback: every service, the
//! operator roles with their denials, bad input (each with its status and
//! message), enrollment codes, policies the relay enforces, bulk import and
//! delete, the audit log, health, reflection, and TLS with client
//! certificates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod accounts;
mod audit;
mod conversations;
mod import;
mod large_channels;
mod operators;

use std::time::Duration;

use tokio::time::Instant;

use common::*;
use herold_client::roster;
use herold_proto::v1::{self, ErrorCode};
use herold_relay::Config;
use herold_relay::operators::OperatorRole;
use tonic::Code;

const ORG: &str = "org-admin-token-0123456789";
const LEAD: &str = "group-lead-token-0123456789";
const AUDIT: &str = "auditor-token-0123456789";

async fn relay_with_operators(dir: &std::path::Path) -> TestRelay {
    TestRelay::start_with_operators(
        dir,
        &[
            ("it-ops", OperatorRole::OrgAdmin, ORG, &[]),
            ("lead-17", OperatorRole::GroupAdmin, LEAD, &["station-17"]),
            ("audit", OperatorRole::Auditor, AUDIT, &[]),
        ],
    )
    .await
}

/// Asserts a call failed with `code` and a message containing `needle`.
#[track_caller]
fn assert_status<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    match r {
        Err(s) => {
            assert_eq!(s.code(), code, "{s:?}");
            assert!(
                s.message().contains(needle),
                "message {:?} lacks {needle:?}",
                s.message()
            );
        }
        Ok(v) => panic!("expected {code:?}, got Ok({v:?})"),
    }
}

fn acc(id: &str, tags: &[&str]) -> v1::CreateAccountRequest {
    v1::CreateAccountRequest {
        account_id: id.into(),
        display_name: format!("name of {id}"),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
    }
}

fn member(id: &str, role: v1::Role) -> v1::Member {
    v1::Member {
        account_id: id.into(),
        role: role as i32,
    }
}

fn group(
    id: &str,
    kind: v1::ConversationKind,
    members: Vec<v1::Member>,
) -> v1::CreateConversationRequest {
    v1::CreateConversationRequest {
        conversation_id: id.into(),
        kind: kind as i32,
        title: format!("title of {id}"),
        members,
        default_ttl_seconds: 0,
        sub_groups: 0,
    }
}
