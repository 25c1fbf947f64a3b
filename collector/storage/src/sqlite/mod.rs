//! The embedded SQLite backend: one database file, one writer at a time
//! (SQLite allows one), readers on the same file read-only that see
//! committed data while the writer works (WAL mode). docs/schema.md
//! describes every table, view and column; the sqlite3 CLI reads the file
//! directly for anything the canned queries do not answer.
//!
//! - [`schema`]: the versioned migrations.
//! - `write`: the idempotent batch write path, names and retention.
//! - `read`: the typed readers.
//! - `query`: the canned questions as SQL over the views.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use wire_format::BatchView;

use crate::query::{Answer, Question};
use crate::rows::{AgentWindow, BatchRow, PathWindow, RowCounts, SampledFlowRow, SampledProbeRow, Stored, WindowInfo};
use crate::{BatchWriter, Reader, StoreError};

mod query;
mod read;
pub mod schema;
mod write;

pub use schema::SCHEMA_VERSION;

/// A flowmesh SQLite database, opened for writing ([`SqliteStore::open`]) or
/// reading ([`SqliteStore::open_read_only`]).
pub struct SqliteStore {
    conn: Connection,
    /// The file, for [`Reader::another`].
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if missing) the database for writing, in WAL mode, and
    /// migrates it to [`SCHEMA_VERSION`]. A database of a newer schema is
    /// refused before anything is written to it.
    ///
    /// `synchronous = FULL`: a transaction is on disk when commit returns, so
    /// a batch acknowledged after commit survives a crash or power loss.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_error)?;
        // Reading the header writes nothing; switching the journal mode
        // would, so the version is checked first.
        schema::refuse_newer(&conn, path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             PRAGMA cache_size = -65536;",
        )
        .map_err(open_error)?;
        schema::migrate(&conn, path, SCHEMA_VERSION)?;
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing database read-only, for the analyzer and queries.
    /// Safe while the collector writes.
    pub fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags).map_err(open_error)?;
        conn.execute_batch("PRAGMA busy_timeout = 5000;").map_err(open_error)?;
        let found = schema::refuse_newer(&conn, path)?;
        if found < SCHEMA_VERSION {
            return Err(StoreError::OlderSchema {
                path: path.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The database's schema version.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(schema::version(&self.conn)?)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Bytes the database at `path` takes on disk: the file and its
/// write-ahead log.
pub fn database_bytes(path: &Path) -> u64 {
    let size = |suffix: &str| {
        let mut name = path.as_os_str().to_os_string();
        name.push(suffix);
        std::fs::metadata(name).map_or(0, |m| m.len())
    };
    size("") + size("-wal")
}

/// SQLite integers are signed 64-bit. Counters and times beyond i64::MAX
/// (292 years of nanoseconds) cannot occur in practice and saturate.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl BatchWriter for SqliteStore {
    fn store_batches(&mut self, batches: &[BatchView<'_>], received_ns: u64) -> Result<Vec<Stored>, StoreError> {
        write::store_batches(&mut self.conn, batches, received_ns)
    }

    fn upsert_rack(&mut self, rack_id: u32, name: &str) -> Result<(), StoreError> {
        write::upsert_rack(&self.conn, rack_id, name)
    }

    fn upsert_node(&mut self, node_id: u32, name: &str, rack_id: u32) -> Result<(), StoreError> {
        write::upsert_node(&self.conn, node_id, name, rack_id)
    }

    fn prune(&mut self, cutoff_ns: u64, max_batches: usize) -> Result<usize, StoreError> {
        write::prune(&mut self.conn, cutoff_ns, max_batches)
    }
}

impl Reader for SqliteStore {
    fn windows(&self, from_ns: u64, to_ns: u64) -> Result<Vec<WindowInfo>, StoreError> {
        read::windows(&self.conn, from_ns, to_ns)
    }

    fn path_windows(&self, window: &WindowInfo, progress: &dyn Fn(u64)) -> Result<Vec<PathWindow>, StoreError> {
        read::path_windows(&self.conn, window, progress)
    }

    fn agent_windows(&self, from_ns: u64, to_ns: u64) -> Result<Vec<AgentWindow>, StoreError> {
        read::agent_windows(&self.conn, from_ns, to_ns)
    }

    fn history_start(&self, from_ns: u64, windows: u32) -> Result<u64, StoreError> {
        read::history_start(&self.conn, from_ns, windows)
    }

    fn batches(&self, from_ns: u64, to_ns: u64) -> Result<Vec<BatchRow>, StoreError> {
        read::batches(&self.conn, from_ns, to_ns)
    }

    fn sampled_flows(&self, from_ns: u64, to_ns: u64) -> Result<Vec<SampledFlowRow>, StoreError> {
        read::sampled_flows(&self.conn, from_ns, to_ns)
    }

    fn sampled_probes(&self, from_ns: u64, to_ns: u64) -> Result<Vec<SampledProbeRow>, StoreError> {
        read::sampled_probes(&self.conn, from_ns, to_ns)
    }

    fn row_counts(&self) -> Result<RowCounts, StoreError> {
        read::row_counts(&self.conn)
    }

    fn ask(&self, question: &Question, since_ns: u64, limit: usize) -> Result<Answer, StoreError> {
        query::ask(&self.conn, question, since_ns, limit)
    }

    fn another(&self) -> Result<Option<Box<dyn Reader>>, StoreError> {
        // An in-memory or temporary database has no file a second
        // connection could open.
        if self.conn.path().is_none_or(str::is_empty) {
            return Ok(None);
        }
        Ok(Some(Box::new(SqliteStore::open_read_only(&self.path)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database left at every earlier schema version, with data in it,
    /// migrates to the current one and keeps the data.
    #[test]
    fn migrates_from_every_earlier_version() {
        for start in 0..SCHEMA_VERSION {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("old.db");
            {
                let conn = Connection::open(&path).unwrap();
                schema::migrate(&conn, &path, start).unwrap();
                assert_eq!(schema::version(&conn).unwrap(), start);
                if start >= 1 {
                    conn.execute("INSERT INTO racks (rack_id, name) VALUES (1, 'kept')", [])
                        .unwrap();
                }
            }
            // A reader refuses the old version rather than misreading it.
            let err = SqliteStore::open_read_only(&path).err().unwrap();
            assert!(matches!(err, StoreError::OlderSchema { .. }), "{err}");
            let store = SqliteStore::open(&path).unwrap();
            assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
            if start >= 1 {
                let name: String = store
                    .conn
                    .query_row("SELECT name FROM racks WHERE rack_id = 1", [], |r| r.get(0))
                    .unwrap();
                assert_eq!(name, "kept");
            }
        }
    }

    /// A failing migration leaves the database at the version before it.
    #[test]
    fn failed_migration_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clash.db");
        let conn = Connection::open(&path).unwrap();
        // A table the first migration wants to create already exists.
        conn.execute_batch("CREATE TABLE batches (x INTEGER)").unwrap();
        let err = schema::migrate(&conn, &path, SCHEMA_VERSION).unwrap_err();
        assert!(matches!(err, StoreError::Migrate { version: 1, .. }), "{err}");
        assert_eq!(schema::version(&conn).unwrap(), 0);
        let racks: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_master WHERE name = 'racks'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(racks, 0, "the half-applied migration was rolled back");
    }

    /// An in-memory database has no second reader: reads stay serial.
    #[test]
    fn an_in_memory_database_reads_serially() {
        let store = SqliteStore {
            conn: Connection::open_in_memory().unwrap(),
            path: PathBuf::new(),
        };
        assert!(store.another().unwrap().is_none());
    }
}
