//! Shared mathematics with no knowledge of models: dense linear algebra (Cholesky
//! factors and inverses), the second-order statistics and lazy OBS update that pruning
//! (SparseGPT) and quantization (GPTQ) share, the stored layout of quantized weights and of binary/ternary ones, and
//! the codecs of weight-shared tensors (codebook + Huffman, Deep Compression, Han et al.
//! 2016) that the checkpoint reads, and wall-clock medians. Everything above the ground floor may use it; it
//! uses nothing but the error type.

pub mod bits;
pub mod codec;
pub mod csr;
pub mod hessian;
pub mod huffman;
pub mod linalg;
pub mod qlayout;
pub mod qweight;
pub mod svd;
pub mod timing;
