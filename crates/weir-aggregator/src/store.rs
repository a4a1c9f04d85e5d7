//! Persistence in an embedded SQLite database: edges (the baseline among them), alerts, recent flows and each
//! agent's cursor, written together in one transaction per checkpoint. An agent's batch is acknowledged only
//! once a checkpoint holding its effects has committed, so a crash between checkpoints loses nothing: the agent
//! still holds those batches and sends them again.

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
    /// A row did not parse (written by a different version?).
    #[error("the database {path}: a stored {what} does not parse: {message}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Which table.
        what: &'static str,
        /// The parser's message.
        message: String,
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
const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
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
        let conn = Connection::open(&path).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
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

    fn corrupt(&self, what: &'static str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what,
            message: e.to_string(),
        }
    }

    /// Reads everything back; records `now` as the start of learning if none is stored yet.
    pub fn restore(&mut self, now: Timestamp) -> Result<Restored, StoreError> {
        let mut out = Restored::default();
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
        let totals: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'totals'", [], |row| {
                row.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        out.totals = totals
            .map(|t| serde_json::from_str(&t).map_err(|e| self.corrupt("totals", e)))
            .transpose()?;
        let rows: Vec<(String, String, i64, i64)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT node, epoch, applied, last_seen FROM cursors")
                .map_err(|e| self.err(e))?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .map_err(|e| self.err(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.err(e))?
        };
        out.cursors = rows
            .into_iter()
            .map(|(node, epoch, applied, last_seen)| Cursor {
                node,
                epoch,
                applied: applied as u64,
                last_seen: Timestamp(last_seen),
            })
            .collect();
        for body in self.column("SELECT body FROM edges ORDER BY rowid")? {
            let row: EdgeRow = serde_json::from_str(&body).map_err(|e| self.corrupt("edge", e))?;
            out.edges.push(row.into());
        }
        for body in self.column("SELECT body FROM alerts ORDER BY rowid")? {
            out.alerts
                .push(serde_json::from_str(&body).map_err(|e| self.corrupt("alert", e))?);
        }
        let chunks: Vec<Vec<u8>> = {
            let mut stmt = self
                .conn
                .prepare("SELECT body FROM flow_chunks ORDER BY id")
                .map_err(|e| self.err(e))?;
            stmt.query_map([], |r| r.get(0))
                .map_err(|e| self.err(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.err(e))?
        };
        for chunk in chunks {
            for line in chunk.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                out.flows
                    .push(serde_json::from_slice(line).map_err(|e| self.corrupt("flow", e))?);
            }
        }
        Ok(out)
    }

    fn column(&self, sql: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get(0))
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
}
