//! The library's one error type. Every failure names what it was reading or checking
//! (a file, a tensor, a node, a recipe field) and what was expected, so the CLI can print
//! it as is.

use std::path::PathBuf;

/// Errors raised by the squeeze library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tensor engine: {0}")]
    Candle(#[from] candle_core::Error),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },

    #[error("graph: {0}")]
    Graph(String),

    /// A failure while checking or running one node, with the node's name and kind; the
    /// cause is what its layer kind (or the kernel under it) reported.
    #[error("graph: node `{node}` ({kind}): {cause}")]
    Node {
        node: String,
        kind: &'static str,
        cause: Box<Error>,
    },

    /// A layer kind's own check, before it is attributed to a node ([`Error::Node`]).
    #[error("{0}")]
    Kind(String),

    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("tensor `{0}` is missing from the parameter store")]
    MissingParam(String),

    #[error("recipe {path}: {msg}")]
    Recipe { path: PathBuf, msg: String },

    #[error("pass `{pass}`: {msg}")]
    Pass { pass: String, msg: String },

    #[error("data: {0}")]
    Data(String),

    #[error("training: {0}")]
    Train(String),

    #[error(
        "interrupted in epoch {epoch}, after step {step} of {steps}: a resumable checkpoint \
         is in {}", checkpoint.display()
    )]
    Interrupted {
        checkpoint: PathBuf,
        epoch: usize,
        step: usize,
        steps: usize,
    },
}

/// Result alias used across the library.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// An error of pass `pass` (a recipe option, or what the pass met in the model).
    pub(crate) fn pass(pass: &str, msg: impl Into<String>) -> Self {
        Error::Pass {
            pass: pass.into(),
            msg: msg.into(),
        }
    }
    /// `cause`, attributed to node `node` of kind `kind` (an error already attributed to
    /// a node keeps its attribution).
    pub(crate) fn at_node(node: &str, kind: &'static str, cause: Error) -> Self {
        match cause {
            e @ Error::Node { .. } => e,
            cause => Error::Node {
                node: node.to_string(),
                kind,
                cause: Box::new(cause),
            },
        }
    }
    pub(crate) fn file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
