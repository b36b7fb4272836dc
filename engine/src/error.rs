//! The library's one error type: every failure names the file, tensor, field or plugin involved.

use std::path::PathBuf;

/// Everything that can go wrong in babelrl, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written. (The I/O error is part of the message, not a separate
    /// `source`, so error chains print it once.)
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: std::io::Error },

    /// A file exists but its contents are malformed (truncated, corrupt, wrong magic, bad offsets).
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },

    /// A model or file uses a feature the engine does not implement.
    #[error("{}: unsupported {what}: {detail}", path.display())]
    Unsupported { path: PathBuf, what: String, detail: String },

    /// A GPU tensor has the wrong shape for an operation (weight files give [`Error::TensorShape`]).
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },

    /// A tensor of a weight file has another shape than the model's config asks for.
    #[error("{}: tensor `{name}` has shape {found:?}, expected {expected:?}", path.display())]
    TensorShape { path: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },

    /// A required tensor is absent from the weights.
    #[error("{}: tensor `{name}` is missing", path.display())]
    MissingTensor { path: PathBuf, name: String },

    /// No usable wgpu adapter, or a device request failed.
    #[error("{0}")]
    NoAdapter(String),

    /// An error reported by the GPU (validation, out of memory, lost device, map failure).
    #[error("gpu: {0}")]
    Gpu(String),

    /// Tokenizer construction, encoding or decoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),

    /// Bad input from the caller (empty prompt, prompt longer than the context, bad option).
    #[error("{0}")]
    Input(String),

    /// A configuration file or field is invalid.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    /// A plugin failed, misbehaved or was refused. Both fields may carry text the plugin chose (its name
    /// comes from a file name or a config, its message may quote it); they are shown through
    /// [`crate::plugin::text::sanitize`], so printing the error cannot act on a terminal.
    #[error("plugin `{}`: {}", crate::plugin::text::sanitize(plugin), crate::plugin::text::sanitize(message))]
    Plugin { plugin: String, message: String },
}

/// Result with the library's error.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A `Format` error for `path`.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Format { path: path.into(), message: message.into() }
    }

    /// An `Io` error for `path`.
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io { path: path.into(), cause }
    }

    /// An `Unsupported` error for `path`.
    pub fn unsupported(path: impl Into<PathBuf>, what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Unsupported { path: path.into(), what: what.into(), detail: detail.into() }
    }
}
