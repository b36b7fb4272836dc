//! GGUF reader: metadata accessors, tensor access, validation errors, robustness to corrupt input,
//! and the Q/K un-permutation checked against the Hugging Face weights of the tiny-llama fixture.
//! Run: `cargo test -p babelrl --test inference gguf_reader::`.

use std::path::PathBuf;

use babelrl::Error;
use babelrl::model::gguf::{Gguf, GgufValue, unpermute_llama_qk};
use half::f16;
use proptest::prelude::*;

use crate::gguf_support;
use gguf_support::Writer;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A small valid file: metadata of several types, an F32 matrix, an F16 vector and a Q8_0 row.
fn sample() -> Vec<u8> {
    let mut w = Writer::new();
    w.kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 2)
        .kv_f32("llama.rope.freq_base", 10000.0)
        .kv_str_array("tokenizer.ggml.tokens", &["a", "b", "ab"])
        .kv_raw("flag", 7, &[1])
        .kv_raw("big", 10, &(1u64 << 40).to_le_bytes());
    let m: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
    w.tensor("m", &[3, 2], 0, &f32_bytes(&m));
    let h: Vec<u8> = [1.0f32, -2.0].iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect();
    w.tensor("h", &[2], 1, &h);
    let mut q8 = f16::from_f32(0.25).to_le_bytes().to_vec();
    q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
    w.tensor("q", &[32], 8, &q8);
    w.bytes()
}

fn open(bytes: Vec<u8>) -> babelrl::Result<Gguf> {
    Gguf::from_bytes("mem.gguf", bytes)
}

fn format_msg(r: babelrl::Result<Gguf>) -> String {
    match r {
        Err(Error::Format { path, message }) => {
            assert_eq!(path, PathBuf::from("mem.gguf"));
            message
        }
        Err(e) => panic!("expected a Format error, got {e}"),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn metadata_accessors() {
    let g = open(sample()).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    assert_eq!(g.arch().unwrap(), "llama");
    assert_eq!(g.get_u32("llama.block_count").unwrap(), 2);
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), 10000.0);
    assert!(g.get_bool("flag").unwrap());
    assert_eq!(g.get_u64("big").unwrap(), 1 << 40);
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap(), vec!["a", "b", "ab"]);
    assert_eq!(g.opt_u32("absent").unwrap(), None);
    assert!(matches!(g.get("flag"), Some(GgufValue::Bool(true))));

    let e = g.get_u32("big").unwrap_err().to_string();
    assert!(e.contains("mem.gguf") && e.contains("`big`") && e.contains("u64"), "{e}");
    let e = g.get_str("llama.block_count").unwrap_err().to_string();
    assert!(e.contains("`llama.block_count`") && e.contains("expected a string"), "{e}");
    let e = g.get_f32("nope").unwrap_err().to_string();
    assert!(e.contains("`nope` is missing"), "{e}");
    assert!(g.opt_str("llama.block_count").is_err());
}

#[test]
fn tensors_in_pytorch_order() {
    let g = open(sample()).unwrap();
    assert_eq!(g.tensors().len(), 3);
    let (m, shape) = g.tensor_f32("m").unwrap();
    assert_eq!(shape, vec![2, 3]); // GGUF dims [3, 2] reversed
    assert_eq!(m, (0..6).map(|i| i as f32 * 0.5).collect::<Vec<_>>());
    let (h, shape) = g.tensor_f16("h").unwrap();
    assert_eq!((h, shape), (vec![f16::from_f32(1.0).to_bits(), f16::from_f32(-2.0).to_bits()], vec![2]));
    let (q, _) = g.tensor_f32("q").unwrap();
    assert_eq!(q, (0..32).map(|i| (i - 16) as f32 * 0.25).collect::<Vec<_>>());
    let (q16, _) = g.tensor_f16("q").unwrap();
    assert_eq!(q16[0], f16::from_f32(-4.0).to_bits());
    assert!(matches!(g.tensor_f32("missing"), Err(Error::MissingTensor { name, .. }) if name == "missing"));
}

#[test]
fn custom_alignment() {
    let mut w = Writer::new();
    w.alignment = 64;
    w.kv_u32("general.alignment", 64);
    w.tensor("a", &[1], 0, &f32_bytes(&[1.0]));
    w.tensor("b", &[2], 0, &f32_bytes(&[2.0, 3.0]));
    let g = open(w.bytes()).unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.data_offset() % 64, 0);
    assert_eq!(g.tensor_info("b").unwrap().offset, 64);
    assert_eq!(g.tensor_f32("b").unwrap().0, vec![2.0, 3.0]);
}

