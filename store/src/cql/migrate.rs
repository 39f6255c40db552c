//! Versioned schema migrations: the CQL files in `store/migrations/cql/`,
//! applied in order and recorded in `schema_migrations`.

use scylla::client::session::Session;

use super::{backend, config::Replication};
use crate::StoreError;

/// One migration: a version, a name, and CQL statements.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Version, from 1, without gaps.
    pub version: i32,
    /// File name.
    pub name: &'static str,
    /// The file's text.
    pub cql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_initial.cql",
        cql: include_str!("../../migrations/cql/0001_initial.cql"),
    },
    Migration {
        version: 2,
        name: "0002_admin.cql",
        cql: include_str!("../../migrations/cql/0002_admin.cql"),
    },
    Migration {
        version: 3,
        name: "0003_mls.cql",
        cql: include_str!("../../migrations/cql/0003_mls.cql"),
    },
    Migration {
        version: 4,
        name: "0004_code_voiding.cql",
        cql: include_str!("../../migrations/cql/0004_code_voiding.cql"),
    },
    Migration {
        version: 5,
        name: "0005_mls_restart.cql",
        cql: include_str!("../../migrations/cql/0005_mls_restart.cql"),
    },
    Migration {
        version: 6,
        name: "0006_audit_chain.cql",
        cql: include_str!("../../migrations/cql/0006_audit_chain.cql"),
    },
    Migration {
        version: 7,
        name: "0007_declared_adds.cql",
        cql: include_str!("../../migrations/cql/0007_declared_adds.cql"),
    },
    Migration {
        version: 8,
        name: "0008_sealed_sender.cql",
        cql: include_str!("../../migrations/cql/0008_sealed_sender.cql"),
    },
    Migration {
        version: 9,
        name: "0009_expired_data_compaction.cql",
        cql: include_str!("../../migrations/cql/0009_expired_data_compaction.cql"),
    },
    Migration {
        version: 10,
        name: "0010_attachments.cql",
        cql: include_str!("../../migrations/cql/0010_attachments.cql"),
    },
    Migration {
        version: 11,
        name: "0011_push.cql",
        cql: include_str!("../../migrations/cql/0011_push.cql"),
    },
];

impl Migration {
    /// The statements of the file: comments dropped, split at `;` ending a
    /// line.
    pub fn statements(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut current = String::new();
        for line in self.cql.lines() {
            let code = line.split("--").next().unwrap_or("").trim_end();
            if code.trim().is_empty() {
                continue;
            }
            current.push_str(code);
            current.push('\n');
            if code.ends_with(';') {
                let stmt = current.trim().trim_end_matches(';').trim().to_owned();
                if !stmt.is_empty() {
                    out.push(stmt);
                }
                current.clear();
            }
        }
        if !current.trim().is_empty() {
            out.push(current.trim().to_owned());
        }
        out
    }

    /// A checksum of the text (FNV-1a, hex), recorded to notice an applied
    /// migration that was edited afterwards.
    pub fn checksum(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.cql.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// How long [`migrate`] tries again when the cluster fails a step, e.g. a
/// node that joined a moment ago and has not received the schema yet
/// (`INCOMPATIBLE_SCHEMA`): a relay started together with its cluster
/// waits for it to settle instead of failing.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Creates the keyspace if needed, then applies the pending migrations.
/// Safe to run from several processes at once: DDL uses `IF NOT EXISTS` and a
/// version is recorded with a lightweight transaction. Returns the versions
/// applied by this call (by its last try). A step the cluster fails is
/// tried again (every step can be repeated) for up to a minute; a migration
/// that was edited after it was applied fails at once.
pub async fn migrate(
    session: &Session,
    keyspace: &str,
    replication: &Replication,
) -> Result<Vec<i32>, StoreError> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        match migrate_once(session, keyspace, replication).await {
            Ok(applied) => return Ok(applied),
            Err(StoreError::Backend(e)) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, keyspace, "migrating the keyspace failed; trying again");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn migrate_once(
    session: &Session,
    keyspace: &str,
    replication: &Replication,
) -> Result<Vec<i32>, StoreError> {
    super::config::validate_keyspace(keyspace)?;
    let ddl = |op: &'static str| move |e| backend(op, e);
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {} \
                 AND durable_writes = true",
                replication.cql()
            ),
            (),
        )
        .await
        .map_err(ddl("create keyspace"))?;
    session
        .query_unpaged(
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations (\
                 version int PRIMARY KEY, name text, checksum text, applied_at_ms bigint)"
            ),
            (),
        )
        .await
        .map_err(ddl("create schema_migrations"))?;
    session
        .await_schema_agreement()
        .await
        .map_err(|e| StoreError::Backend(format!("schema agreement: {e}")))?;

    let applied = session
        .query_unpaged(
            format!("SELECT version, checksum FROM {keyspace}.schema_migrations"),
            (),
        )
        .await
        .map_err(ddl("read schema_migrations"))?
        .into_rows_result()
        .map_err(|e| StoreError::Backend(format!("read schema_migrations: {e}")))?;
    let mut done = std::collections::BTreeMap::new();
    for row in applied
        .rows::<(i32, Option<String>)>()
        .map_err(|e| StoreError::Backend(format!("read schema_migrations: {e}")))?
    {
        let (v, sum) = row.map_err(|e| StoreError::Backend(format!("schema_migrations: {e}")))?;
        done.insert(v, sum.unwrap_or_default());
    }

    let mut now_applied = Vec::new();
    for m in MIGRATIONS {
        if let Some(sum) = done.get(&m.version) {
            if *sum != m.checksum() {
                return Err(StoreError::InvalidConfig(format!(
                    "migration {} ({}) was changed after it was applied to keyspace {keyspace} \
                     (recorded checksum {sum}, now {}): add a new migration instead",
                    m.version,
                    m.name,
                    m.checksum()
                )));
            }
            continue;
        }
        for stmt in m.statements() {
            let added = added_column(&stmt);
            if let Some((table, column)) = added
                && has_column(session, keyspace, table, column).await?
            {
                continue;
            }
            let stmt = qualify(&stmt, keyspace);
            if let Err(e) = session.query_unpaged(stmt.clone(), ()).await {
                // Another relay migrating at the same time added it first.
                let added_meanwhile = match added {
                    Some((table, column)) => has_column(session, keyspace, table, column).await?,
                    None => false,
                };
                if !added_meanwhile {
                    return Err(StoreError::Backend(format!(
                        "migration {}: {stmt}: {e}",
                        m.name
                    )));
                }
            }
        }
        session
            .await_schema_agreement()
            .await
            .map_err(|e| StoreError::Backend(format!("schema agreement: {e}")))?;
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {keyspace}.schema_migrations (version, name, checksum, applied_at_ms) \
                     VALUES (?, ?, ?, ?) IF NOT EXISTS"
                ),
                (m.version, m.name, m.checksum(), super::wall_ms()),
            )
            .await
            .map_err(ddl("record migration"))?;
        now_applied.push(m.version);
    }
    Ok(now_applied)
}

