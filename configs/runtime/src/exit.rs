//! How a flowmesh binary ends: success, or the cause of the failure on one
//! line of stderr.

use std::error::Error;

/// The exit status of a binary's `main`: success, or the error and its
/// causes on one line of stderr, prefixed with `program` ([`error_line`]:
/// no sentence twice) — never a backtrace.
///
/// Takes anything that converts into a boxed error (an `anyhow::Error`, any
/// error type, a `String`), so that the cause chain can be walked.
pub fn exit_code<E>(program: &str, result: Result<(), E>) -> std::process::ExitCode
where
    E: Into<Box<dyn Error + 'static>>,
{
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{program}: {}", error_line(error.into().as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `error` and its causes ([`Error::source`]) joined by ": ", leaving out
/// a cause already said: one whose whole text is on the line (an error that
/// puts its source into its message, as thiserror's `"…: {source}"` does),
/// or whose reason — its last clause, after any "context: " — is one of the
/// line's clauses, ignoring ASCII case (rusqlite's "unable to open database
/// file: x.db" has the source "Error code 14: unable to open database file").
pub fn error_line(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        cause = error.source();
        let text = error.to_string();
        let text = text.trim();
        let reason = text.rsplit(": ").next().unwrap_or_default().trim();
        let said = line.contains(text)
            || line
                .split(": ")
                .any(|clause| clause.trim().eq_ignore_ascii_case(reason));
        if !said {
            line = format!("{line}: {text}");
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;

    /// An error with a message and an optional source: any link of a chain.
    #[derive(Debug)]
    struct Link {
        message: String,
        source: Option<Box<Link>>,
    }

    impl fmt::Display for Link {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.message)
        }
    }

    impl Error for Link {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.source.as_deref().map(|s| s as &(dyn Error + 'static))
        }
    }

    /// A chain of messages, outermost first.
    fn chain(messages: &[&str]) -> Link {
        let mut links = messages.iter().rev().map(|m| Link {
            message: m.to_string(),
            source: None,
        });
        let mut inner = links.next().expect("at least one message");
        for mut outer in links {
            outer.source = Some(Box::new(inner));
            inner = outer;
        }
        inner
    }

    #[test]
    fn a_plain_chain_is_joined() {
        let e = chain(&[
            "listening on 0.0.0.0:4433 (key `listen`)",
            "Address in use (os error 98)",
        ]);
        assert_eq!(
            error_line(&e),
            "listening on 0.0.0.0:4433 (key `listen`): Address in use (os error 98)"
        );
        assert_eq!(error_line(&chain(&["alone"])), "alone");
    }

    #[test]
    fn a_source_already_in_the_message_is_not_repeated() {
        // thiserror's `#[error("…: {source}")]` with the source returned too.
        let e = chain(&[
            "topology /x.toml: cannot read: No such file or directory (os error 2)",
            "No such file or directory (os error 2)",
        ]);
        assert_eq!(
            error_line(&e),
            "topology /x.toml: cannot read: No such file or directory (os error 2)"
        );
        // The same error wrapped once more, with text after it.
        let e = chain(&[
            "topology /x.toml: cannot read: No such file or directory (os error 2) (the agent checks node_id)",
            "topology /x.toml: cannot read: No such file or directory (os error 2)",
            "No such file or directory (os error 2)",
        ]);
        assert_eq!(
            error_line(&e),
            "topology /x.toml: cannot read: No such file or directory (os error 2) (the agent checks node_id)"
        );
    }

    #[test]
    fn sqlite_says_it_once() {
        // What collector-storage, rusqlite and libsqlite3-sys return for a
        // missing directory: the sentence three times before this fix.
        let e = chain(&[
            "cannot open database /nonexistent/x.db: unable to open database file: /nonexistent/x.db",
            "unable to open database file: /nonexistent/x.db",
            "Error code 14: unable to open database file",
        ]);
        assert_eq!(
            error_line(&e),
            "cannot open database /nonexistent/x.db: unable to open database file: /nonexistent/x.db"
        );
        let e = chain(&[
            "cannot open database x.db: file is not a database",
            "file is not a database",
            "Error code 26: file is not a database",
        ]);
        assert_eq!(error_line(&e), "cannot open database x.db: file is not a database");
    }

    #[test]
    fn a_multi_line_cause_already_said_is_left_out() {
        // The `config` crate's TOML errors carried the caret diagram, and the
        // message embedding it returned it again as the source.
        let diagram =
            "TOML parse error at line 3, column 5\n  |\n3 | foo bar = 1\n  |     ^\nkey with no value, expected `=`\n";
        let outer = format!("collector configuration in bad.toml: {diagram} in bad.toml");
        let e = chain(&[&outer, &format!("{diagram} in bad.toml")]);
        assert_eq!(error_line(&e), outer);
    }

    #[test]
    fn a_cause_with_a_new_reason_is_added_whole() {
        let e = chain(&["opening /x.db", "/x.db: permission denied"]);
        assert_eq!(error_line(&e), "opening /x.db: /x.db: permission denied");
        let e = chain(&["/x.db: cannot open", "/x.db: permission denied"]);
        assert_eq!(error_line(&e), "/x.db: cannot open: /x.db: permission denied");
        // Case does not make a sentence new.
        let e = chain(&["Database: File is not a database", "file is not a database"]);
        assert_eq!(error_line(&e), "Database: File is not a database");
        // Empty causes add nothing.
        let e = chain(&["starting", ""]);
        assert_eq!(error_line(&e), "starting");
    }

    #[test]
    fn no_clause_of_any_chain_repeats() {
        let chains: &[&[&str]] = &[
            &["a: b", "b"],
            &["a: b", "c: b"],
            &["a", "b: a", "a"],
            &["x: y: z", "y: z", "z"],
            &["outer", "middle: inner", "inner", "Error code 1: inner"],
        ];
        for messages in chains {
            let line = error_line(&chain(messages));
            let parts: Vec<&str> = line.split(": ").collect();
            for (i, part) in parts.iter().enumerate() {
                assert!(!parts[..i].contains(part), "{messages:?} printed {line:?}");
            }
        }
    }

    #[test]
    fn exit_code_takes_any_error() {
        assert_eq!(exit_code::<String>("test", Ok(())), std::process::ExitCode::SUCCESS);
        assert_eq!(
            exit_code("test", Err(chain(&["outer", "inner"]))),
            std::process::ExitCode::FAILURE
        );
        assert_eq!(
            exit_code("test", Err(String::from("a message"))),
            std::process::ExitCode::FAILURE
        );
    }
}
