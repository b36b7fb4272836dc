//! GGML tensor types and their dequantization to f32, with block layouts as in ggml's `ggml-common.h`.
//!
//! Every quantized type stores a tensor's elements in fixed-size blocks along the innermost (GGUF
//! `ne[0]`) dimension. The dequantization loops below follow ggml's reference `dequantize_row_*`
//! functions (and gguf-py's `quants.py`, which is what the integration test compares against); each
//! block type's layout is written next to its loop. All multi-byte fields are little-endian and the
//! scales stored as `f16` are converted to f32 before any arithmetic, exactly as the references do.

use half::f16;

use crate::gpu::{PackedHost, QuantFormat};

/// Elements per block of the "K-quants" (Q2_K … Q8_K).
pub const QK_K: usize = 256;

/// A GGML tensor element type, by its numeric id in GGUF tensor infos.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

impl GgmlType {
    /// The type with GGUF id `id`, or `None` for ids this build does not know.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            _ => return None,
        })
    }

    /// `(elements per block, bytes per block)`, as `ggml_blck_size` / `ggml_type_size`.
    pub fn block_layout(self) -> (usize, usize) {
        use GgmlType::*;
        match self {
            F32 => (1, 4),
            F16 | BF16 => (1, 2),
            Q4_0 => (32, 2 + 16),
            Q4_1 => (32, 2 + 2 + 16),
            Q5_0 => (32, 2 + 4 + 16),
            Q5_1 => (32, 2 + 2 + 4 + 16),
            Q8_0 => (32, 2 + 32),
            // ggml-common.h: two f16 (d, s) then 32 int8 (gguf-py's table still says 4 + 4 + 32).
            Q8_1 => (32, 2 + 2 + 32),
            Q2_K => (QK_K, 2 + 2 + QK_K / 16 + QK_K / 4),
            Q3_K => (QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),
            Q4_K => (QK_K, 2 + 2 + QK_K / 2 + 12),
            Q5_K => (QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),
            Q6_K => (QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16),
            Q8_K => (QK_K, 4 + QK_K + QK_K / 8),
            IQ2_XXS => (QK_K, 2 + QK_K / 4),
            IQ2_XS => (QK_K, 2 + QK_K / 4 + QK_K / 32),
            IQ3_XXS => (QK_K, 2 + QK_K / 4 + QK_K / 8),
            IQ1_S => (QK_K, 2 + QK_K / 8 + QK_K / 16),
            IQ4_NL => (32, 2 + 16),
            IQ3_S => (QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4),
            IQ2_S => (QK_K, 2 + QK_K / 4 + QK_K / 16),
            IQ4_XS => (QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),
            I8 => (1, 1),
            I16 => (1, 2),
            I32 => (1, 4),
            I64 | F64 => (1, 8),
            IQ1_M => (QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
            TQ1_0 => (QK_K, 2 + 4 * 13),
            TQ2_0 => (QK_K, 2 + 64),
            MXFP4 => (32, 1 + 16),
        }
    }

    /// Whether [`dequantize`] implements this type.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16
                | BF16
                | F64
                | I8
                | I16
                | I32
                | Q4_0
                | Q4_1
                | Q5_0
                | Q5_1
                | Q8_0
                | Q8_1
                | Q4_K
                | Q5_K
                | Q6_K
        )
    }

    /// Bytes needed for `n_elements` elements, or `None` if `n_elements` is not a whole number of
    /// blocks or the size overflows.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let (block, size) = self.block_layout();
        if !n_elements.is_multiple_of(block as u64) {
            return None;
        }
        (n_elements / block as u64).checked_mul(size as u64)
    }
}

