//! The agents' sequence state, saved in the spool directory so that a
//! restarted sampler (after a crash or `kill -9` too) counts, in the window
//! it restarts in, what its agents sent while it was down.
//!
//! **What and when.** Each time it emits windows, the sampler takes a
//! [`Checkpoint`] under the aggregation lock, right after detaching them
//! ([`Aggregator::checkpoint`](crate::aggregate::Aggregator::checkpoint)):
//! per agent heard, its runs ([`SavedRuns`]), its last arrival, its
//! measured cadence, the datagrams imputed to its silence not yet accounted
//! for by its numbers, and `pending` — what its numbers counted as expected
//! into windows still open, which dies with the process if it dies before
//! emitting them — and the first window not emitted (`through_ns`), and how
//! far in time the emitted windows covered (`closed_ns`: the end of the
//! last, or the shutdown's time when it emitted its window early). It is
//! written once the emitted windows' batches are spooled, to [`FILE`],
//! through a synced temporary file, a rename and a directory sync (as the
//! spool writes batches), so a crash leaves the previous checkpoint or the
//! new one, never a mix. One small write per emission, a line per agent;
//! nothing per datagram.
//!
//! **Current or too old.** A restarted sampler whose first window is
//! `through_ns` (a crash: the windows before it were emitted), or the window
//! before it (a clean shutdown emits its open window early), takes the
//! checkpoint up as *current*: nothing went unemitted in between, so each
//! agent's gap since its saved number, plus its `pending`, is exactly what
//! that window is missing. Otherwise it is *too old*: a window went
//! unemitted (the sampler was down across a window boundary, or died
//! between spooling a window and writing the checkpoint after it), the clock
//! stepped back, or the window length changed; the gap then spans windows
//! no batch covers and cannot be placed, so the restart's window imputes
//! what came before the start at each agent's cadence instead, as with no
//! checkpoint at all ([`Aggregator::restore`](crate::aggregate::Aggregator::restore)).
//! A crash between spooling and writing the checkpoint therefore never
//! counts a datagram twice.
//!
//! **Format.** Text, one item per line; an unreadable file is ignored
//! (logged) as if missing:
//! ```text
//! flowmesh-sampler agent-sequences 1
//! window_ns 30000000000
//! through_ns 1800000030000000000
//! closed_ns 1800000030000000000
//! agent 101 last_seen_ns=1800000029601000000 cadence=37/14800000000 imputed=0 pending=12 run=8:40 previous=7:2000 older=6
//! ```
//! `run` and `previous` are `epoch:highest`, `older` a comma-separated
//! list of epochs; `cadence` (datagrams/ns), `previous` and `older` are left
//! out when unknown.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::aggregate::Cadence;
use crate::completeness::{SavedRun, SavedRuns};

/// File in the spool directory holding the checkpoint.
pub const FILE: &str = "agent-sequences";

/// First line of the file: its format and version.
const HEADER: &str = "flowmesh-sampler agent-sequences 1";

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file operation failed.
    #[error("agent sequence state {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a checkpoint this sampler can read (damaged, or
    /// written by another version); it is ignored.
    #[error("agent sequence state {} line {line}: {reason}; ignored (it is rewritten at the next window emitted)", .path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// The agents' sequence state at a window emission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Window length, ns.
    pub window_ns: u64,
    /// Start of the first window not emitted, ns since the Unix epoch.
    pub through_ns: u64,
    /// How far in time the windows emitted covered: the end of the last,
    /// or the close if earlier (a shutdown emits its window early). A
    /// restart within that window imputes no silence before it again.
    pub closed_ns: u64,
    /// Per agent heard, by node id.
    pub agents: BTreeMap<u32, AgentCheckpoint>,
}

/// One agent's saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCheckpoint {
    /// Its runs.
    pub runs: SavedRuns,
    /// Its last arrival, ns (sampler's clock).
    pub last_seen_ns: u64,
    /// Its latest measured cadence.
    pub cadence: Option<Cadence>,
    /// Datagrams imputed to its silence that its numbers have not accounted
    /// for yet.
    pub imputed: u64,
    /// Datagrams its numbers counted as expected into windows not emitted.
    pub pending: u64,
}

