//! How a flowmesh binary ends: success, or the cause of the failure on one
//! line of stderr.

/// The exit status of a binary's `main`: success, or the whole cause chain
/// of the error on one line of stderr, prefixed with `program` — never a
/// backtrace.
pub fn exit_code<E: std::fmt::Display>(program: &str, result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{program}: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
