//! Size checks shared by every kernel launch: a mis-sized buffer is an error naming the kernel and
//! the buffer, never a launch. These checks are what lets the engine's own shader modules run without
//! naga's runtime bounds checks (`pipeline.rs`): a launch that passes them cannot index outside its
//! buffers, and one that fails them is refused before anything is recorded.

use crate::gpu::packed::PACKED_BLOCK;
use crate::gpu::{Tensor, Weight16};
use crate::{Error, Result};

/// Elements `t`'s buffer can hold (a tensor's shape never claims more, but check both).
fn buffer_words(t: &Tensor) -> usize {
    (t.buffer.size() / 4) as usize
}

/// Errors unless `tensor` holds at least the elements of `shape` (workspaces are sized for the largest
/// pass, so a larger buffer is fine), in a buffer padded to whole 16-byte vectors (kernels read their
/// inputs as `vec4`; the engine's own tensors always are). The error names `op` (the kernel) and
/// `name` (the buffer), and gives the shape the launch needs against the tensor's own.
pub(crate) fn need(op: &str, name: &str, tensor: &Tensor, shape: &[usize]) -> Result<()> {
    let len = shape.iter().product::<usize>();
    if tensor.len() < len || buffer_words(tensor) < len {
        return Err(Error::Input(format!(
            "{op}: `{name}` is {:?} ({} elements); the launch needs {shape:?} ({len} elements)",
            tensor.shape,
            tensor.len()
        )));
    }
    if buffer_words(tensor) < len.next_multiple_of(4) {
        return Err(Error::Input(format!(
            "{op}: `{name}`'s buffer of {} bytes is not padded to whole 16-byte vectors ({} bytes for \
             {len} elements); make it with `Gpu::zeros` or `Gpu::upload_f32`",
            tensor.buffer.size(),
            4 * len.next_multiple_of(4)
        )));
    }
    Ok(())
}

/// Errors unless the 16-bit weight `w` is at least one row of an even number of columns and its
/// buffer holds its `rows × cols` halves, padded to whole 16-byte vectors (as `Gpu::upload_weight`
/// makes them). `Weight16`'s fields are public: a weight put together by hand is checked like a tensor.
pub(crate) fn need_weight(op: &str, name: &str, w: &Weight16) -> Result<()> {
    if let Some(p) = &w.packed {
        return Err(Error::Input(format!(
            "{op}: weight `{name}` is packed {:?} blocks, which this kernel cannot read; expand it to f16 \
             first (`Batch::expand_packed`) or load the model without packed weights",
            p.format
        )));
    }
    if w.rows == 0 || w.cols == 0 || !w.cols.is_multiple_of(2) {
        return Err(Error::Input(format!(
            "{op}: weight `{name}` is {} × {}; it needs at least one row and an even, non-zero number of \
             columns",
            w.rows, w.cols
        )));
    }
    let bytes = (2 * w.rows * w.cols).next_multiple_of(16) as u64;
    if w.buffer.size() < bytes {
        return Err(Error::Input(format!(
            "{op}: weight `{name}` claims {} × {} halves ({bytes} bytes padded) but its buffer has {} bytes",
            w.rows,
            w.cols,
            w.buffer.size()
        )));
    }
    Ok(())
}

/// As [`need_weight`] for either storage: f16, or packed blocks whose buffers hold `rows × cols / 32`
/// blocks of the format (cols a multiple of 32).
pub(crate) fn need_any_weight(op: &str, name: &str, w: &Weight16) -> Result<()> {
    let Some(p) = &w.packed else { return need_weight(op, name, w) };
    let blocks = w.rows * (w.cols / PACKED_BLOCK);
    let (quants, scales) = ((16 * blocks * p.format.quant_words() / 4) as u64, (4 * blocks) as u64);
    if w.rows == 0 || w.cols == 0 || !w.cols.is_multiple_of(PACKED_BLOCK) {
        return Err(Error::Input(format!(
            "{op}: packed weight `{name}` is {} × {}; it needs at least one row and a non-zero multiple of \
             {PACKED_BLOCK} columns",
            w.rows, w.cols
        )));
    }
    if w.buffer.size() < quants || p.scales.size() < scales {
        return Err(Error::Input(format!(
            "{op}: packed weight `{name}` of {} × {} needs {quants} bytes of quants and {scales} of scales; \
             its buffers have {} and {}",
            w.rows,
            w.cols,
            w.buffer.size(),
            p.scales.size()
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
