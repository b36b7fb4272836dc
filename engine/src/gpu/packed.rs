//! Weights kept as quantized blocks on the GPU (GGUF Q8_0, Q4_0 and Q4_1, repacked so every load is
//! aligned), their upload, their reference dequantization, and the f16 scratch they expand into for
//! launches that cannot read blocks. Layouts: see shaders/matmul_decode.wgsl.

use half::f16;
use wgpu::util::DeviceExt;

use crate::gpu::tensor::{STORAGE, padded};
use crate::gpu::{Gpu, Weight16};
use crate::{Error, Result};

/// Values per block of every packed format.
pub const PACKED_BLOCK: usize = 32;

/// How a packed weight's blocks hold their 32 values; each block has one scale word
/// `pack2x16float(d, m)` and its value `j` is `d · q_j + m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantFormat {
    /// Four bits a value (GGUF Q4_1 as stored, Q4_0 with m = −8d): 16 bytes, byte j holding value j in
    /// its low nibble and value j + 16 in its high one.
    Q4,
    /// A signed byte a value (GGUF Q8_0, m = 0): value j in byte j.
    Q8,
}

impl QuantFormat {
    /// u32 words of quantized values per block.
    pub fn quant_words(self) -> usize {
        match self {
            QuantFormat::Q4 => 4,
            QuantFormat::Q8 => 8,
        }
    }

    /// Value `j` (0..32) of a block's quantized words, before scaling.
    fn quant(self, words: &[u32], j: usize) -> f32 {
        match self {
            QuantFormat::Q4 => {
                let byte = (words[(j % 16) / 4] >> (8 * (j % 4))) & 0xFF;
                (if j < 16 { byte & 0x0F } else { byte >> 4 }) as f32
            }
            QuantFormat::Q8 => ((words[j / 4] >> (8 * (j % 4))) as u8 as i8) as f32,
        }
    }
}

/// The format and per-block scales of a packed [`Weight16`] (whose buffer holds the quantized values).
#[derive(Debug, Clone)]
pub struct PackedBlocks {
    pub format: QuantFormat,
    /// (rows, cols / 32) u32: `pack2x16float(d, m)` of each block.
    pub scales: wgpu::Buffer,
}

/// A packed weight on the host: `rows` rows of `cols / 32` blocks each.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedHost {
    pub format: QuantFormat,
    pub rows: usize,
    pub cols: usize,
    /// (rows, cols / 32, format.quant_words()) words.
    pub quants: Vec<u32>,
    /// (rows, cols / 32) words: f16 d in the low half, f16 m in the high half.
    pub scales: Vec<u32>,
}

impl PackedHost {
    /// Checks that the words fit `rows × cols` values of `format` (cols a non-zero multiple of 32).
    pub fn check(&self) -> Result<()> {
        let blocks = self.rows * (self.cols / PACKED_BLOCK);
        if self.rows == 0 || self.cols == 0 || !self.cols.is_multiple_of(PACKED_BLOCK) {
            return Err(Error::Input(format!(
                "packed weight of {} × {}: needs at least one row and a non-zero multiple of {PACKED_BLOCK} \
                 columns",
                self.rows, self.cols
            )));
        }
        if self.scales.len() != blocks || self.quants.len() != blocks * self.format.quant_words() {
            return Err(Error::Input(format!(
                "packed {:?} weight of {} × {}: {} scale and {} quant words, expected {blocks} and {}",
                self.format,
                self.rows,
                self.cols,
                self.scales.len(),
                self.quants.len(),
                blocks * self.format.quant_words()
            )));
        }
        Ok(())
    }

    /// The rows of several packed weights of one format stacked (fused q|k|v or gate|up); `None` when
    /// the formats or widths differ.
    pub fn concat_rows(parts: &[PackedHost]) -> Option<PackedHost> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.format != first.format || p.cols != first.cols) {
            return None;
        }
        Some(PackedHost {
            format: first.format,
            rows: parts.iter().map(|p| p.rows).sum(),
            cols: first.cols,
            quants: parts.iter().flat_map(|p| p.quants.iter().copied()).collect(),
            scales: parts.iter().flat_map(|p| p.scales.iter().copied()).collect(),
        })
    }

    /// Every value as f32, `d · q + m` with d and m converted from f16 first (as
    /// `model::quant::dequantize` does for the GGUF blocks): the reference the kernels are checked against.
    pub fn dequantize(&self) -> Vec<f32> {
        let words = self.format.quant_words();
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for (b, &s) in self.scales.iter().enumerate() {
            let d = f16::from_bits(s as u16).to_f32();
            let m = f16::from_bits((s >> 16) as u16).to_f32();
            let q = &self.quants[b * words..(b + 1) * words];
            out.extend((0..PACKED_BLOCK).map(|j| self.format.quant(q, j) * d + m));
        }
        out
    }

    /// Bytes the packed weight takes on the GPU.
    pub fn bytes(&self) -> usize {
        4 * (self.quants.len() + self.scales.len())
    }
}

impl Gpu {
    /// Uploads a packed weight: a [`Weight16`] whose buffer holds the quantized values and whose
    /// `packed` field the scales.
    pub fn upload_packed(&self, label: &str, w: &PackedHost) -> Result<Weight16> {
        w.check().map_err(|e| Error::Input(format!("{label}: {e}")))?;
        // Its f16 expansion must fit one binding too (launches that cannot read blocks run on it).
        self.check_size(label, (2 * w.rows * w.cols) as u64)?;
        let upload = |what: &str, words: &[u32]| {
            self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(&format!("{label}.{what}")),
                contents: &padded(bytemuck::cast_slice(words)),
                usage: STORAGE,
            })
        };
        Ok(Weight16 {
            buffer: upload("quants", &w.quants),
            rows: w.rows,
            cols: w.cols,
            packed: Some(PackedBlocks { format: w.format, scales: upload("scales", &w.scales) }),
        })
    }

    /// The shared scratch for f16 expansions, at least `bytes` long (a larger one replaces it; batches
    /// recorded earlier keep the buffer they bound).
    pub(crate) fn weight_scratch(&self, bytes: u64) -> wgpu::Buffer {
        let mut slot = self.weight_scratch.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some(b) if b.size() >= bytes => b.clone(),
            _ => {
                let b = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("packed weight expansion"),
                    size: bytes.max(16).next_multiple_of(16),
                    usage: STORAGE,
                    mapped_at_creation: false,
                });
                *slot = Some(b.clone());
                b
            }
        }
    }
}
