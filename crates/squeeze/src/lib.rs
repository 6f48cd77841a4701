//! squeeze: a model-compression toolkit. A [`Model`] is a [`Graph`] of typed layer nodes
//! plus a [`ParamStore`] of named tensors; compression methods are passes over that view,
//! listed in a [`Recipe`] and applied by [`run_recipe`]; one interpreter ([`forward`],
//! [`predict`]) runs it for inference and training; the trainer ([`train::fit`] under a
//! [`TrainConfig`]), the evaluator ([`eval`]) and the coupled-channel analysis
//! ([`coupling`]) serve every method. The names at the crate root are the curated entry
//! points; the modules hold the rest, from the ground up as `README.md` ("Layers of the
//! library") lists them — the kernels themselves are private to the crate and reached
//! through the layer kinds.
//!
//! ```
//! use std::path::Path;
//! use squeeze::{predict, run_recipe, zoo, Recipe};
//! let model = zoo::build("vgg", &zoo::ZooOpts::default(), 0).unwrap();
//! let x = candle_core::Tensor::ones((2, 1, 28, 28), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
//! let before = predict(&model.graph, &model.params, &x).unwrap();
//! assert_eq!(before.dims(), &[2, 10]);
//! // a one-pass recipe: BatchNorm folded into the convolutions before it
//! let recipe = Recipe::parse("[[passes]]\ntype = \"fold_batch_norm\"\n", Path::new("fold.toml")).unwrap();
//! let mut ctx = recipe.context(Path::new("/nonexistent-data"), &std::env::temp_dir());
//! let (folded, log) = run_recipe(model.clone(), &recipe, &mut ctx).unwrap();
//! assert_eq!(log[0].pass, "fold_batch_norm");
//! assert!(folded.graph.nodes.len() < model.graph.nodes.len());
//! let after = predict(&folded.graph, &folded.params, &x).unwrap();
//! let diff = (after - before).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
//! assert!(diff < 1e-3, "folding moved the logits by {diff}");
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
pub mod limits;
pub mod lowrank;
pub mod math;
pub mod model;
pub mod onnx;
pub(crate) mod ops;
pub mod params;
pub mod passes;
pub mod prune;
pub mod quant;
pub mod search;
pub mod tensor;
pub mod text;
pub mod train;
pub mod zoo;

pub use checkpoint::{load, save};
pub use error::{Error, Result};
pub use formats::load_any;
pub use graph::{Graph, Node, Op};
pub use interp::{forward, predict, ForwardOpts};
pub use model::Model;
pub use params::ParamStore;
pub use passes::{run_recipe, Pass, Recipe};
pub use train::TrainConfig;

// the kernels' tests inside the crate name it as the integration tests do
#[cfg(test)]
extern crate self as squeeze;