#[test]
fn validation_errors_name_the_problem() {
    let good = sample();
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(format_msg(open(bad)).contains("magic"));

    let mut v1 = good.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(matches!(open(v1), Err(Error::Unsupported { .. })));
    let mut v9 = good.clone();
    v9[4..8].copy_from_slice(&9u32.to_le_bytes());
    assert!(open(v9).unwrap_err().to_string().contains("9 (supported: 2, 3)"));

    // Absurd tensor count: must be refused before allocating.
    let mut huge = good.clone();
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(format_msg(open(huge)).contains("tensor count"));

    assert!(format_msg(open(good[..good.len() - 1].to_vec())).contains("outside"));
    assert!(format_msg(open(good[..40].to_vec())).contains("metadata count 6 cannot fit"));
    for cut in [0, 7, 40, 100, 200, 300] {
        let m = format_msg(open(good[..cut].to_vec()));
        assert!(m.contains("truncated"), "cut at {cut}: {m}");
    }

    let mut w = Writer::new();
    w.tensor("t", &[4], 99, &[0; 16]);
    assert!(format_msg(open(w.bytes())).contains("unknown tensor type 99"));

    let mut w = Writer::new();
    w.tensor("t", &[16], 2, &[0; 18]); // Q4_0 needs ne[0] % 32 == 0
    assert!(format_msg(open(w.bytes())).contains("block size"));

    let mut w = Writer::new();
    w.kv_u32("k", 1).kv_u32("k", 2);
    assert!(format_msg(open(w.bytes())).contains("appears twice"));

    let mut w = Writer::new();
    w.kv_raw("s", 8, &u64::MAX.to_le_bytes());
    assert!(format_msg(open(w.bytes())).contains("`s`"));
}

#[test]
fn unsupported_type_is_refused_on_access() {
    let mut w = Writer::new();
    w.tensor("iq", &[256], 16, &[0; 66]); // IQ2_XXS: known size, no dequantizer
    let g = open(w.bytes()).unwrap();
    assert!(matches!(g.tensor_f32("iq"), Err(Error::Unsupported { .. })));
    assert_eq!(g.tensor_bytes("iq").unwrap().len(), 66);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn truncation_never_panics(cut in 0usize..400) {
        let good = sample();
        let cut = cut.min(good.len());
        if let Ok(g) = open(good[..cut].to_vec()) {
            for t in g.tensors().to_vec() { let _ = g.tensor_f32(&t.name); }
        }
    }

    #[test]
    fn byte_flips_never_panic(flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..6)) {
        let mut bytes = sample();
        for (pos, val) in flips {
            let n = bytes.len();
            bytes[pos % n] = val;
        }
        if let Ok(g) = open(bytes) {
            for t in g.tensors().to_vec() {
                let _ = g.tensor_f32(&t.name);
                let _ = g.tensor_f16(&t.name);
            }
            for (k, _) in g.metadata() { let _ = g.get_str_array(k); let _ = g.get_u32(k); }
        }
    }
}

/// `convert_hf_to_gguf.py`'s permute, written independently of the library's inverse.
fn permute(w: &[f32], n_head: usize, rows: usize, cols: usize) -> Vec<f32> {
    // reshape(n_head, 2, hd/2, cols).swapaxes(1, 2): out[h, j, i] = w[h, i, j]
    let half = rows / n_head / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                let src = (h * 2 + i) * half + j;
                let dst = (h * half + j) * 2 + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[test]
fn unpermute_inverts_permute() {
    let (n_head, rows, cols) = (3, 24, 5);
    let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
    let back = unpermute_llama_qk(&permute(&w, n_head, rows, cols), n_head, rows, cols).unwrap();
    assert_eq!(back, w);
    assert!(unpermute_llama_qk(&w, 5, rows, cols).is_err());
}

#[test]
fn unpermute_matches_hf_weights_of_tiny_llama() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let g = Gguf::open(root.join("tiny-llama-gguf/tiny-llama.gguf")).unwrap();
    let hf_bytes = std::fs::read(root.join("tiny-llama/model.safetensors")).unwrap();
    let hf = safetensors::SafeTensors::deserialize(&hf_bytes).unwrap();
    let n_head = g.get_u32("llama.attention.head_count").unwrap() as usize;
    let n_kv = g.get_u32("llama.attention.head_count_kv").unwrap() as usize;
    for layer in 0..2 {
        for (gg, hfn, heads) in [("attn_q", "q_proj", n_head), ("attn_k", "k_proj", n_kv)] {
            let (bits, shape) = g.tensor_f16(&format!("blk.{layer}.{gg}.weight")).unwrap();
            let un = unpermute_llama_qk(&bits, heads, shape[0], shape[1]).unwrap();
            let t = hf.tensor(&format!("model.layers.{layer}.self_attn.{hfn}.weight")).unwrap();
            assert_eq!(t.shape(), shape.as_slice());
            let want: Vec<u16> = t.data().chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
            assert_eq!(un, want, "layer {layer} {gg}");
            assert_ne!(bits, want, "layer {layer} {gg}: the fixture should be permuted");
        }
    }
}
