//! [`StoreError`]: why storing or reading failed, with what to do about it.

use std::path::PathBuf;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened or is not an SQLite database.
    #[error("{}", open_message(path, source))]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The database was written by a newer flowmesh; it was left untouched.
    #[error(
        "database {} has schema version {found}, newer than this build's {supported}; \
         run a flowmesh at least as new as the one that wrote it",
        .path.display()
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: u32,
        /// The newest this build knows.
        supported: u32,
    },
    /// A migration failed; the database stays at the previous version.
    #[error("migrating database {} to schema version {version}: {source}", .path.display())]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// The version being migrated to.
        version: u32,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A read-only database is at an older schema version than this build
    /// reads; the collector migrates it when it next opens it.
    #[error(
        "database {} has schema version {found}, this build reads {supported}; \
         start flowmesh-collector once to migrate it",
        .path.display()
    )]
    OlderSchema {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A stored value that no flowmesh writes: the database was edited by
    /// hand or damaged.
    #[error("{table}.{column} holds {value:?}, which flowmesh never writes; the database was edited or is damaged")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The column.
        column: &'static str,
        /// The value found.
        value: String,
    },
    /// A backend reported a different number of outcomes than batches it
    /// was given (a bug in the backend).
    #[error("the store answered {outcomes} outcomes for {batches} batches")]
    Outcomes {
        /// Batches given.
        batches: usize,
        /// Outcomes returned.
        outcomes: usize,
    },
    /// A parallel reader stopped without an answer (it panicked).
    #[error("a database reader thread stopped without an answer")]
    ReaderLost,
    /// A backend other than SQLite failed (a server refused a request, did
    /// not answer, or holds a schema this build cannot use).
    #[error("{backend}: {message}")]
    Backend {
        /// The backend, e.g. `clickhouse`.
        backend: &'static str,
        /// What failed, on one line.
        message: String,
    },
    /// Any other SQLite failure.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// "cannot open database PATH: WHY", naming the path once: SQLite's own
/// message names it when the file could not be opened.
fn open_message(path: &std::path::Path, source: &rusqlite::Error) -> String {
    let why = source.to_string();
    let path = path.display().to_string();
    if why.contains(&path) {
        format!("cannot open database: {why}")
    } else {
        format!("cannot open database {path}: {why}")
    }
}
