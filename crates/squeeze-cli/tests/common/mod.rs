//! What the CLI's tests share: the library tests' visible, CI-enforced skip and the
//! real-data guard.

use std::path::Path;

#[path = "../../../squeeze/tests/common/skip.rs"]
mod skip;
pub use skip::skip;

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
