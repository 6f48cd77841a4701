//! What the CLI's tests share: the visible, CI-enforced skip and the real-data guard.

use std::path::Path;

/// Says that a test skipped something, straight to the process's stderr (past the test
/// harness's capture); under `CI` (set by `.ci/run`, whose set-up installs everything the
/// suite reads) a skip is a failure.
pub fn skip(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what}");
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set, so nothing may be skipped: {what}"
    );
}

/// Whether the real Fashion-MNIST files are installed (saying so when they are not).
pub fn have_data() -> bool {
    let present = Path::new(squeeze::data::DEFAULT_DIR)
        .join("t10k-images-idx3-ubyte.gz")
        .exists();
    if !present {
        skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)");
    }
    present
}
