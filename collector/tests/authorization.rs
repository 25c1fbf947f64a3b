//! Who may write what, over real QUIC with real certificates: a sampler's
//! certificate writes its own rack's batches, as its own sampler ids, under
//! batch ids of its own sampler's; anything else is refused before storage
//! (acknowledged `rejected` with [`ACK_UNAUTHORIZED`], counted), so no rack
//! can write another's data or squat another's batch ids. And the collector
//! refuses to start when nothing says who may write.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use collector::server::{self, Authorization, AuthorizationError, Grant, Stats, Unauthorized, Writer};
use collector_storage::{Reader, SqliteStore};
use configs::{Authorize, CollectorConfig, Topology};
use configs_runtime::tls::{self, DevPki};
use wire_format::batch::ACK_UNAUTHORIZED;
use wire_format::*;

const SECOND: u64 = 1_000_000_000;

/// Start of window `window`, recent enough for retention and fixed for the
/// run, so batch ids repeat.
fn window_start(window: u64) -> u64 {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| (server::now_ns() / (10 * SECOND)) * 10 * SECOND - 3_600 * SECOND);
    base + 10 * SECOND * window
}

/// A batch of one path claiming `sampler` and `rack`, with the batch id
/// `id` (by default the one the sampler's window gives).
fn batch_with_id(sampler: u32, rack: u32, window: u64, id: Option<BatchId>) -> Vec<u8> {
    let mut info = BatchInfo::window(sampler, rack, window_start(window), 10 * SECOND);
    if let Some(id) = id {
        info.batch_id = id;
    }
    let mut b = BatchBuilder::new(info);
    let mut p = PathSummary::new(101, 201, 0, Some(Transport::Udp));
    p.probes_sent = 10.into();
    b.push_path(p, &[]).unwrap();
    b.encode().unwrap()
}

fn batch(sampler: u32, rack: u32, window: u64) -> Vec<u8> {
    batch_with_id(sampler, rack, window, None)
}

/// The id sampler `sampler`'s batch for `window` has.
fn id(sampler: u32, window: u64) -> BatchId {
    BatchId::for_window(sampler, window_start(window), 0)
}

/// Two racks: rack1 (id 1) and rack2 (id 2).
const TOPOLOGY: &str = "[[racks]]\nid = 1\nname = \"rack1\"\n\n[[racks]]\nid = 2\nname = \"rack2\"\n";

/// Certificates the CA signed: one per rack, a secondary sampler's for
/// rack1, and one named after nothing configured.
const CERTIFICATES: [&str; 4] = ["rack1", "rack2", "rack1-b", "stranger"];

/// A collector in this process, with the topology above and `authorize`
/// entries, its certificates and a fresh database.
struct Fixture {
    _dir: tempfile::TempDir,
    pki: DevPki,
    db: PathBuf,
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

fn config(dir: &Path, authorize: Vec<Authorize>) -> (CollectorConfig, Topology) {
    let path = dir.join("topology.toml");
    std::fs::write(&path, TOPOLOGY).unwrap();
    let config = CollectorConfig {
        topology: Some(path.clone()),
        authorize,
        ..CollectorConfig::default()
    };
    (config, Topology::load(&path).unwrap())
}

impl Fixture {
    async fn start(authorize: Vec<Authorize>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (config, topology) = config(dir.path(), authorize);
        Fixture::start_with(dir, Authorization::from_config(&config, Some(&topology)).unwrap()).await
    }

    async fn start_with(dir: tempfile::TempDir, authorization: Authorization) -> Fixture {
        let names: Vec<String> = CERTIFICATES.iter().map(|n| n.to_string()).collect();
        let pki = DevPki::generate(&dir.path().join("pki"), &["localhost".into()], &names).unwrap();
        let db = dir.path().join("flowmesh.db");
        let stats = Arc::new(Stats::default());
        let (writer, _thread) = Writer::spawn(Box::new(SqliteStore::open(&db).unwrap()), 8, 4, stats.clone()).unwrap();
        let endpoint = quinn::Endpoint::server(
            tls::server_config(&pki.collector()).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let addr = endpoint.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve_authorized(
            endpoint,
            writer,
            stats.clone(),
            authorization,
            async {
                let _ = stopped.await;
            },
        ));
        Fixture {
            _dir: dir,
            pki,
            db,
            addr,
            stats,
            stop: Some(stop),
            task,
        }
    }

