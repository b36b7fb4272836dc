//! Kernels added for the sentence encoder against their plain-Rust references (`babelrl::gpu::cpu_ref`),
//! on sizes that do not divide the workgroup size.

use crate::common;

use babelrl::gpu::cpu_ref;
use common::{assert_close, gpu, random};
use half::f16;

fn to_f16(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}

/// word + position + token-type gathers summed in place, as the encoder's embedding layer does.
#[test]
fn embed_rows_add_accumulates_gathers_like_reference() {
    let gpu = gpu();
    for &(t, dim, vocab) in &[(1usize, 2usize, 3usize), (5, 130, 17), (67, 384, 40), (3, 6, 1)] {
        let word = to_f16(&random(vocab * dim, 1.0, t as u64));
        let pos = to_f16(&random(t * dim, 1.0, t as u64 + 1));
        let ids: Vec<u32> = (0..t).map(|i| ((i * 7 + 3) % vocab) as u32).collect();
        let pos_ids: Vec<u32> = (0..t as u32).rev().collect();
        let start = random(t * dim, 1.0, t as u64 + 2);

        let mut want = start.clone();
        cpu_ref::embed_rows_add_forward(&mut want, &ids, &word, 0, dim);
        cpu_ref::embed_rows_add_forward(&mut want, &pos_ids, &pos, 0, dim);

        let out = gpu.upload_f32("out", &start, &[t, dim]).unwrap();
        let idg = gpu.upload_u32("ids", &ids, &[t]).unwrap();
        let pidg = gpu.upload_u32("pos_ids", &pos_ids, &[t]).unwrap();
        let wg = gpu.upload_weight_f16("word", &word, vocab, dim).unwrap();
        let pg = gpu.upload_weight_f16("pos", &pos, t, dim).unwrap();
        let mut b = gpu.batch();
        b.embed_rows_add(&idg, &wg, &out, t).unwrap();
        b.embed_rows_add(&pidg, &pg, &out, t).unwrap();
        b.submit().unwrap();
        let got = gpu.read_f32(&out).unwrap();
        // Two f32 additions of exactly representable f16 values: rounding only, ≤ 2 ulp of the result.
        assert_close(&format!("embed_rows_add t={t} dim={dim}"), &got, &want, 1e-7, 2.5e-7);
        // The gather really accumulates: it differs from the start wherever a table value is non-zero.
        assert!(got.iter().zip(&start).any(|(g, s)| g != s), "embed_rows_add left the output unchanged");
    }
}

/// `embed_rows` then `embed_rows_add` equals the reference sum of both gathers (the encoder's pattern).
#[test]
fn embed_rows_then_add_equals_sum_of_gathers() {
    let gpu = gpu();
    let (t, dim, vocab) = (9usize, 66usize, 13usize);
    let a = to_f16(&random(vocab * dim, 1.0, 5));
    let bt = to_f16(&random(2 * dim, 1.0, 6));
    let ids: Vec<u32> = (0..t).map(|i| (i * 5 % vocab) as u32).collect();
    let zeros = vec![0u32; t];
    let mut want = cpu_ref::embed_rows_forward(&ids, &a, dim);
    cpu_ref::embed_rows_add_forward(&mut want, &zeros, &bt, 0, dim);

    let out = gpu.zeros("out", &[t, dim]).unwrap();
    let idg = gpu.upload_u32("ids", &ids, &[t]).unwrap();
    let zg = gpu.upload_u32("zeros", &zeros, &[t]).unwrap();
    let ag = gpu.upload_weight_f16("a", &a, vocab, dim).unwrap();
    let bg = gpu.upload_weight_f16("b", &bt, 2, dim).unwrap();
    let mut b = gpu.batch();
    b.embed_rows(&idg, &ag, &out, t).unwrap();
    b.embed_rows_add(&zg, &bg, &out, t).unwrap();
    b.submit().unwrap();
    assert_close("embed_rows + embed_rows_add", &gpu.read_f32(&out).unwrap(), &want, 0.0, 0.0);
}

/// A vocabulary split into row blocks: each block adds only the tokens whose ids fall inside it, and
/// the blocks together equal one gather from the whole table.
#[test]
fn embed_rows_add_from_row_blocks_equals_whole_table() {
    let gpu = gpu();
    let (t, dim, vocab) = (70usize, 10usize, 23usize);
    let table = to_f16(&random(vocab * dim, 1.0, 8));
    let ids: Vec<u32> = (0..t).map(|i| ((i * 11 + 4) % vocab) as u32).collect();
    let whole = cpu_ref::embed_rows_forward(&ids, &table, dim);
    let idg = gpu.upload_u32("ids", &ids, &[t]).unwrap();
    let out = gpu.zeros("out", &[t, dim]).unwrap();
    let mut b = gpu.batch();
    let mut want_block = vec![0.0; t * dim];
    for (first, rows) in [(0usize, 9usize), (9, 9), (18, 5)] {
        let block = &table[first * dim..(first + rows) * dim];
        let bg = gpu.upload_weight_f16("block", block, rows, dim).unwrap();
        b.embed_rows_add_from(&idg, &bg, first, &out, t).unwrap();
        if first == 9 {
            cpu_ref::embed_rows_add_forward(&mut want_block, &ids, block, first, dim);
        }
    }
    b.submit().unwrap();
    assert_close("embed_rows_add_from blocks", &gpu.read_f32(&out).unwrap(), &whole, 0.0, 0.0);
    // The reference of one block touches exactly the tokens with ids 9..18.
    for (i, &id) in ids.iter().enumerate() {
        let row = &want_block[i * dim..(i + 1) * dim];
        let inside = (9..18).contains(&id);
        assert_eq!(row == &whole[i * dim..(i + 1) * dim], inside, "token {i} (id {id})");
    }
}