impl Checkpoint {
    /// The file's text.
    pub fn encode(&self) -> String {
        let mut text = format!(
            "{HEADER}\nwindow_ns {}\nthrough_ns {}\nclosed_ns {}\n",
            self.window_ns, self.through_ns, self.closed_ns
        );
        for (node, a) in &self.agents {
            let runs = &a.runs;
            let _ = write!(text, "agent {node} last_seen_ns={}", a.last_seen_ns);
            if let Some(c) = a.cadence {
                let _ = write!(text, " cadence={}/{}", c.datagrams, c.over_ns);
            }
            let _ = write!(
                text,
                " imputed={} pending={} run={}:{}",
                a.imputed, a.pending, runs.latest.epoch, runs.latest.highest
            );
            if let Some(p) = runs.previous {
                let _ = write!(text, " previous={}:{}", p.epoch, p.highest);
            }
            if !runs.older.is_empty() {
                let older: Vec<String> = runs.older.iter().map(u32::to_string).collect();
                let _ = write!(text, " older={}", older.join(","));
            }
            text.push('\n');
        }
        text
    }

    /// Parses the file's text; on error, the line (from 1) and why.
    pub fn parse(text: &str) -> Result<Checkpoint, (usize, String)> {
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        match lines.next() {
            Some((_, HEADER)) => {}
            Some((_, other)) => return Err((1, format!("{other:?} is not {HEADER:?}"))),
            None => return Err((1, "empty".into())),
        }
        let (mut window_ns, mut through_ns, mut closed_ns) = (None, None, None);
        let mut agents = BTreeMap::new();
        for (n, line) in lines {
            let at = |reason: String| (n, reason);
            let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "window_ns" => window_ns = Some(number(rest).map_err(at)?),
                "through_ns" => through_ns = Some(number(rest).map_err(at)?),
                "closed_ns" => closed_ns = Some(number(rest).map_err(at)?),
                "agent" => {
                    let (node, agent) = parse_agent(rest).map_err(at)?;
                    if agents.insert(node, agent).is_some() {
                        return Err((n, format!("agent {node} listed twice")));
                    }
                }
                _ => return Err((n, format!("unknown item {key:?}"))),
            }
        }
        let missing = |what: &str| (text.lines().count(), format!("no {what} line"));
        Ok(Checkpoint {
            window_ns: window_ns.ok_or_else(|| missing("window_ns"))?,
            through_ns: through_ns.ok_or_else(|| missing("through_ns"))?,
            closed_ns: closed_ns.ok_or_else(|| missing("closed_ns"))?,
            agents,
        })
    }

    /// Reads the checkpoint in spool directory `dir`; `None` if there is
    /// none.
    pub fn load(dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CheckpointError::Io { path, source }),
        };
        Checkpoint::parse(&text)
            .map(Some)
            .map_err(|(line, reason)| CheckpointError::Malformed { path, line, reason })
    }

    /// Writes the checkpoint into spool directory `dir`, atomically and
    /// durably.
    pub fn save(&self, dir: &Path) -> Result<(), CheckpointError> {
        let path = dir.join(FILE);
        crate::spool::write_atomically(dir, &path, self.encode().as_bytes())
            .map_err(|source| CheckpointError::Io { path, source })
    }
}

fn number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.trim().parse().map_err(|_| format!("{text:?} is not a number"))
}

fn run(text: &str) -> Result<SavedRun, String> {
    let (epoch, highest) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not epoch:highest"))?;
    Ok(SavedRun {
        epoch: number(epoch)?,
        highest: number(highest)?,
    })
}

