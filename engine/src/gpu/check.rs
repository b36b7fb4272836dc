//! Size checks shared by every kernel launch: a mis-sized buffer is an error naming the kernel and
//! the buffer, never a launch (in a release build wgpu's bounds checks would clamp the access and
//! return silently wrong numbers).

use crate::gpu::Tensor;
use crate::{Error, Result};

/// Elements `t`'s buffer can hold (a tensor's shape never claims more, but check both).
fn buffer_words(t: &Tensor) -> usize {
    (t.buffer.size() / 4) as usize
}

/// Errors unless `tensor` holds at least the elements of `shape` (workspaces are sized for the largest
/// pass, so a larger buffer is fine). The error names `op` (the kernel) and `name` (the buffer), and
/// gives the shape the launch needs against the tensor's own.
pub(crate) fn need(op: &str, name: &str, tensor: &Tensor, shape: &[usize]) -> Result<()> {
    let len = shape.iter().product::<usize>();
    if tensor.len() < len || buffer_words(tensor) < len {
        return Err(Error::Input(format!(
            "{op}: `{name}` is {:?} ({} elements); the launch needs {shape:?} ({len} elements)",
            tensor.shape,
            tensor.len()
        )));
    }
    Ok(())
}

/// `v` as a kernel's u32 parameter, or an error naming `op` and `what`.
pub(crate) fn to_u32(op: &str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Input(format!("{op}: {what} = {v} does not fit the kernel's u32")))
}

/// An input error for `op` (a parameter the kernel cannot take, as opposed to a buffer's size).
pub(crate) fn fail(op: &str, what: impl std::fmt::Display) -> Error {
    Error::Input(format!("{op}: {what}"))
}
