//! Helpers the agent's integration tests share.
#![allow(clippy::unwrap_used, dead_code)] // a panic is how a test fails; not every test uses all

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// Spawns `command` — an agent in --debug mode, configured by the caller —
/// with its JSON lines on the returned channel, and waits for its first
/// line, which says it is tracing.
pub(crate) fn spawn_debug_agent(mut command: Command) -> (Child, mpsc::Receiver<Value>) {
    let mut child = command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && tx.send(value).is_err()
            {
                return;
            }
        }
    });
    match lines.recv_timeout(Duration::from_secs(30)) {
        Ok(ready) => assert!(ready["tracing"].is_string(), "agent did not start: {ready}"),
        Err(_) => panic!("agent did not start (exit status {:?})", child.try_wait().unwrap()),
    }
    (child, lines)
}

/// A cgroup made for the test, removed on drop.
pub(crate) struct TestCgroup(pub(crate) PathBuf);

impl TestCgroup {
    /// Creates it under the cgroup v2 root.
    pub(crate) fn create() -> TestCgroup {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = node_agent::checks::cgroup2_mount(&mountinfo).expect("a cgroup v2 hierarchy");
        let path = root.join(format!("flowmesh-test-{}-{}", std::process::id(), rack_unique()));
        std::fs::create_dir(&path).unwrap();
        TestCgroup(path)
    }
}

/// A number no other test run uses (nanoseconds since the epoch).
pub(crate) fn rack_unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The clients have exited; an empty cgroup can be removed. Retry
        // briefly while the kernel finishes reaping them.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs `python3 -c script` as a process of `cgroup` (so the agent attached
/// there traces its sockets), inside network namespace `netns` if given.
pub(crate) fn python_in(cgroup: &TestCgroup, netns: Option<&str>, script: &str) -> std::process::ExitStatus {
    let enter = netns.map_or(String::new(), |ns| format!("nsenter --net=/run/netns/{ns} "));
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec {enter}python3 -c \"$0\"",
            cgroup.0.display()
        ))
        .arg(script)
        .status()
        .unwrap()
}

/// A process the test started, killed (and reaped) on drop, so a failing
/// test leaves nothing running — nor a process in a cgroup or namespace
/// that its guard then cannot remove.
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `python3 -c script` as a process of `cgroup`, inside network
/// namespace `netns` if given, without waiting for it (see [`python_in`]).
/// The shell execs nsenter, which execs python3: the child's pid is the
/// script's, so [`Running`] kills the script itself.
pub(crate) fn spawn_python_in(cgroup: &TestCgroup, netns: Option<&str>, script: &str) -> Running {
    let enter = netns.map_or(String::new(), |ns| format!("nsenter --net=/run/netns/{ns} "));
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec {enter}python3 -c \"$0\"",
            cgroup.0.display()
        ))
        .arg(script)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Running(child)
}