/// The table and column of an `ALTER TABLE <table> ADD <column> <type>`
/// statement (one column per statement).
fn added_column(stmt: &str) -> Option<(&str, &str)> {
    let mut words = stmt.split_whitespace();
    match (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) {
        (Some("ALTER"), Some("TABLE"), Some(table), Some("ADD"), Some(column)) => {
            Some((table, column))
        }
        _ => None,
    }
}

/// Whether the table has the column already (`ALTER TABLE ... ADD` is not
/// idempotent: Scylla has no `ADD IF NOT EXISTS`).
async fn has_column(
    session: &Session,
    keyspace: &str,
    table: &str,
    column: &str,
) -> Result<bool, StoreError> {
    session
        .await_schema_agreement()
        .await
        .map_err(|e| StoreError::Backend(format!("schema agreement: {e}")))?;
    let rows = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
            (keyspace, table, column),
        )
        .await
        .map_err(|e| backend("read system_schema.columns", e))?
        .into_rows_result()
        .map_err(|e| backend("read system_schema.columns", e))?;
    Ok(rows.rows_num() > 0)
}

/// Puts the keyspace before the table name of a `CREATE TABLE [IF NOT
/// EXISTS]` or `ALTER TABLE` statement; other statements are left alone.
fn qualify(stmt: &str, keyspace: &str) -> String {
    for prefix in [
        "CREATE TABLE IF NOT EXISTS ",
        "CREATE TABLE ",
        "ALTER TABLE ",
    ] {
        if let Some(rest) = stmt.strip_prefix(prefix) {
            return format!("{prefix}{keyspace}.{rest}");
        }
    }
    stmt.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_split_into_statements() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "versions are 1, 2, ... in order");
            let stmts = m.statements();
            assert!(!stmts.is_empty());
            for s in &stmts {
                // Table options (ALTER TABLE ... WITH) are idempotent too.
                let options =
                    s.starts_with("ALTER TABLE ") && s.split_whitespace().nth(3) == Some("WITH");
                assert!(
                    s.starts_with("CREATE ") || added_column(s).is_some() || options,
                    "{s}"
                );
                assert!(!s.contains(';'), "{s}");
                assert!(!s.contains("--"), "{s}");
            }
        }
        assert_eq!(MIGRATIONS[0].statements().len(), 11);
        assert_eq!(MIGRATIONS[1].statements().len(), 6);
        assert_eq!(MIGRATIONS[2].statements().len(), 8);
        assert_eq!(
            qualify("CREATE TABLE IF NOT EXISTS t (a int PRIMARY KEY)", "ks"),
            "CREATE TABLE IF NOT EXISTS ks.t (a int PRIMARY KEY)"
        );
        assert_eq!(
            qualify("ALTER TABLE t ADD c bigint", "ks"),
            "ALTER TABLE ks.t ADD c bigint"
        );
        assert_eq!(
            added_column("ALTER TABLE conversations ADD mls_epoch bigint"),
            Some(("conversations", "mls_epoch"))
        );
        assert_eq!(added_column("CREATE TABLE IF NOT EXISTS t (a int)"), None);
    }
}
