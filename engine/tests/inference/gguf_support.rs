//! Shared by the GGUF and tokenizer tests: a minimal GGUF v3 writer for hand-made files.
#![allow(dead_code)]

/// Builds GGUF v3 files in memory (the layout of ggml's `gguf.h`).
pub struct Writer {
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
    pub alignment: usize,
}

pub fn gstr(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl Writer {
    pub fn new() -> Self {
        Writer { kv: vec![], n_kv: 0, infos: vec![], n_tensors: 0, data: vec![], alignment: 32 }
    }
    pub fn kv_raw(&mut self, key: &str, ty: u32, payload: &[u8]) -> &mut Self {
        gstr(&mut self.kv, key);
        self.kv.extend(ty.to_le_bytes());
        self.kv.extend(payload);
        self.n_kv += 1;
        self
    }
    pub fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.kv_raw(key, 4, &v.to_le_bytes())
    }
    pub fn kv_f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.kv_raw(key, 6, &v.to_le_bytes())
    }
    pub fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        let mut p = vec![];
        gstr(&mut p, v);
        self.kv_raw(key, 8, &p)
    }
    pub fn kv_str_array(&mut self, key: &str, items: &[&str]) -> &mut Self {
        let mut p = 8u32.to_le_bytes().to_vec();
        p.extend((items.len() as u64).to_le_bytes());
        for s in items {
            gstr(&mut p, s);
        }
        self.kv_raw(key, 9, &p)
    }
    pub fn kv_bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.kv_raw(key, 7, &[v as u8])
    }
    pub fn kv_i32_array(&mut self, key: &str, items: &[i32]) -> &mut Self {
        let mut p = 5u32.to_le_bytes().to_vec();
        p.extend((items.len() as u64).to_le_bytes());
        for v in items {
            p.extend(v.to_le_bytes());
        }
        self.kv_raw(key, 9, &p)
    }
    pub fn kv_f32_array(&mut self, key: &str, items: &[f32]) -> &mut Self {
        let mut p = 6u32.to_le_bytes().to_vec();
        p.extend((items.len() as u64).to_le_bytes());
        for v in items {
            p.extend(v.to_le_bytes());
        }
        self.kv_raw(key, 9, &p)
    }
    /// Add a tensor with GGUF `dims` and raw `bytes` of type id `ty`.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, bytes: &[u8]) -> &mut Self {
        while !self.data.len().is_multiple_of(self.alignment) {
            self.data.push(0);
        }
        gstr(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend((self.data.len() as u64).to_le_bytes());
        self.data.extend(bytes);
        self.n_tensors += 1;
        self
    }
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        out.extend(&self.infos);
        while !out.len().is_multiple_of(self.alignment) {
            out.push(0);
        }
        out.extend(&self.data);
        out
    }
}
