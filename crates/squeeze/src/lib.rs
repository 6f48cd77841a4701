//! squeeze: a model-compression toolkit. A model is a [`graph::Graph`] of typed layer
//! nodes plus a [`params::ParamStore`] of named tensors; compression methods are
//! [`passes`] over that view; one [`interp`]reter runs it for inference and training; the
//! [`train`]er, [`eval`]uator and [`coupling`] analysis serve every method.
//!
//! ```
//! use squeeze::{zoo, interp, eval};
//! let model = zoo::build("mlp", &zoo::ZooOpts::default(), 0).unwrap();
//! let x = candle_core::Tensor::zeros((2, 1, 28, 28), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
//! let logits = interp::predict(&model.graph, &model.params, &x).unwrap();
//! assert_eq!(logits.dims(), &[2, 10]);
//! assert_eq!(eval::static_cost(&model).unwrap().params, 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10);
//! ```

pub mod checkpoint;
pub mod coupling;
pub mod data;
pub mod distill;
pub mod error;
pub mod eval;
pub mod formats;
pub mod graph;
pub mod interp;
pub mod isa;
pub mod kinds;
pub mod math;
pub mod model;
pub(crate) mod ops;
pub mod params;
pub mod passes;
pub mod prune;
pub mod quant;
pub mod tensor;
pub mod text;
pub mod train;
pub mod zoo;

pub use error::{Error, Result};
pub use model::Model;

// the kernels' tests inside the crate name it as the integration tests do
#[cfg(test)]
extern crate self as squeeze;
