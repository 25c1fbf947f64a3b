//! [`Store`]: the SQLite database the collector writes and the analyzer reads.
//!
//! One writer at a time (SQLite allows one); readers open the same file
//! read-only and see committed data while the writer works (WAL mode).
//! Batches are stored idempotently: a batch id already present is reported as
//! a duplicate and nothing is written.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, Transaction, params};
use wire_format::{BatchView, Transport, completeness_flags};

use crate::schema::{MIGRATIONS, SCHEMA_VERSION};

/// What storing a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The batch was written and committed.
    New,
    /// A batch with this id was already stored; nothing was written.
    Duplicate,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened or is not an SQLite database.
    #[error("cannot open database {}: {source}", .path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The database was written by a newer flowmesh.
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
    /// Any other SQLite failure.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// The collector's database.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if missing) the database for writing, in WAL mode, and
    /// migrates it to [`SCHEMA_VERSION`].
    ///
    /// `synchronous = FULL`: a transaction is on disk when commit returns, so
    /// a batch acknowledged after commit survives a crash or power loss.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_error)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             PRAGMA cache_size = -65536;",
        )
        .map_err(open_error)?;
        migrate(&conn, path, SCHEMA_VERSION)?;
        Ok(Store { conn })
    }

    /// Opens an existing database read-only, for the analyzer and queries.
    /// Safe while the collector writes.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags).map_err(open_error)?;
        conn.execute_batch("PRAGMA busy_timeout = 5000;").map_err(open_error)?;
        let found = schema_version(&conn).map_err(open_error)?;
        match found.cmp(&SCHEMA_VERSION) {
            std::cmp::Ordering::Greater => Err(StoreError::NewerSchema {
                path: path.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            }),
            std::cmp::Ordering::Less => Err(StoreError::OlderSchema {
                path: path.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            }),
            std::cmp::Ordering::Equal => Ok(Store { conn }),
        }
    }

    /// The underlying connection, for queries.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The database's schema version.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(schema_version(&self.conn)?)
    }

    /// Stores one batch in its own transaction.
    pub fn store_batch(&mut self, batch: &BatchView<'_>, received_ns: u64) -> Result<Stored, StoreError> {
        Ok(self.store_batches(std::slice::from_ref(batch), received_ns)?[0])
    }

    /// Stores several batches in one transaction (one commit, one fsync),
    /// returning what happened to each, in order. On error nothing is stored.
    pub fn store_batches(&mut self, batches: &[BatchView<'_>], received_ns: u64) -> Result<Vec<Stored>, StoreError> {
        let tx = self.conn.transaction()?;
        let outcomes = batches
            .iter()
            .map(|batch| insert_batch(&tx, batch, received_ns))
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit()?;
        Ok(outcomes)
    }

    /// Records a rack's name (or renames it).
    pub fn upsert_rack(&mut self, rack_id: u32, name: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO racks (rack_id, name) VALUES (?1, ?2)
             ON CONFLICT (rack_id) DO UPDATE SET name = excluded.name",
            params![rack_id, name],
        )?;
        Ok(())
    }

    /// Records a node's name and rack.
    pub fn upsert_node(&mut self, node_id: u32, name: &str, rack_id: u32) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO nodes (node_id, name, rack_id) VALUES (?1, ?2, ?3)
             ON CONFLICT (node_id) DO UPDATE SET name = excluded.name, rack_id = excluded.rack_id",
            params![node_id, name, rack_id],
        )?;
        Ok(())
    }

    /// Deletes the oldest batches whose window started before `cutoff_ns`,
    /// with every row they carried, in one transaction; returns how many
    /// batches. Whole windows go together: the oldest `max_batches` batches
    /// set how far this step reaches, and other racks' batches of the same
    /// windows go with them. Call repeatedly with a small `max_batches` so each
    /// transaction, and the time the writer is held, stays short.
    pub fn prune(&mut self, cutoff_ns: u64, max_batches: usize) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let reach: Option<i64> = tx.query_row(
            "SELECT MAX(window_start_ns) FROM (
                 SELECT window_start_ns FROM batches WHERE window_start_ns < ?1
                 ORDER BY window_start_ns LIMIT ?2)",
            params![int(cutoff_ns), i64::try_from(max_batches).unwrap_or(i64::MAX)],
            |row| row.get(0),
        )?;
        let Some(reach) = reach else {
            return Ok(0);
        };
        for table in ["path_windows", "agent_windows", "sampled_flows", "sampled_probes"] {
            tx.execute(&format!("DELETE FROM {table} WHERE window_start_ns <= ?1"), [reach])?;
        }
        let deleted = tx.execute("DELETE FROM batches WHERE window_start_ns <= ?1", [reach])?;
        tx.commit()?;
        Ok(deleted)
    }
}