fn parse_agent(text: &str) -> Result<(u32, AgentCheckpoint), String> {
    let mut words = text.split_whitespace();
    let node = number(words.next().unwrap_or(""))?;
    let (mut last_seen_ns, mut cadence, mut imputed, mut pending) = (None, None, None, None);
    let (mut latest, mut previous, mut older) = (None, None, Vec::new());
    for word in words {
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| format!("{word:?} is not key=value"))?;
        match key {
            "last_seen_ns" => last_seen_ns = Some(number(value)?),
            "cadence" => {
                let (datagrams, over_ns) = value
                    .split_once('/')
                    .ok_or_else(|| format!("cadence {value:?} is not datagrams/ns"))?;
                let over_ns: u64 = number(over_ns)?;
                if over_ns == 0 {
                    return Err("cadence over 0 ns".into());
                }
                cadence = Some(Cadence {
                    datagrams: number(datagrams)?,
                    over_ns,
                });
            }
            "imputed" => imputed = Some(number(value)?),
            "pending" => pending = Some(number(value)?),
            "run" => latest = Some(run(value)?),
            "previous" => previous = Some(run(value)?),
            "older" => {
                older = value.split(',').map(number::<u32>).collect::<Result<_, _>>()?;
            }
            _ => return Err(format!("unknown key {key:?}")),
        }
    }
    let required = |what: &str| format!("agent {node} has no {what}");
    let agent = AgentCheckpoint {
        runs: SavedRuns {
            latest: latest.ok_or_else(|| required("run"))?,
            previous,
            older,
        },
        last_seen_ns: last_seen_ns.ok_or_else(|| required("last_seen_ns"))?,
        cadence,
        imputed: imputed.ok_or_else(|| required("imputed"))?,
        pending: pending.ok_or_else(|| required("pending"))?,
    };
    Ok((node, agent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> Checkpoint {
        let mut agents = BTreeMap::new();
        agents.insert(
            101,
            AgentCheckpoint {
                runs: SavedRuns {
                    latest: SavedRun { epoch: 8, highest: 40 },
                    previous: Some(SavedRun {
                        epoch: 7,
                        highest: u32::MAX,
                    }),
                    older: vec![6, 5],
                },
                last_seen_ns: 1_800_000_029_601_000_000,
                cadence: Some(Cadence {
                    datagrams: 37,
                    over_ns: 14_800_000_000,
                }),
                imputed: 3,
                pending: 12,
            },
        );
        agents.insert(
            103,
            AgentCheckpoint {
                runs: SavedRuns {
                    latest: SavedRun { epoch: 1, highest: 0 },
                    previous: None,
                    older: Vec::new(),
                },
                last_seen_ns: 5,
                cadence: None,
                imputed: 0,
                pending: 0,
            },
        );
        Checkpoint {
            window_ns: 30_000_000_000,
            through_ns: 1_800_000_030_000_000_000,
            closed_ns: 1_800_000_029_000_000_000,
            agents,
        }
    }

    #[test]
    fn the_text_is_as_documented_and_reads_back() {
        let c = checkpoint();
        let text = c.encode();
        assert_eq!(
            text,
            "flowmesh-sampler agent-sequences 1\n\
             window_ns 30000000000\n\
             through_ns 1800000030000000000\n\
             closed_ns 1800000029000000000\n\
             agent 101 last_seen_ns=1800000029601000000 cadence=37/14800000000 imputed=3 pending=12 run=8:40 \
             previous=7:4294967295 older=6,5\n\
             agent 103 last_seen_ns=5 imputed=0 pending=0 run=1:0\n"
        );
        assert_eq!(Checkpoint::parse(&text), Ok(c));
    }

    #[test]
    fn damage_is_named_by_line() {
        let text = checkpoint().encode();
        let cases = [
            ("", 1),
            ("flowmesh-sampler agent-sequences 2\n", 1),
            (&text.replace("run=8:40", "run=8"), 5),
            (&text.replace("imputed=0 ", ""), 6),
            (&text.replace("through_ns", "through"), 3),
            (&text.replace("window_ns 30000000000\n", ""), 5),
            (&text.replace("closed_ns 1800000029000000000\n", ""), 5),
            (&text.replace("cadence=37/14800000000", "cadence=37/0"), 5),
            (
                &format!("{text}agent 103 last_seen_ns=5 imputed=0 pending=0 run=1:0\n"),
                7,
            ),
            // A write torn in the middle cannot be left by a rename, but
            // reads as damage all the same.
            (&text[..text.len() - 10], 6),
        ];
        for (damaged, line) in cases {
            let (at, reason) = Checkpoint::parse(damaged).unwrap_err();
            assert_eq!(at, line, "{reason}: {damaged:?}");
        }
    }

    #[test]
    fn saved_atomically_and_loaded_from_the_spool_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Checkpoint::load(dir.path()).unwrap().is_none());
        let c = checkpoint();
        c.save(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), Some(c.clone()));
        assert!(!dir.path().join(FILE).with_extension("tmp").exists());

        // A second save replaces the first whole.
        let mut later = c;
        later.through_ns += later.window_ns;
        later.agents.remove(&103);
        later.save(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), Some(later));

        std::fs::write(dir.path().join(FILE), "garbage").unwrap();
        let error = Checkpoint::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains(FILE) && error.contains("line 1"), "{error}");
    }
}
