//! The visible, CI-enforced skip, shared by the library's and the CLI's tests.

/// Says that a test skipped something, where the harness cannot swallow it (straight to
/// the process's stderr, past the capture); under `CI` (set by `.ci/run`), whose set-up
/// installs everything the suite reads, the skip is a failure.
pub fn skip(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what}");
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set, so nothing may be skipped: {what}"
    );
}
