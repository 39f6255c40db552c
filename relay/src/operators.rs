//! Operators of the admin API: who may call it, and in which role.
//!
//! Identities come from the operators file (`--admin-operators-file`, a
//! mounted secret), a TOML list:
//!
//! ```toml
//! [[operator]]
//! name = "it-ops"
//! role = "org-admin"            # org-admin | group-admin | auditor
//! token = "…at least 16 characters…"
//!
//! [[operator]]
//! name = "station-17-lead"
//! role = "group-admin"
//! groups = ["station-017"]      # the conversations it manages
//! cert_sha256 = "ab12…"         # a client certificate (mTLS), hex SHA-256 of its DER
//! ```
//!
//! An operator authenticates with `authorization: Bearer <token>` or with a
//! client certificate whose fingerprint is listed (the admin API must then
//! be served over TLS with `--admin-client-ca`). The single token of
//! `--admin-token-file` is an org admin named `admin`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The operators file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OperatorsFileError {
    /// Not readable or not TOML.
    #[error("config file {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Read, but an entry is wrong.
    #[error("invalid admin-operators-file: {0}")]
    Invalid(String),
}

/// An operator's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperatorRole {
    /// Everything.
    OrgAdmin,
    /// Members, name and policy of its groups; reads.
    GroupAdmin,
    /// Reads, including the audit log.
    Auditor,
}

/// An authenticated operator, as the admin service sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// Name, recorded in the audit log.
    pub name: String,
    /// Role.
    pub role: OperatorRole,
    /// The conversations a group admin manages.
    pub groups: Vec<String>,
}

/// One entry of the operators file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorEntry {
    /// Name.
    pub name: String,
    /// Role.
    pub role: OperatorRole,
    /// Bearer token.
    #[serde(default)]
    pub token: Option<String>,
    /// Hex SHA-256 of a client certificate's DER.
    #[serde(default)]
    pub cert_sha256: Option<String>,
    /// Conversations of a group admin.
    #[serde(default)]
    pub groups: Vec<String>,
}

impl OperatorEntry {
    /// The operator it authenticates.
    pub fn operator(&self) -> Operator {
        Operator {
            name: self.name.clone(),
            role: self.role,
            groups: self.groups.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorsFile {
    #[serde(default)]
    operator: Vec<OperatorEntry>,
}

/// Reads and checks the operators file.
pub fn read_operators(path: &Path) -> Result<Vec<OperatorEntry>, OperatorsFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| OperatorsFileError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let file: OperatorsFile = toml::from_str(&text).map_err(|e| OperatorsFileError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let invalid = OperatorsFileError::Invalid;
    let mut names = std::collections::BTreeSet::new();
    for op in &file.operator {
        if herold_proto::ids::validate_id("operator", &op.name).is_err() {
            return Err(invalid(format!(
                "operator name {:?} is not a valid id",
                op.name
            )));
        }
        if !names.insert(op.name.clone()) {
            return Err(invalid(format!("operator {:?} is listed twice", op.name)));
        }
        if op.token.is_none() && op.cert_sha256.is_none() {
            return Err(invalid(format!(
                "operator {:?} has neither a token nor a cert_sha256",
                op.name
            )));
        }
        if op.token.as_ref().is_some_and(|t| t.trim().len() < 16) {
            return Err(invalid(format!(
                "the token of operator {:?} is shorter than 16 characters",
                op.name
            )));
        }
        if let Some(fp) = &op.cert_sha256
            && (fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid(format!(
                "cert_sha256 of operator {:?} is not 64 hex digits",
                op.name
            )));
        }
        if op.role == OperatorRole::GroupAdmin && op.groups.is_empty() {
            return Err(invalid(format!("group admin {:?} has no groups", op.name)));
        }
        if op.role != OperatorRole::GroupAdmin && !op.groups.is_empty() {
            return Err(invalid(format!(
                "operator {:?} lists groups but is not a group-admin",
                op.name
            )));
        }
    }
    Ok(file.operator)
}

/// Bytes equal, in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How callers are authenticated.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    /// No credentials configured (loopback only): every caller is the org
    /// admin `local`.
    Open,
    /// The operators (from the file and the single token).
    Operators(Vec<OperatorEntry>),
}

impl Auth {
    /// The operator presenting `bearer` (the `authorization` header) or a
    /// client certificate with SHA-256 `cert_fp`.
    pub fn identify(
        &self,
        bearer: Option<&str>,
        cert_fp: Option<&str>,
    ) -> Result<Operator, tonic::Status> {
        let ops = match self {
            Auth::Open => {
                return Ok(Operator {
                    name: "local".into(),
                    role: OperatorRole::OrgAdmin,
                    groups: Vec::new(),
                });
            }
            Auth::Operators(ops) => ops,
        };
        if let Some(h) = bearer {
            let Some(token) = h.strip_prefix("Bearer ") else {
                return Err(tonic::Status::unauthenticated(
                    "the authorization header must be `Bearer <token>`",
                ));
            };
            // Check every entry, so the time does not tell which matched.
            let mut found = None;
            for op in ops {
                if let Some(t) = &op.token
                    && constant_time_eq(t.trim().as_bytes(), token.as_bytes())
                {
                    found = Some(op);
                }
            }
            return found
                .map(OperatorEntry::operator)
                .ok_or_else(|| tonic::Status::unauthenticated("the bearer token is wrong"));
        }
        if let Some(fp) = cert_fp {
            return ops
                .iter()
                .find(|op| {
                    op.cert_sha256
                        .as_ref()
                        .is_some_and(|c| c.eq_ignore_ascii_case(fp))
                })
                .map(OperatorEntry::operator)
                .ok_or_else(|| {
                    tonic::Status::unauthenticated("the client certificate is not an operator's")
                });
        }
        Err(tonic::Status::unauthenticated(
            "missing authorization: Bearer <token> (or an operator's client certificate)",
        ))
    }
}
