//! Dequantization: hand-packed blocks checked against each type's formula, and every type in
//! `tests/fixtures/gguf-quant-blocks.safetensors` (gguf-py's `dequantize`; for Q8_1, which gguf-py lacks,
//! numpy after ggml's reference C) checked bit for bit.
//! Run: `cargo test -p babelrl --test inference gguf_quant::`.

use babelrl::model::quant::{GgmlType, dequantize};
use half::f16;

/// A tiny deterministic generator (64-bit LCG), so the test needs no RNG crate.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn below(&mut self, n: u32) -> u8 {
        (self.next() % n) as u8
    }
    /// A scale that is exact in f16.
    fn scale(&mut self) -> f32 {
        f16::from_f32((self.next() % 2000) as f32 / 1000.0 - 1.0).to_f32()
    }
}

fn h(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

fn deq(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n];
    dequantize(ty, bytes, &mut out).unwrap();
    out
}

fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.to_bits() == w.to_bits(), "{what}[{i}]: got {g}, want {w}");
    }
}

/// The 4-bit nibble pairs of the 32-value formats: byte `j` holds values `j` (low) and `j+16` (high).
fn pack_nibbles(q: &[u8]) -> Vec<u8> {
    (0..16).map(|j| (q[j] & 15) | ((q[j + 16] & 15) << 4)).collect()
}

/// Bit `j` of the little-endian u32 holds bit 4 of value `j`.
fn pack_high_bits(q: &[u8]) -> [u8; 4] {
    let mut qh = 0u32;
    for (j, &v) in q.iter().enumerate() {
        qh |= ((v as u32 >> 4) & 1) << j;
    }
    qh.to_le_bytes()
}

#[test]
fn q4_0_q4_1_q5_0_q5_1_q8_0_q8_1_formulas() {
    let mut r = Lcg(7);
    for _ in 0..20 {
        let (d, m) = (r.scale(), r.scale());
        let (d, m) = (f16::from_f32(d).to_f32(), f16::from_f32(m).to_f32());
        let q4: Vec<u8> = (0..32).map(|_| r.below(16)).collect();
        let q5: Vec<u8> = (0..32).map(|_| r.below(32)).collect();
        let q8: Vec<i8> = (0..32).map(|_| r.below(256) as i8).collect();

        let b = [h(d).to_vec(), pack_nibbles(&q4)].concat();
        let want: Vec<f32> = q4.iter().map(|&q| (q as f32 - 8.0) * d).collect();
        assert_bits(&deq(GgmlType::Q4_0, &b, 32), &want, "Q4_0");

        let b = [h(d).to_vec(), h(m).to_vec(), pack_nibbles(&q4)].concat();
        let want: Vec<f32> = q4.iter().map(|&q| q as f32 * d + m).collect();
        assert_bits(&deq(GgmlType::Q4_1, &b, 32), &want, "Q4_1");

        let b = [h(d).to_vec(), pack_high_bits(&q5).to_vec(), pack_nibbles(&q5)].concat();
        let want: Vec<f32> = q5.iter().map(|&q| (q as f32 - 16.0) * d).collect();
        assert_bits(&deq(GgmlType::Q5_0, &b, 32), &want, "Q5_0");

        let b = [h(d).to_vec(), h(m).to_vec(), pack_high_bits(&q5).to_vec(), pack_nibbles(&q5)].concat();
        let want: Vec<f32> = q5.iter().map(|&q| q as f32 * d + m).collect();
        assert_bits(&deq(GgmlType::Q5_1, &b, 32), &want, "Q5_1");

        let qb: Vec<u8> = q8.iter().map(|&q| q as u8).collect();
        let want: Vec<f32> = q8.iter().map(|&q| q as f32 * d).collect();
        assert_bits(&deq(GgmlType::Q8_0, &[h(d).to_vec(), qb.clone()].concat(), 32), &want, "Q8_0");
        assert_bits(&deq(GgmlType::Q8_1, &[h(d).to_vec(), h(m).to_vec(), qb].concat(), 32), &want, "Q8_1");
    }
}

