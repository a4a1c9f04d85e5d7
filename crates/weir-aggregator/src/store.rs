//! Persistence in an embedded SQLite database: edges (the baseline among them), alerts, recent flows and each
//! agent's cursor, written together in one transaction per checkpoint. An agent's batch is acknowledged only
//! once a checkpoint holding its effects has committed, so a crash between checkpoints loses nothing: the agent
//! still holds those batches and sends them again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use weir_model::{Alert, Timestamp};

use crate::engine::{Forgotten, StoredFlow, Totals};
use crate::rows::EdgeRow;
use weir_analysis::EdgeStats;

/// One agent run's position.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Cursor {
    /// Node.
    pub node: String,
    /// Agent run.
    pub epoch: String,
    /// Last batch applied and stored.
    pub applied: u64,
    /// When the agent was last heard from (wall clock, ns).
    pub last_seen: Timestamp,
}

/// What a checkpoint writes.
#[derive(Debug, Default)]
pub struct Checkpoint {
    /// Edges changed.
    pub edges: Vec<EdgeStats>,
    /// Alerts changed.
    pub alerts: Vec<Alert>,
    /// Flows added.
    pub flows: Vec<StoredFlow>,
    /// Every agent's cursor.
    pub cursors: Vec<Cursor>,
    /// The engine's totals.
    pub totals: Totals,
    /// Edges and alerts the engine forgot to stay within its bounds (deleted before the changes are written).
    pub forgotten: Forgotten,
}

/// What a store held at start.
#[derive(Debug, Default)]
pub struct Restored {
    /// When the baseline started to be learned.
    pub learning_started: Option<Timestamp>,
    /// Edges.
    pub edges: Vec<EdgeStats>,
    /// Alerts.
    pub alerts: Vec<Alert>,
    /// Recent flows, oldest first.
    pub flows: Vec<StoredFlow>,
    /// Agent cursors.
    pub cursors: Vec<Cursor>,
    /// The engine's totals at the last checkpoint.
    pub totals: Option<Totals>,
    /// Rows that did not parse, moved to the `quarantine` table, by the table they were in.
    pub quarantined: BTreeMap<&'static str, u64>,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("the database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The database was written by a newer weir, whose layout this one does not know.
    #[error(
        "the database {path} has schema version {found}, newer than this weir's {known}: run the weir that wrote \
         it, or move the data directory aside to start afresh"
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// This weir's.
        known: i64,
    },
}

/// The database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    flow_capacity: usize,
    retention: Duration,
}

// synchronous = FULL: in WAL mode every commit syncs the log before it returns, so a checkpoint that returned
// is on disk and the batches it covers may be acknowledged (NORMAL syncs only at WAL checkpoints: a power loss
// could take back what agents were told is durable and have already deleted). One sync per checkpoint, every
// second by default.
const PRAGMAS: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
";

/// The layout's version, kept in SQLite's `user_version`. 1: the layout before versions were kept (0 on disk).
/// 2: rows that do not parse are moved to `quarantine` instead of stopping the start.
pub const SCHEMA_VERSION: i64 = 2;

/// Layout 1: what every database has.
const LAYOUT_1: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (
    node TEXT NOT NULL, epoch TEXT NOT NULL, applied INTEGER NOT NULL, last_seen INTEGER NOT NULL,
    PRIMARY KEY (node, epoch));
