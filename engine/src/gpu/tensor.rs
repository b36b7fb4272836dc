//! GPU buffers with a shape: f32 activations, u32 indices, and frozen 16-bit weights packed two per u32.

use half::f16;
use wgpu::util::DeviceExt;

use crate::gpu::{Gpu, PackedBlocks};
use crate::{Error, Result};

pub(crate) const STORAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

/// A storage buffer of 32-bit elements (f32 or u32) with a row-major shape.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub buffer: wgpu::Buffer,
    pub shape: Vec<usize>,
}

impl Tensor {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A frozen weight matrix `[rows, cols]` stored as f16, two values per u32 (`unpack2x16float`), so it
/// runs on adapters with and without `SHADER_F16`. `cols` is even.
///
/// Or, where `packed` is set ([`Gpu::upload_packed`]), as quantized blocks: `buffer` then holds the
/// blocks' quantized values and `packed` their format and scales. Only the forward matmul
/// ([`crate::gpu::Batch::matmul`]) and the backward dX take packed weights (the others refuse them);
/// launches that cannot read blocks run on an f16 expansion ([`crate::gpu::Batch::expand_packed`]).
#[derive(Debug, Clone)]
pub struct Weight16 {
    pub buffer: wgpu::Buffer,
    pub rows: usize,
    pub cols: usize,
    pub packed: Option<PackedBlocks>,
}

fn fits(label: &str, len: usize, shape: &[usize]) -> Result<()> {
    if len != shape.iter().product::<usize>() {
        return Err(Error::Shape { name: label.into(), expected: shape.to_vec(), found: vec![len] });
    }
    Ok(())
}

/// Buffers are padded to whole 16-byte vectors (kernels read them as `vec4`), and never empty.
pub(crate) fn padded(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !bytes.is_empty() && bytes.len().is_multiple_of(16) {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let mut v = bytes.to_vec();
    v.resize(bytes.len().max(16).next_multiple_of(16), 0);
    std::borrow::Cow::Owned(v)
}

/// A frozen `[rows, cols]` weight in row blocks, each within the adapter's largest storage binding
/// (lavapipe binds at most 128 MiB: Qwen2.5's f16 embedding is 272 MB). Most weights are one block.
#[derive(Debug, Clone)]
pub struct BlockedWeight16 {
    /// (first row, block) in row order.
    pub blocks: Vec<(usize, Weight16)>,
    pub rows: usize,
    pub cols: usize,
}

impl Gpu {
    /// Uploads a `[rows, cols]` weight (f32 converted to f16) in as many row blocks as the adapter's
    /// binding limit requires.
    pub fn upload_weight_blocked(
        &self,
        label: &str,
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<BlockedWeight16> {
        let per_block = ((self.max_binding() / (cols * 2).max(1) as u64) as usize).max(1);
        self.upload_weight_in_blocks(label, data, rows, cols, per_block)
    }

    /// As [`Gpu::upload_weight_blocked`] with at most `per_block` rows per block.
    pub fn upload_weight_in_blocks(
        &self,
        label: &str,
        data: &[f32],
        rows: usize,
        cols: usize,
        per_block: usize,
    ) -> Result<BlockedWeight16> {
        if data.len() != rows * cols {
            return Err(Error::Shape {
                name: label.into(),
                expected: vec![rows, cols],
                found: vec![data.len()],
            });
        }
        let per_block = per_block.max(1);
        let mut blocks = Vec::new();
        for first in (0..rows).step_by(per_block) {
            let n = per_block.min(rows - first);
            let block = &data[first * cols..(first + n) * cols];
            blocks.push((first, self.upload_weight(&format!("{label}[{first}..]"), block, n, cols)?));
        }
        Ok(BlockedWeight16 { blocks, rows, cols })
    }

    pub(crate) fn check_size(&self, what: &str, bytes: u64) -> Result<()> {
        if bytes > self.max_binding() {
            return Err(Error::Gpu(format!(
                "{what}: {bytes} bytes exceeds the adapter's largest storage binding ({} bytes)",
                self.max_binding()
            )));
        }
        Ok(())
    }

    /// Uploads f32 data.
    pub fn upload_f32(&self, label: &str, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        fits(label, data.len(), shape)?;
        self.upload_words(label, bytemuck::cast_slice(data), shape)
    }

    /// Uploads u32 data (token ids, positions, indices).
    pub fn upload_u32(&self, label: &str, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        fits(label, data.len(), shape)?;
        self.upload_words(label, bytemuck::cast_slice(data), shape)
    }

    fn upload_words(&self, label: &str, bytes: &[u8], shape: &[usize]) -> Result<Tensor> {
        self.check_size(label, bytes.len() as u64)?;
        let padded = padded(bytes);
        let buffer = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: &padded,
            usage: STORAGE,
        });
        Ok(Tensor { buffer, shape: shape.to_vec() })
    }

    /// A zero-filled f32/u32 tensor.
    pub fn zeros(&self, label: &str, shape: &[usize]) -> Result<Tensor> {
        let bytes = (shape.iter().product::<usize>() * 4).max(16).next_multiple_of(16) as u64;
        self.check_size(label, bytes)?;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: STORAGE,
            mapped_at_creation: false,
        });
        Ok(Tensor { buffer, shape: shape.to_vec() })
    }

    /// Overwrites the start of `tensor` with `data`.
    pub fn write_u32(&self, tensor: &Tensor, data: &[u32]) {
        self.queue.write_buffer(&tensor.buffer, 0, bytemuck::cast_slice(data));
    }

    /// Overwrites the start of `tensor` with `data`.
    pub fn write_f32(&self, tensor: &Tensor, data: &[f32]) {
        self.queue.write_buffer(&tensor.buffer, 0, bytemuck::cast_slice(data));
    }

    /// Uploads a `[rows, cols]` weight, converting f32 to f16.
    pub fn upload_weight(&self, label: &str, data: &[f32], rows: usize, cols: usize) -> Result<Weight16> {
        let halves: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
        self.upload_weight_f16(label, &halves, rows, cols)
    }

    /// Uploads a `[rows, cols]` weight already in f16.
    pub fn upload_weight_f16(&self, label: &str, data: &[f16], rows: usize, cols: usize) -> Result<Weight16> {
        if data.len() != rows * cols {
            return Err(Error::Shape {
                name: label.into(),
                expected: vec![rows, cols],
                found: vec![data.len()],
            });
        }
        if !cols.is_multiple_of(2) {
            return Err(Error::Input(format!(
                "{label}: 16-bit weights need an even number of columns, got {cols}"
            )));
        }
        self.check_size(label, (data.len() * 2) as u64)?;
        let buffer = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: &padded(bytemuck::cast_slice(data)),
            usage: STORAGE,
        });
        Ok(Weight16 { buffer, rows, cols, packed: None })
    }

    /// Reads `len` 32-bit words starting at element `offset` of `buffer` back to the host.
    pub fn read_words<T: bytemuck::Pod>(
        &self,
        buffer: &wgpu::Buffer,
        offset: usize,
        len: usize,
    ) -> Result<Vec<T>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let bytes = (len * 4) as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        encoder.copy_buffer_to_buffer(buffer, (offset * 4) as u64, &staging, 0, Some(bytes));
        self.queue.submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|_| Error::Gpu("readback callback never ran".into()))?
            .map_err(|e| Error::Gpu(format!("mapping a readback buffer failed: {e}")))?;
        let view = staging.get_mapped_range(..).map_err(|e| Error::Gpu(format!("readback: {e}")))?;
        let out = bytemuck::cast_slice::<u8, T>(&view).to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// Reads a whole f32 tensor.
    pub fn read_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        self.read_words(&t.buffer, 0, t.len())
    }
}