/// A `[rows, cols]` tensor's GGUF Q4_0, Q4_1 or Q8_0 blocks repacked for the GPU (`PackedHost`: one
/// scale word `d | m << 16` per block, Q4_0's offset as m = −8d, and the quantized bytes as
/// little-endian words, unchanged); `Ok(None)` for any other type. The values are those of
/// [`dequantize`]: `d · q + m` equals Q4_0's `(q − 8) · d` exactly (both products are exact in f32).
/// Errors (a message for the caller to wrap with the file and tensor name) when the bytes do not
/// hold `rows × cols` values or a row is not a whole number of blocks.
pub fn pack_blocks(
    ty: GgmlType,
    bytes: &[u8],
    rows: usize,
    cols: usize,
) -> Result<Option<PackedHost>, String> {
    let format = match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 => QuantFormat::Q4,
        GgmlType::Q8_0 => QuantFormat::Q8,
        _ => return Ok(None),
    };
    let (block, size) = ty.block_layout();
    if !cols.is_multiple_of(block) || bytes.len() != rows * cols / block * size {
        return Err(format!(
            "{ty:?}: {} bytes do not hold {rows} rows of {cols} values in blocks of {block} ({size} bytes)",
            bytes.len()
        ));
    }
    let blocks = rows * cols / block;
    let mut scales = Vec::with_capacity(blocks);
    let mut quants = Vec::with_capacity(blocks * format.quant_words());
    let bits = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    for b in bytes.chunks_exact(size) {
        let (d, m, qs) = match ty {
            GgmlType::Q4_0 => {
                let m = f16::from_f32(-8.0 * f16::from_bits(bits(b, 0)).to_f32());
                if !m.is_finite() {
                    return Err(format!("Q4_0 block scale {} is too large to pack", f16_at(b, 0)));
                }
                (bits(b, 0), m.to_bits(), &b[2..])
            }
            GgmlType::Q4_1 => (bits(b, 0), bits(b, 2), &b[4..]),
            _ => (bits(b, 0), 0, &b[2..]),
        };
        scales.push(d as u32 | (m as u32) << 16);
        quants.extend(qs.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])));
    }
    Ok(Some(PackedHost { format, rows, cols, quants, scales }))
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantize `bytes` (a whole number of blocks of `ty`) into `out`, one f32 per element.
///
/// Errors (as a message for the caller to wrap with the file and tensor name) when the type is not
/// implemented or `bytes.len()` does not match `out.len()` elements of `ty`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let (block, size) = ty.block_layout();
    if !out.len().is_multiple_of(block) || bytes.len() != out.len() / block * size {
        return Err(format!(
            "{ty:?}: {} bytes do not hold {} elements ({} per block of {} bytes)",
            bytes.len(),
            out.len(),
            block,
            size
        ));
    }
    let blocks = bytes.chunks_exact(size).zip(out.chunks_exact_mut(block));
    match ty {
        GgmlType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16_at(b, 0)),
        // bfloat16: the high 16 bits of an f32.
        GgmlType::BF16 => {
            blocks.for_each(|(b, y)| y[0] = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
        }
        GgmlType::F64 => blocks.for_each(|(b, y)| y[0] = f64::from_le_bytes(b.try_into().unwrap()) as f32),
        GgmlType::I8 => blocks.for_each(|(b, y)| y[0] = b[0] as i8 as f32),
        GgmlType::I16 => blocks.for_each(|(b, y)| y[0] = i16::from_le_bytes([b[0], b[1]]) as f32),
        GgmlType::I32 => blocks.for_each(|(b, y)| y[0] = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32),
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| q5_0(b, y)),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| q5_1(b, y)),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        GgmlType::Q8_1 => blocks.for_each(|(b, y)| q8_1(b, y)),
        GgmlType::Q4_K => blocks.for_each(|(b, y)| q4_k(b, y)),
        GgmlType::Q5_K => blocks.for_each(|(b, y)| q5_k(b, y)),
        GgmlType::Q6_K => blocks.for_each(|(b, y)| q6_k(b, y)),
        other => return Err(format!("dequantization of {other:?} is not implemented")),
    }
    Ok(())
}