fn schema_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
}

/// Applies migrations until the database is at `target`, each in its own
/// transaction together with the version bump.
pub(crate) fn migrate(conn: &Connection, path: &Path, target: u32) -> Result<(), StoreError> {
    let found = schema_version(conn).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for version in found..target {
        let apply = || -> rusqlite::Result<()> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let result = conn
                .execute_batch(MIGRATIONS[version as usize])
                .and_then(|()| conn.execute_batch(&format!("PRAGMA user_version = {}", version + 1)));
            match result {
                Ok(()) => conn.execute_batch("COMMIT"),
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    Err(e)
                }
            }
        };
        apply().map_err(|source| StoreError::Migrate {
            path: path.to_path_buf(),
            version: version + 1,
            source,
        })?;
    }
    Ok(())
}

/// SQLite integers are signed 64-bit. Counters and times beyond i64::MAX
/// (292 years of nanoseconds) cannot occur in practice and saturate.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn insert_batch(tx: &Transaction<'_>, batch: &BatchView<'_>, received_ns: u64) -> Result<Stored, StoreError> {
    let h = batch.header;
    let id = &h.batch_id.0[..];
    let inserted = tx.execute(
        "INSERT INTO batches (batch_id, sampler_id, rack_id, window_start_ns, window_len_ns, created_ns,
             received_ns, path_count, completeness_count, flow_sample_count, probe_sample_count,
             malformed_datagrams, records_over_capacity, spool_dropped_batches)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT (batch_id) DO NOTHING",
        params![
            id,
            h.sampler_id.get(),
            h.rack_id.get(),
            int(h.window_start_ns.get()),
            int(h.window_len_ns.get()),
            int(h.created_ns.get()),
            int(received_ns),
            h.path_count.get(),
            h.completeness_count.get(),
            h.flow_sample_count.get(),
            h.probe_sample_count.get(),
            h.malformed_datagrams.get(),
            h.records_over_capacity.get(),
            h.spool_dropped_batches.get(),
        ],
    )?;
    if inserted == 0 {
        return Ok(Stored::Duplicate);
    }
    let window = int(h.window_start_ns.get());
    let window_len = int(h.window_len_ns.get());
    let rack = h.rack_id.get();

    let mut paths = tx.prepare_cached(
        "INSERT INTO path_windows (batch_id, window_start_ns, window_len_ns, rack_id, src_node, dst_node, dscp,
             transport, probes_sent, probes_lost, probes_failed, rtt_min_ns, rtt_p50_ns, rtt_p90_ns, rtt_p99_ns,
             rtt_p999_ns, rtt_max_ns, responder_delay_p50_ns, responder_delay_p99_ns, flows, flows_with_retrans,
             flows_reset, bytes_sent, bytes_received, segs_out, retrans_segs, rtt_histogram)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21,
             ?22, ?23, ?24, ?25, ?26, ?27)",
    )?;
    for p in batch.paths {
        let histogram = batch.histogram(p);
        paths.execute(params![
            id,
            window,
            window_len,
            rack,
            p.src_node.get(),
            p.dst_node.get(),
            p.dscp,
            p.transport().map(Transport::as_str),
            p.probes_sent.get(),
            p.probes_lost.get(),
            p.probes_failed.get(),
            int(p.rtt_min_ns.get()),
            int(p.rtt_p50_ns.get()),
            int(p.rtt_p90_ns.get()),
            int(p.rtt_p99_ns.get()),
            int(p.rtt_p999_ns.get()),
            int(p.rtt_max_ns.get()),
            int(p.responder_delay_p50_ns.get()),
            int(p.responder_delay_p99_ns.get()),
            p.flows.get(),
            p.flows_with_retrans.get(),
            p.flows_reset.get(),
            int(p.bytes_sent.get()),
            int(p.bytes_received.get()),
            int(p.segs_out.get()),
            int(p.retrans_segs.get()),
            (!histogram.is_empty()).then_some(histogram),
        ])?;
    }

    let mut agents = tx.prepare_cached(
        "INSERT INTO agent_windows (batch_id, window_start_ns, window_len_ns, rack_id, node_id, agent_epoch,
             datagrams_expected, datagrams_received, datagrams_duplicate, datagrams_reordered, records, silent,
             restarted, last_seen_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    for c in batch.completeness {
        agents.execute(params![
            id,
            window,
            window_len,
            rack,
            c.node_id.get(),
            c.agent_epoch.get(),
            c.datagrams_expected.get(),
            c.datagrams_received.get(),
            c.datagrams_duplicate.get(),
            c.datagrams_reordered.get(),
            c.records.get(),
            c.flags & completeness_flags::SILENT != 0,
            c.flags & completeness_flags::RESTARTED != 0,
            int(c.last_seen_ns.get()),
        ])?;
    }

    let mut flows = tx.prepare_cached(
        "INSERT INTO sampled_flows (batch_id, window_start_ns, node_id, weight, anomalies, flow_id, src_addr,
             dst_addr, src_port, dst_port, dscp, direction, end_reason, start_ns, duration_ns, bytes_acked,
             bytes_received, segs_out, segs_in, retrans_segs, srtt_us, min_rtt_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21,
             ?22)",
    )?;
    for s in batch.flows {
        let r = &s.record;
        let addr = |ip: Option<std::net::IpAddr>| ip.map(|ip| ip.to_string()).unwrap_or_default();
        flows.execute(params![
            id,
            window,
            s.meta.node_id.get(),
            s.meta.weight.get(),
            s.meta.anomalies,
            // Socket cookies are u64; stored bit for bit as SQLite's signed
            // integer (values past 2^63 read back negative).
            r.flow_id.get() as i64,
            addr(r.src_ip()),
            addr(r.dst_ip()),
            r.src_port.get(),
            r.dst_port.get(),
            r.dscp,
            r.direction().as_str(),
            r.end_reason().as_str(),
            int(r.start_ns.get()),
            int(r.duration_ns.get()),
            int(r.bytes_acked.get()),
            int(r.bytes_received.get()),
            r.segs_out.get(),
            r.segs_in.get(),
            r.retrans_segs.get(),
            r.srtt_us.get(),
            r.min_rtt_us.get(),
        ])?;
    }

    let mut probes = tx.prepare_cached(
        "INSERT INTO sampled_probes (batch_id, window_start_ns, node_id, weight, anomalies, dst_node, transport,
             src_addr, dst_addr, src_port, dst_port, dscp, seq, outcome, error_code, requester_send_ns,
             responder_receive_ns, responder_send_ns, requester_receive_ns, network_rtt_ns, responder_delay_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
    )?;
    for s in batch.probes {
        let r = &s.record;
        probes.execute(params![
            id,
            window,
            s.meta.node_id.get(),
            s.meta.weight.get(),
            s.meta.anomalies,
            r.dst_node.get(),
            r.transport().as_str(),
            r.src().to_string(),
            r.dst().to_string(),
            r.src_port.get(),
            r.dst_port.get(),
            r.dscp,
            int(r.seq.get()),
            r.outcome().as_str(),
            r.error_code.get(),
            int(r.requester_send_ns.get()),
            int(r.responder_receive_ns.get()),
            int(r.responder_send_ns.get()),
            int(r.requester_receive_ns.get()),
            r.network_rtt_ns().map(int),
            r.responder_delay_ns().map(int),
        ])?;
    }
    Ok(Stored::New)
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
                migrate(&conn, &path, start).unwrap();
                assert_eq!(schema_version(&conn).unwrap(), start);
                if start >= 1 {
                    conn.execute("INSERT INTO racks (rack_id, name) VALUES (1, 'kept')", [])
                        .unwrap();
                }
            }
            // A reader refuses the old version rather than misreading it.
            let err = Store::open_read_only(&path).err().unwrap();
            assert!(matches!(err, StoreError::OlderSchema { .. }), "{err}");
            let store = Store::open(&path).unwrap();
            assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
            if start >= 1 {
                let name: String = store
                    .connection()
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
        let err = migrate(&conn, &path, SCHEMA_VERSION).unwrap_err();
        assert!(matches!(err, StoreError::Migrate { version: 1, .. }), "{err}");
        assert_eq!(schema_version(&conn).unwrap(), 0);
        let racks: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_master WHERE name = 'racks'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(racks, 0, "the half-applied migration was rolled back");
    }
}
