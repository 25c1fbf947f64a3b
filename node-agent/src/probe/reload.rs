//! The topology reloaded on SIGHUP and published to the probers, which
//! derive their pinglist from the latest one at every tick.

use std::net::IpAddr;
use std::sync::Arc;

use configs::Topology;

/// Reloads the topology file at `path` on every SIGHUP until the task is
/// dropped, publishing it to the prober; a file that does not load is
/// reported and the previous topology kept. `hangup` is the installed
/// SIGHUP stream (installed early, so a SIGHUP never kills the agent).
pub async fn reload_on_sighup(
    mut hangup: tokio::signal::unix::Signal,
    path: std::path::PathBuf,
    me: u32,
    local: IpAddr,
    topology: tokio::sync::watch::Sender<Arc<Topology>>,
) {
    while hangup.recv().await.is_some() {
        match Topology::load(&path) {
            Ok(new) => {
                let address = new.node(me).and_then(|n| n.addresses.first().copied());
                if address != Some(local) {
                    tracing::warn!(
                        message = "This node's address changed in the reloaded topology; probes still use the old one \
                                   until the agent restarts.",
                        node_id = me,
                        old = %local,
                        new = ?address,
                    );
                }
                tracing::info!(message = "Reloaded the topology.", path = %path.display(), nodes = new.nodes().len());
                topology.send_replace(Arc::new(new));
            }
            Err(error) => {
                tracing::warn!(message = "Topology reload failed; keeping the previous one.", %error);
            }
        }
    }
}
