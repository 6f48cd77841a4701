//! The kernels' exactness tests, inside the crate because the kernels are crate-private:
//! every optimized kernel against its plain reference (and f64 central differences where
//! it trains), on each instruction-set path this CPU supports (`SQUEEZE_ISA` forces the
//! lower ones). They use the integration tests' helpers and name the crate `squeeze`, as
//! those do.

mod bits;
#[path = "../../../tests/common/mod.rs"]
mod common;
mod encoder_grad;
mod epilogue;
mod gradcheck;
mod isa_paths;
mod qgemm;
mod sparse;