CREATE TABLE IF NOT EXISTS edges (key TEXT PRIMARY KEY, last_seen INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (id TEXT PRIMARY KEY, last_seen INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS flow_chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, last_end INTEGER NOT NULL, count INTEGER NOT NULL,
    body BLOB NOT NULL);
";

/// From each layout to the next: `MIGRATIONS[i]` takes layout `i + 1` to `i + 2`.
const MIGRATIONS: [&str; 1] = ["
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, key TEXT NOT NULL, body BLOB NOT NULL,
    error TEXT NOT NULL, at INTEGER NOT NULL);
"];

/// A row to move aside: its table, `rowid` (-1: not deleted, only kept aside), key, body and why it does not
/// parse.
struct BadRow {
    table: &'static str,
    rowid: i64,
    key: String,
    body: Vec<u8>,
    error: String,
}

impl BadRow {
    fn new(
        table: &'static str,
        rowid: i64,
        key: String,
        body: Vec<u8>,
        e: impl std::fmt::Display,
    ) -> BadRow {
        BadRow {
            table,
            rowid,
            key,
            body,
            error: e.to_string(),
        }
    }
}

/// Why the layout could not be brought up to date.
enum Migration {
    Sqlite(rusqlite::Error),
    Newer(i64),
}

/// Brings the layout to [`SCHEMA_VERSION`] in one transaction: a fresh database gets layout 1 and every
/// migration; one written before versions were kept (0) is layout 1.
fn migrate(conn: &mut Connection) -> Result<(), Migration> {
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(Migration::Sqlite)?;
    if found > SCHEMA_VERSION {
        return Err(Migration::Newer(found));
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction().map_err(Migration::Sqlite)?;
    tx.execute_batch(LAYOUT_1).map_err(Migration::Sqlite)?;
    let from = found.max(1);
    for (i, step) in MIGRATIONS.iter().enumerate() {
        if (i as i64) + 1 >= from {
            tx.execute_batch(step).map_err(Migration::Sqlite)?;
        }
    }
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))
        .map_err(Migration::Sqlite)?;
    tx.commit().map_err(Migration::Sqlite)?;
    if found > 0 {
        tracing::info!("the database layout moved from version {found} to {SCHEMA_VERSION}");
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) `weir.db` in `dir`. Keeps at most `flow_capacity` recent flows, and edges, alerts
    /// and flows no older than `retention`.
    pub fn open(
        dir: &Path,
        flow_capacity: usize,
        retention: Duration,
    ) -> Result<Store, StoreError> {
        let path = dir.join("weir.db");
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(err)?;
        conn.execute_batch(PRAGMAS).map_err(err)?;
        migrate(&mut conn).map_err(|e| match e {
            Migration::Sqlite(source) => err(source),
            Migration::Newer(found) => StoreError::NewerSchema {
                path: path.clone(),
                found,
                known: SCHEMA_VERSION,
            },
        })?;
        Ok(Store {
            conn,
            path,
            flow_capacity,
            retention,
        })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The schema version on disk.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Moves rows that do not parse to `quarantine` (one transaction), so the next start does not meet them.
    fn quarantine(&mut self, bad: &[BadRow], now: Timestamp) -> Result<(), StoreError> {
        if bad.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        for row in bad {
            tracing::warn!(
                "{}: a row of {} ({}) does not parse and is moved to the quarantine table: {}",
                path.display(),
                row.table,
                row.key,
                row.error
            );
            tx.execute(
                "INSERT INTO quarantine (source, key, body, error, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![row.table, row.key, row.body, row.error, now.0],
            )
            .map_err(err)?;
            // Table names are this module's constants.
            if row.rowid >= 0 {
                tx.execute(
                    &format!("DELETE FROM {} WHERE rowid = ?1", row.table),
                    params![row.rowid],
                )
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Reads everything back; records `now` as the start of learning if none is stored yet. A row that does not
    /// parse (a disk error, a hand edit, a bug) is moved to the `quarantine` table and counted in
    /// [`Restored::quarantined`]: the start goes on with the rest.
    pub fn restore(&mut self, now: Timestamp) -> Result<Restored, StoreError> {
        let mut out = Restored::default();
        let mut bad = Vec::new();
        let learning: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'learning_started'",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        match learning.and_then(|v| v.parse::<i64>().ok()) {
            Some(ns) => out.learning_started = Some(Timestamp(ns)),
            None => {
                self.conn
                    .execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('learning_started', ?1)",
                        params![now.0.to_string()],
                    )
                    .map_err(|e| self.err(e))?;
                out.learning_started = Some(now);
            }
        }
        for (rowid, key, body) in
            self.rows("SELECT rowid, key, value FROM meta WHERE key = 'totals'")?
        {
            match serde_json::from_slice(&body) {
                Ok(t) => out.totals = Some(t),
                Err(e) => bad.push(BadRow::new("meta", rowid, key, body, e)),
            }
        }
        let cursors = self.rows(
            "SELECT rowid, node || ' ' || epoch, json_array(node, epoch, applied, last_seen) FROM cursors",
        )?;
        for (rowid, key, body) in cursors {
            match serde_json::from_slice::<(String, String, i64, i64)>(&body) {
                Ok((node, epoch, applied, last_seen)) => out.cursors.push(Cursor {
                    node,
                    epoch,
                    // Written as SQLite's signed integer.
                    applied: applied as u64,
                    last_seen: Timestamp(last_seen),
                }),
                Err(e) => bad.push(BadRow::new("cursors", rowid, key, body, e)),
            }
        }
        for (rowid, key, body) in self.rows("SELECT rowid, key, body FROM edges ORDER BY rowid")? {
            match serde_json::from_slice::<EdgeRow>(&body) {
                Ok(row) => out.edges.push(row.into()),
                Err(e) => bad.push(BadRow::new("edges", rowid, key, body, e)),
            }
        }
        for (rowid, key, body) in self.rows("SELECT rowid, id, body FROM alerts ORDER BY rowid")? {
            match serde_json::from_slice(&body) {
                Ok(alert) => out.alerts.push(alert),
                Err(e) => bad.push(BadRow::new("alerts", rowid, key, body, e)),
            }
        }
        // A chunk holds many flows: one that does not parse is quarantined by itself, the chunk keeps the rest.
        let mut rewrite = Vec::new();
        for (id, key, chunk) in self.rows("SELECT id, id, body FROM flow_chunks ORDER BY id")? {
            let mut kept = Vec::with_capacity(chunk.len());
            let mut dropped = 0;
            for line in chunk.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                match serde_json::from_slice(line) {
                    Ok(flow) => {
                        out.flows.push(flow);
                        kept.extend_from_slice(line);
                        kept.push(b'\n');
                    }
                    Err(e) => {
                        dropped += 1;
                        // Kept aside with the chunk's id as its key; the chunk itself stays.
                        bad.push(BadRow {
                            table: "flow_chunks",
                            rowid: -1,
                            key: key.clone(),
                            body: line.to_vec(),
                            error: e.to_string(),
                        });
                    }
                }
            }
            if dropped > 0 {
                rewrite.push((id, kept, dropped));
            }
        }
        for row in &bad {
            *out.quarantined.entry(row.table).or_default() += 1;
        }
        self.quarantine(&bad, now)?;
        for (id, body, dropped) in rewrite {
            self.conn
                .execute(
                    "UPDATE flow_chunks SET body = ?1, count = MAX(count - ?2, 0) WHERE id = ?3",
                    params![body, dropped, id],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(out)
    }

    /// Rows as (rowid, key, body): the body read as bytes whatever type SQLite holds it in.
    fn rows(&self, sql: &str) -> Result<Vec<(i64, String, Vec<u8>)>, StoreError> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let key = match r.get_ref(1)? {
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        String::from_utf8_lossy(t).into_owned()
                    }
                    rusqlite::types::ValueRef::Integer(i) => i.to_string(),
                    rusqlite::types::ValueRef::Real(f) => f.to_string(),
                    rusqlite::types::ValueRef::Null => String::new(),
                };
                let body = match r.get_ref(2)? {
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        t.to_vec()
                    }
                    other => format!("{other:?}").into_bytes(),
                };
                Ok((r.get(0)?, key, body))
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Writes a checkpoint in one transaction, and applies retention.
    pub fn write(&mut self, cp: &Checkpoint, now: Timestamp) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut forget_edge = tx
                .prepare_cached("DELETE FROM edges WHERE key = ?1")
                .map_err(err)?;
            for key in &cp.forgotten.edges {
                let key = serde_json::to_string(key).unwrap_or_default();
                forget_edge.execute(params![key]).map_err(err)?;
            }
            let mut forget_alert = tx
                .prepare_cached("DELETE FROM alerts WHERE id = ?1")
                .map_err(err)?;
            for id in &cp.forgotten.alerts {
                forget_alert.execute(params![id.as_ref()]).map_err(err)?;
            }
            let mut edge = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO edges (key, last_seen, body) VALUES (?1, ?2, ?3)",
                )
                .map_err(err)?;
            for e in &cp.edges {
                let key = serde_json::to_string(&e.key).unwrap_or_default();
                let body = serde_json::to_string(&EdgeRow::from(e)).unwrap_or_default();
                edge.execute(params![key, e.last_seen.0, body])
                    .map_err(err)?;
            }
            let mut alert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO alerts (id, last_seen, body) VALUES (?1, ?2, ?3)",
                )
                .map_err(err)?;
            for a in &cp.alerts {
                let body = serde_json::to_string(a).unwrap_or_default();
                alert
                    .execute(params![a.id, a.last_seen.0, body])
                    .map_err(err)?;
            }
            let mut cursor = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO cursors (node, epoch, applied, last_seen) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(err)?;
            for c in &cp.cursors {
                cursor
                    .execute(params![c.node, c.epoch, c.applied as i64, c.last_seen.0])
                    .map_err(err)?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('totals', ?1)",
                params![serde_json::to_string(&cp.totals).unwrap_or_default()],
            )
            .map_err(err)?;
            if !cp.flows.is_empty() {
                let skip = cp.flows.len().saturating_sub(self.flow_capacity);
                let mut body = Vec::new();
                for f in &cp.flows[skip..] {
                    if serde_json::to_writer(&mut body, f).is_ok() {
                        body.push(b'\n');
                    }
                }
                let last_end = cp.flows.iter().map(|f| f.record.end.0).max().unwrap_or(0);
                tx.execute(
                    "INSERT INTO flow_chunks (last_end, count, body) VALUES (?1, ?2, ?3)",
                    params![last_end, (cp.flows.len() - skip) as i64, body],
                )
                .map_err(err)?;
                // Keep the newest chunks that hold the capacity.
                tx.execute(
                    "DELETE FROM flow_chunks WHERE id < (
                        SELECT COALESCE(MIN(id), 0) FROM (
                            SELECT id, SUM(count) OVER (ORDER BY id DESC) AS newer FROM flow_chunks
                        ) WHERE newer >= ?1)",
                    params![self.flow_capacity as i64],
                )
                .map_err(err)?;
            }
            let horizon = now
                .0
                .saturating_sub(weir_model::duration_nanos(self.retention));
            for table in ["edges", "alerts"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE last_seen < ?1"),
                    params![horizon],
                )
                .map_err(err)?;
            }
            tx.execute(
                "DELETE FROM flow_chunks WHERE last_end < ?1",
                params![horizon],
            )
            .map_err(err)?;
            // Agent runs not heard from within the retention are gone for good.
            tx.execute("DELETE FROM cursors WHERE last_seen < ?1", params![horizon])
                .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// SQLite's `synchronous` setting in force (2 is FULL).
    pub fn synchronous(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_is_on_disk_when_it_returns() {
        let dir = std::env::temp_dir().join(format!("weir-store-sync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        let store =
            Store::open(&dir, 10, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        // FULL: every commit syncs the write-ahead log before it returns (acknowledgements follow commits).
        assert_eq!(store.synchronous().ok(), Some(2));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A data directory for one test, removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir =
                std::env::temp_dir().join(format!("weir-store-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The layout every aggregator wrote before schema versions were kept (version 0 on disk), as it was.
    const UNVERSIONED: &str = "
        PRAGMA journal_mode = WAL;
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE cursors (
            node TEXT NOT NULL, epoch TEXT NOT NULL, applied INTEGER NOT NULL, last_seen INTEGER NOT NULL,
            PRIMARY KEY (node, epoch));
        CREATE TABLE edges (key TEXT PRIMARY KEY, last_seen INTEGER NOT NULL, body TEXT NOT NULL);
        CREATE TABLE alerts (id TEXT PRIMARY KEY, last_seen INTEGER NOT NULL, body TEXT NOT NULL);
        CREATE TABLE flow_chunks (
            id INTEGER PRIMARY KEY AUTOINCREMENT, last_end INTEGER NOT NULL, count INTEGER NOT NULL,
            body BLOB NOT NULL);
    ";

    fn unversioned_database(dir: &Path, edges: &[(&str, &str)]) {
        let conn = Connection::open(dir.join("weir.db")).unwrap_or_else(|e| panic!("{e}"));
        conn.execute_batch(UNVERSIONED)
            .unwrap_or_else(|e| panic!("{e}"));
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('learning_started', '1764000000000000000')",
            [],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        conn.execute(
            "INSERT INTO cursors VALUES ('node-a', 'e1', 41, 1764000000000000000)",
            [],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for (key, body) in edges {
            conn.execute(
                "INSERT INTO edges (key, last_seen, body) VALUES (?1, 1764000000000000000, ?2)",
                params![key, body],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn a_database_of_the_previous_layout_is_migrated_and_reads_back() {
        let dir = Dir::new("migrate");
        unversioned_database(&dir.0, &[("k1", crate::rows::tests::STORED)]);
        let retention = Duration::from_secs(3600 * 24 * 365 * 100);
        let mut store = Store::open(&dir.0, 10, retention).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.schema_version().ok(), Some(SCHEMA_VERSION));
        let restored = store
            .restore(Timestamp(1_800_000_000_000_000_000))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            restored.learning_started,
            Some(Timestamp(1_764_000_000_000_000_000))
        );
        assert_eq!(restored.edges.len(), 1);
        assert_eq!(restored.edges[0].flows, 3);
        assert_eq!(restored.cursors.len(), 1);
        assert_eq!(restored.cursors[0].applied, 41);
        assert!(restored.quarantined.is_empty());
        drop(store);
        // Opened again: already at the version, nothing to do; the rows are still there.
        let mut store = Store::open(&dir.0, 10, retention).unwrap_or_else(|e| panic!("{e}"));
        let again = store
            .restore(Timestamp(1_800_000_000_000_000_000))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.edges.len(), 1);
    }

    #[test]
    fn a_database_from_a_newer_weir_is_refused() {
        let dir = Dir::new("newer");
        let conn = Connection::open(dir.0.join("weir.db")).unwrap_or_else(|e| panic!("{e}"));
        conn.execute_batch("PRAGMA user_version = 99;")
            .unwrap_or_else(|e| panic!("{e}"));
        drop(conn);
        match Store::open(&dir.0, 10, Duration::from_secs(60)) {
            Err(e @ StoreError::NewerSchema { found: 99, .. }) => {
                assert!(e.to_string().contains("newer than this weir's"), "{e}");
            }
            Err(e) => panic!("another error: {e}"),
            Ok(_) => panic!("opened a database of a newer layout"),
        }
    }

    #[test]
    fn rows_that_do_not_parse_are_quarantined_and_the_rest_restored() {
        let dir = Dir::new("quarantine");
        unversioned_database(
            &dir.0,
            &[
                ("k1", crate::rows::tests::STORED),
                ("k2", "{\"key\": truncated"),
            ],
        );
        let retention = Duration::from_secs(3600 * 24 * 365 * 100);
        let mut store = Store::open(&dir.0, 10, retention).unwrap_or_else(|e| panic!("{e}"));
        let flows = format!("{{\"not\": \"a flow\"}}\n{}\n", "garbage");
        store
            .conn
            .execute(
                "INSERT INTO flow_chunks (last_end, count, body) VALUES (1, 2, ?1)",
                params![flows.as_bytes()],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('totals', '[1,2')",
                [],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let now = Timestamp(1_800_000_000_000_000_000);
        let restored = store.restore(now).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(restored.edges.len(), 1, "the good edge is kept");
        assert_eq!(restored.totals.map(|t| t.records), None);
        let q = &restored.quarantined;
        assert_eq!(
            (q.get("edges"), q.get("flow_chunks"), q.get("meta")),
            (Some(&1), Some(&2), Some(&1))
        );
        let kept: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kept, 4);
        // The next start meets none of them again.
        let again = store.restore(now).unwrap_or_else(|e| panic!("{e}"));
        assert!(again.quarantined.is_empty(), "{:?}", again.quarantined);
        assert_eq!(again.edges.len(), 1);
    }
}