/// Pack eight 6-bit scales and mins into the 12 bytes of Q4_K/Q5_K (layout in gguf-py's
/// `Q4_K.get_scale_min` comment): bytes 0-3 = sc[0..4] | (sc[4..8] >> 4) << 6, bytes 4-7 the same
/// for the mins, bytes 8-11 = (sc[4..8] & 15) | (m[4..8] & 15) << 4.
fn pack_k_scales(sc: &[u8; 8], m: &[u8; 8]) -> Vec<u8> {
    let mut out = vec![0u8; 12];
    for j in 0..4 {
        out[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        out[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        out[j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4);
    }
    out
}

#[test]
fn q4_k_and_q5_k_formulas() {
    let mut r = Lcg(11);
    for _ in 0..10 {
        let (d, dmin) = (r.scale(), r.scale());
        let sc: [u8; 8] = std::array::from_fn(|_| r.below(64));
        let m: [u8; 8] = std::array::from_fn(|_| r.below(64));
        let q: Vec<u8> = (0..256).map(|_| r.below(32)).collect();
        // 64-value chunk c: qs[32c + l] = value 64c + l (low) | value 64c + 32 + l (high).
        let qs: Vec<u8> = (0..128)
            .map(|i| (q[(i / 32) * 64 + i % 32] & 15) | ((q[(i / 32) * 64 + 32 + i % 32] & 15) << 4))
            .collect();
        // qh[l] bit s = bit 4 of value 32s + l.
        let qh: Vec<u8> =
            (0..32).map(|l| (0..8).fold(0u8, |acc, s| acc | (((q[32 * s + l] >> 4) & 1) << s))).collect();
        let expect = |bits: u8| -> Vec<f32> {
            (0..256)
                .map(|i| {
                    let s = i / 32;
                    let v = q[i] & ((1 << bits) - 1);
                    (d * sc[s] as f32) * v as f32 - dmin * m[s] as f32
                })
                .collect()
        };
        let scales = pack_k_scales(&sc, &m);
        let b4 = [h(d).to_vec(), h(dmin).to_vec(), scales.clone(), qs.clone()].concat();
        assert_bits(&deq(GgmlType::Q4_K, &b4, 256), &expect(4), "Q4_K");
        let b5 = [h(d).to_vec(), h(dmin).to_vec(), scales, qh, qs].concat();
        assert_bits(&deq(GgmlType::Q5_K, &b5, 256), &expect(5), "Q5_K");
    }
}

#[test]
fn q6_k_formula() {
    let mut r = Lcg(13);
    for _ in 0..10 {
        let d = r.scale();
        let q: Vec<u8> = (0..256).map(|_| r.below(64)).collect();
        let scales: Vec<i8> = (0..16).map(|_| r.below(256) as i8).collect();
        let (mut ql, mut qh) = (vec![0u8; 128], vec![0u8; 64]);
        for n in 0..2 {
            let v = |k: usize| q[128 * n + k];
            for l in 0..32 {
                ql[64 * n + l] = (v(l) & 15) | ((v(l + 64) & 15) << 4);
                ql[64 * n + 32 + l] = (v(l + 32) & 15) | ((v(l + 96) & 15) << 4);
                qh[32 * n + l] =
                    (v(l) >> 4) | ((v(l + 32) >> 4) << 2) | ((v(l + 64) >> 4) << 4) | ((v(l + 96) >> 4) << 6);
            }
        }
        let sb: Vec<u8> = scales.iter().map(|&s| s as u8).collect();
        let b = [ql, qh, sb, h(d).to_vec()].concat();
        let want: Vec<f32> = (0..256).map(|i| (d * scales[i / 16] as f32) * (q[i] as f32 - 32.0)).collect();
        assert_bits(&deq(GgmlType::Q6_K, &b, 256), &want, "Q6_K");
    }
}

#[test]
fn plain_types() {
    let vals = [1.5f32, -0.0, 65504.0, 3.0e-8];
    let b: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_bits(&deq(GgmlType::F32, &b, 4), &vals, "F32");
    let b: Vec<u8> = vals.iter().flat_map(|&x| h(x)).collect();
    let want: Vec<f32> = vals.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
    assert_bits(&deq(GgmlType::F16, &b, 4), &want, "F16");
    let b: Vec<u8> = vals.iter().flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes()).collect();
    let want: Vec<f32> = vals.iter().map(|x| f32::from_bits(x.to_bits() & 0xFFFF_0000)).collect();
    assert_bits(&deq(GgmlType::BF16, &b, 4), &want, "BF16");
}

#[test]
fn size_mismatch_and_unsupported_are_errors() {
    let mut out = vec![0.0; 32];
    assert!(dequantize(GgmlType::Q4_0, &[0; 17], &mut out).is_err());
    assert!(dequantize(GgmlType::Q4_0, &[0; 18], &mut out[..31]).is_err());
    assert!(dequantize(GgmlType::Q2_K, &[0; 84], &mut [0.0; 256]).unwrap_err().contains("Q2_K"));
    assert_eq!(GgmlType::from_id(5), None);
    assert_eq!(GgmlType::from_id(14), Some(GgmlType::Q6_K));
}

#[test]
fn matches_gguf_py_fixture() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/gguf-quant-blocks.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut checked = vec![];
    for name in st.names() {
        let Some(ty_name) = name.strip_prefix("raw_") else { continue };
        let ty = (0..64)
            .filter_map(GgmlType::from_id)
            .find(|t| format!("{t:?}") == ty_name)
            .unwrap_or_else(|| panic!("fixture type {ty_name} unknown"));
        let raw = st.tensor(name).unwrap();
        let want_t = st.tensor(&format!("deq_{ty_name}")).unwrap();
        let want: Vec<f32> =
            want_t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_bits(&deq(ty, raw.data(), want.len()), &want, ty_name);
        checked.push(ty_name.to_string());
    }
    checked.sort();
    for must in ["BF16", "F16", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0", "Q8_1"] {
        assert!(checked.iter().any(|c| c == must), "fixture lacks {must}: {checked:?}");
    }
}
