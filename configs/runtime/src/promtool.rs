//! `promtool check metrics` (from Prometheus; Debian's `prometheus` package): the
//! daemons' tests hold every `/metrics` page to it.

/// Runs `promtool check metrics` (from Prometheus; Debian's `prometheus`
/// package) on an exposition, or on an HTTP response carrying one: the
/// syntax, HELP and TYPE of every family, and Prometheus' naming rules.
/// The daemons' tests hold every endpoint to it; operators can run it on a
/// scrape too. Errors carry promtool's report.
pub fn promtool_check(exposition: &str) -> Result<(), String> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let body = exposition.split_once("\r\n\r\n").map_or(exposition, |(_, body)| body);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running promtool (install Debian's prometheus package): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(body.as_bytes()).map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && report.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics: {}\n{body}", report.trim()))
    }
}