    /// A connection presenting certificate `name`.
    async fn connect(&self, name: &str) -> (quinn::Endpoint, quinn::Connection) {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(tls::client_config(&self.pki.sampler(name)).unwrap());
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            endpoint.connect(self.addr, "localhost").unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
        (endpoint, conn)
    }

    /// (batch id, sampler id, rack id) of every stored batch.
    fn stored(&self) -> Vec<(BatchId, u32, u32)> {
        let batches = SqliteStore::open_read_only(&self.db)
            .unwrap()
            .batches(0, u64::MAX)
            .unwrap();
        batches.iter().map(|b| (b.batch_id, b.sampler_id, b.rack_id)).collect()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// Sends one batch on its own stream and returns the acknowledgement.
async fn send(conn: &quinn::Connection, bytes: &[u8]) -> BatchAck {
    let exchange = async {
        let (mut tx, mut rx) = conn.open_bi().await?;
        tx.write_all(bytes).await?;
        tx.finish()?;
        let reply = rx.read_to_end(64).await?;
        anyhow::Ok(*BatchAck::parse(&reply)?)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap()
        .unwrap()
}

/// Sends `bytes` and checks it is refused as unauthorized, its id echoed.
async fn refused(conn: &quinn::Connection, bytes: &[u8]) {
    let ack = send(conn, bytes).await;
    assert_eq!(ack.status(), AckStatus::Rejected);
    assert_eq!(ack.error_code.get(), ACK_UNAUTHORIZED);
    assert_eq!(ack.batch_id, BatchView::parse(bytes).unwrap().header.batch_id);
}

async fn stored(conn: &quinn::Connection, bytes: &[u8]) {
    assert_eq!(send(conn, bytes).await.status(), AckStatus::Stored);
}

/// Unauthorized refusals by reason, in [`Unauthorized::ALL`] order.
fn refusals(stats: &Stats) -> [u64; 4] {
    Unauthorized::ALL.map(|reason| stats.unauthorized(reason))
}

#[tokio::test]
async fn a_certificate_cannot_write_another_racks_or_samplers_batches() {
    let f = Fixture::start(Vec::new()).await;
    let (_endpoint, rack1) = f.connect("rack1").await;

    // rack1's certificate claiming sampler 99 of rack 9: refused, nothing stored.
    refused(&rack1, &batch(99, 9, 0)).await;
    assert_eq!(refusals(&f.stats), [0, 1, 0, 0]);
    // Its own rack, but a sampler id that is not its: refused too.
    refused(&rack1, &batch(99, 1, 0)).await;
    assert_eq!(refusals(&f.stats), [0, 1, 1, 0]);
    assert!(f.stored().is_empty());
    assert_eq!(Stats::get(&f.stats.batches_rejected), 0, "unauthorized is not invalid");

    // The same connection still writes what it may: rack 1 as sampler 1.
    stored(&rack1, &batch(1, 1, 0)).await;
    assert_eq!(send(&rack1, &batch(1, 1, 0)).await.status(), AckStatus::Duplicate);
    assert_eq!(f.stored(), [(id(1, 0), 1, 1)]);
    assert_eq!(f.stats.unauthorized_total(), 2);
    f.stop().await;
}

#[tokio::test]
async fn a_rack_cannot_squat_another_racks_batch_ids() {
    let f = Fixture::start(Vec::new()).await;
    let (_e2, rack2) = f.connect("rack2").await;
    // rack1's next window, every way rack2 could claim its id.
    let next = id(1, 5);
    refused(&rack2, &batch(1, 1, 5)).await; // as rack1's sampler, for rack1
    refused(&rack2, &batch(1, 2, 5)).await; // as rack1's sampler, for itself
    refused(&rack2, &batch_with_id(2, 2, 5, Some(next))).await; // as itself, under rack1's id
    assert_eq!(refusals(&f.stats), [0, 1, 1, 1]);
    assert!(f.stored().is_empty());

    // rack1's real batch then arrives: stored, not taken for a duplicate.
    let (_e1, rack1) = f.connect("rack1").await;
    stored(&rack1, &batch(1, 1, 5)).await;
    // And rack2's own batch of the same window has an id of its own.
    stored(&rack2, &batch(2, 2, 5)).await;
    let mut rows = f.stored();
    rows.sort();
    assert_eq!(rows, [(next, 1, 1), (id(2, 5), 2, 2)]);
    assert_eq!(Stats::get(&f.stats.batches_duplicate), 0);
    f.stop().await;
}

#[tokio::test]
async fn the_allow_list_grants_a_secondary_sampler_and_overrides_a_racks_rule() {
    let f = Fixture::start(vec![
        // rack1's secondary sampler, on a certificate of its own.
        Authorize {
            certificate: "rack1-b".into(),
            rack: "rack1".into(),
            sampler_ids: vec![11, 12],
        },
        // rack2's sampler runs as id 21, not 2.
        Authorize {
            certificate: "rack2".into(),
            rack: "rack2".into(),
            sampler_ids: vec![21],
        },
    ])
    .await;
    let (_e, secondary) = f.connect("rack1-b").await;
    stored(&secondary, &batch(11, 1, 0)).await;
    stored(&secondary, &batch(12, 1, 0)).await;
    refused(&secondary, &batch(1, 1, 1)).await; // the primary's id
    refused(&secondary, &batch(11, 2, 1)).await; // another rack
    // The primary still writes rack1 by the topology's rule.
    let (_e1, primary) = f.connect("rack1").await;
    stored(&primary, &batch(1, 1, 0)).await;
    // rack2's certificate writes as 21 now, and no longer as 2.
    let (_e2, rack2) = f.connect("rack2").await;
    stored(&rack2, &batch(21, 2, 0)).await;
    refused(&rack2, &batch(2, 2, 0)).await;
    assert_eq!(refusals(&f.stats), [0, 1, 2, 0]);
    let mut samplers: Vec<u32> = f.stored().iter().map(|(_, s, _)| *s).collect();
    samplers.sort();
    assert_eq!(samplers, [1, 11, 12, 21]);
    f.stop().await;
}

#[tokio::test]
async fn a_certificate_named_after_nothing_configured_writes_nothing() {
    let f = Fixture::start(Vec::new()).await;
    let (_e, stranger) = f.connect("stranger").await;
    refused(&stranger, &batch(1, 1, 0)).await;
    refused(&stranger, &batch(3, 3, 0)).await;
    assert_eq!(refusals(&f.stats), [2, 0, 0, 0]);
    assert!(f.stored().is_empty());
    f.stop().await;
}

#[tokio::test]
async fn any_signed_sampler_still_keeps_batch_ids_in_their_samplers_namespace() {
    let f = Fixture::start_with(tempfile::tempdir().unwrap(), Authorization::any_signed_sampler()).await;
    let (_e, stranger) = f.connect("stranger").await;
    // Development mode: any rack, any sampler id…
    stored(&stranger, &batch(99, 9, 0)).await;
    // …but only under ids its sampler's windows give.
    refused(&stranger, &batch_with_id(2, 2, 0, Some(id(1, 0)))).await;
    let mut other_part = id(2, 1);
    other_part.0[15] = 1; // bytes 14–15 are zero in every id
    refused(&stranger, &batch_with_id(2, 2, 1, Some(other_part))).await;
    // A later part of the window is its own.
    stored(
        &stranger,
        &batch_with_id(2, 2, 1, Some(BatchId::for_window(2, window_start(1), 3))),
    )
    .await;
    assert_eq!(refusals(&f.stats), [0, 0, 0, 2]);
    assert_eq!(f.stored().len(), 2);
    f.stop().await;
}

#[test]
fn authorization_needs_a_rule_and_each_sampler_id_has_one_owner() {
    let dir = tempfile::tempdir().unwrap();
    let (config, topology) = config(dir.path(), Vec::new());
    let entry = |certificate: &str, rack: &str, sampler_ids: Vec<u32>| Authorize {
        certificate: certificate.into(),
        rack: rack.into(),
        sampler_ids,
    };

    // Nothing says who may write: the error names every way to say it.
    let none = CollectorConfig {
        topology: None,
        ..config.clone()
    };
    let err = Authorization::from_config(&none, None).unwrap_err();
    assert!(matches!(err, AuthorizationError::Unconfigured));
    let message = err.to_string();
    for key in ["topology", "[[authorize]]", "authorize_any_signed_sampler = true"] {
        assert!(message.contains(key), "{message}");
    }
    let any = CollectorConfig {
        authorize_any_signed_sampler: true,
        ..none.clone()
    };
    assert!(Authorization::from_config(&any, None).unwrap().is_any_signed_sampler());

    // The topology alone: each rack's name writes that rack as its id.
    let by_topology = Authorization::from_config(&config, Some(&topology)).unwrap();
    assert_eq!(
        by_topology.grant_list(),
        [
            Grant {
                certificate: "rack1".into(),
                rack_id: 1,
                sampler_ids: vec![1]
            },
            Grant {
                certificate: "rack2".into(),
                rack_id: 2,
                sampler_ids: vec![2]
            },
        ]
    );

    // An entry granting rack2's id to another certificate takes it from rack2's rule.
    let taken = CollectorConfig {
        authorize: vec![entry("sampler-a.dc1", "rack1", vec![1, 2])],
        ..config.clone()
    };
    let grants = Authorization::from_config(&taken, Some(&topology)).unwrap();
    let owners: Vec<(&str, &[u32])> = grants
        .grant_list()
        .iter()
        .map(|g| (g.certificate.as_str(), g.sampler_ids.as_slice()))
        .collect();
    assert_eq!(
        owners,
        [("rack1", &[][..]), ("rack2", &[][..]), ("sampler-a.dc1", &[1, 2][..])]
    );

    // Entries need the topology, and racks it has.
    let unknown = CollectorConfig {
        authorize: vec![entry("x", "rack9", vec![5])],
        ..config.clone()
    };
    assert_eq!(
        Authorization::from_config(&unknown, Some(&topology))
            .unwrap_err()
            .to_string(),
        "authorize[0].rack = \"rack9\": not a rack in the topology file; expected the name of one"
    );
    assert!(matches!(
        Authorization::from_config(&unknown, None),
        Err(AuthorizationError::NeedsTopology)
    ));

    // Grants made directly are checked the same way.
    let grant = |certificate: &str, sampler_ids: Vec<u32>| Grant {
        certificate: certificate.into(),
        rack_id: 1,
        sampler_ids,
    };
    assert!(matches!(
        Authorization::grants(vec![grant("a", vec![1]), grant("b", vec![1])]),
        Err(AuthorizationError::DuplicateSampler { sampler_id: 1, .. })
    ));
    assert!(matches!(
        Authorization::grants(vec![grant("a", vec![1]), grant("A", vec![2])]),
        Err(AuthorizationError::DuplicateCertificate(_))
    ));
    assert!(matches!(
        Authorization::grants(vec![grant("not a name", vec![1])]),
        Err(AuthorizationError::BadName(_))
    ));
}

#[test]
fn the_collector_refuses_to_start_when_nothing_says_who_may_write() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::generate(&dir.path().join("pki"), &["localhost".into()], &["rack1".into()]).unwrap();
    let files = pki.collector();
    let db = dir.path().join("flowmesh.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowmesh-collector"))
        .env("FLOWMESH_COLLECTOR_LISTEN", "127.0.0.1:0")
        .env("FLOWMESH_COLLECTOR_DATABASE", &db)
        .env("FLOWMESH_COLLECTOR_TLS__CA", &files.ca)
        .env("FLOWMESH_COLLECTOR_TLS__CERT", &files.cert)
        .env("FLOWMESH_COLLECTOR_TLS__KEY", &files.key)
        .env("FLOWMESH_COLLECTOR_METRICS__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the collector started with nothing saying who may write");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("flowmesh-collector: no sampler may write: set `topology`")
            && stderr.contains("`authorize_any_signed_sampler = true`"),
        "{stderr}"
    );
    assert!(!db.exists(), "the database was opened before the refusal");
}