/// `block_q4_0` (18 bytes, 32 values): `d: f16`, `qs: [u8; 16]`.
/// Element `j` (< 16) is the low nibble of `qs[j]`, element `j + 16` the high nibble;
/// `y = (q - 8) · d`.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// `block_q4_1` (20 bytes, 32 values): `d: f16`, `m: f16`, `qs: [u8; 16]`.
/// Nibbles as Q4_0; `y = q · d + m`.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// `block_q5_0` (22 bytes, 32 values): `d: f16`, `qh: u32` (little-endian), `qs: [u8; 16]`.
/// Element `j`'s fifth bit is bit `j` of `qh`; its low four bits are nibbles as Q4_0;
/// `y = (q - 16) · d`.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = (((qs[j] & 0x0F) as u32 | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

/// `block_q5_1` (24 bytes, 32 values): `d: f16`, `m: f16`, `qh: u32`, `qs: [u8; 16]`.
/// Bits as Q5_0; `y = q · d + m`.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = ((qs[j] & 0x0F) as u32 | h0) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) as u32 | h1) as f32 * d + m;
    }
}

/// `block_q8_0` (34 bytes, 32 values): `d: f16`, `qs: [i8; 32]`; `y = q · d`.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// `block_q8_1` (36 bytes, 32 values): `d: f16`, `s: f16` (= d · Σq, unused here), `qs: [i8; 32]`;
/// `y = q · d`.
fn q8_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = (b[4 + j] as i8) as f32 * d;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K / Q5_K
/// (ggml's `get_scale_min_k4`): for `j < 4`, `sc = q[j] & 63`, `m = q[j + 4] & 63`; otherwise
/// `sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)`, `m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4)`.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// `block_q4_K` (144 bytes, 256 values): `d: f16`, `dmin: f16`, `scales: [u8; 12]` (eight 6-bit
/// scale/min pairs, see [`scale_min_k4`]), `qs: [u8; 128]`. Each 64-value chunk `c` (0..4) uses
/// `qs[32c..32c+32]`: the low nibbles are sub-block `2c`, the high nibbles sub-block `2c + 1`;
/// `y = (d · sc) · q − (dmin · m)`.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        let q = &qs[32 * c..32 * c + 32];
        for l in 0..32 {
            y[64 * c + l] = d1 * (q[l] & 0x0F) as f32 - min1;
            y[64 * c + 32 + l] = d2 * (q[l] >> 4) as f32 - min2;
        }
    }
}

/// `block_q5_K` (176 bytes, 256 values): `d: f16`, `dmin: f16`, `scales: [u8; 12]`, `qh: [u8; 32]`,
/// `qs: [u8; 128]`. As Q4_K, plus a fifth bit: value `l` of sub-block `s` (0..8) takes bit `s` of
/// `qh[l]` as its bit 4; `y = (d · sc) · q − (dmin · m)`.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        let q = &qs[32 * c..32 * c + 32];
        for l in 0..32 {
            let h1 = ((qh[l] >> (2 * c)) & 1) << 4;
            let h2 = ((qh[l] >> (2 * c + 1)) & 1) << 4;
            y[64 * c + l] = d1 * ((q[l] & 0x0F) | h1) as f32 - min1;
            y[64 * c + 32 + l] = d2 * ((q[l] >> 4) | h2) as f32 - min2;
        }
    }
}

/// `block_q6_K` (210 bytes, 256 values): `ql: [u8; 128]` (low 4 bits), `qh: [u8; 64]` (high 2 bits),
/// `scales: [i8; 16]` (one per 16 values), `d: f16`. Each half `n` (0..2) of 128 values uses
/// `ql[64n..64n+64]`, `qh[32n..32n+32]`, `scales[8n..8n+8]`; for `l < 32`:
/// value `l` = low nibble of `ql[l]` | bits 0-1 of `qh[l]`, value `l+32` = low nibble of `ql[l+32]` |
/// bits 2-3, value `l+64` = high nibble of `ql[l]` | bits 4-5, value `l+96` = high nibble of
/// `ql[l+32]` | bits 6-7; `y = (d · scale) · (q − 32)` with the scale of the value's 16-group.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}
