use super::import::{derived_account_id, slug};
use super::*;
use crate::codes::{CODE_ALPHABET, code_hash, new_code};

#[test]
fn codes_are_printable_and_forgiving() {
    let (code, hash) = new_code().unwrap();
    assert_eq!(code.len(), 14);
    assert!(
        code.chars()
            .all(|c| c == '-' || CODE_ALPHABET.contains(&(c as u8)))
    );
    assert_eq!(code_hash(&code.to_lowercase().replace('-', " ")), hash);
    assert_eq!(code_hash("0O1I-L"), code_hash("00111"));
    let (other, _) = new_code().unwrap();
    assert_ne!(code, other);
}

#[test]
fn station_slugs_and_ids() {
    assert_eq!(
        slug("  Grundschule Türkenstraße 1 "),
        "grundschule-tuerkenstrasse-1"
    );
    assert_eq!(slug("***"), "");
    let a = derived_account_id("election-2026", "WL 001", "Anna Huber");
    assert_eq!(
        a,
        derived_account_id("election-2026", "WL 001", " Anna Huber ")
    );
    assert_ne!(
        a,
        derived_account_id("election-2026", "WL 002", "Anna Huber")
    );
    assert!(ids::validate_id("account", &a).is_ok());
}

#[test]
fn roles_authorize() {
    let op = |role, groups: &[&str]| Operator {
        name: "x".into(),
        role,
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    };
    let org = op(OperatorRole::OrgAdmin, &[]);
    let lead = op(OperatorRole::GroupAdmin, &["g1"]);
    let auditor = op(OperatorRole::Auditor, &[]);
    assert!(authorize(&org, "X", Need::Org).is_ok());
    assert!(authorize(&lead, "X", Need::Group("g1")).is_ok());
    assert_eq!(
        authorize(&lead, "X", Need::Group("g2")).unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    assert!(authorize(&lead, "X", Need::Org).is_err());
    assert!(authorize(&lead, "X", Need::AuditRead).is_err());
    assert!(authorize(&auditor, "X", Need::AuditRead).is_ok());
    assert!(authorize(&auditor, "X", Need::Read).is_ok());
    assert!(authorize(&auditor, "X", Need::Group("g1")).is_err());
}
