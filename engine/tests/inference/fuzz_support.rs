//! The fuzzing harness of `fuzz_loaders`: mutators for committed seed files (byte flips, truncation,
//! splices, dictionary tokens, GGUF length fields set to edge values, JSON trees edited node by node),
//! a proptest runner with a fixed seed and a bounded case count (`BABELRL_FUZZ_SCALE` multiplies every
//! target's count, `BABELRL_FUZZ_SEED` picks other cases; `scripts/fuzz.sh` sets both for long runs),
//! and the property every
//! loader must hold: `Ok`, or an `Err` whose message names the file — never a panic, never one
//! allocation out of proportion to the input.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------------
// Largest single allocation of the current thread (every test of this binary goes through it; the cost
// is one thread-local compare per allocation).
// ---------------------------------------------------------------------------------------------------

struct TrackLargest;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| {
        if size > c.get() {
            c.set(size)
        }
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; only the size is recorded.
unsafe impl GlobalAlloc for TrackLargest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: TrackLargest = TrackLargest;

/// Most bytes one allocation may take while loading `input` bytes: dequantized f32 weights are at most
/// ~8× a Q4 file and parsed metadata at most ~40× its bytes; the rest is the engine's fixed overhead.
pub fn allocation_bound(input: usize) -> usize {
    64 * input + (64 << 20)
}

// ---------------------------------------------------------------------------------------------------
// Checking one case.
// ---------------------------------------------------------------------------------------------------

/// Collects the property violations of one case: a panic, an error that does not name the file, an
/// absurd allocation.
pub struct Case {
    /// What every error message must contain (the file's or folder's path).
    pub names: String,
    pub problems: Vec<String>,
    pub errors: usize,
}

impl Case {
    pub fn new(names: impl Into<String>) -> Self {
        Case { names: names.into(), problems: vec![], errors: 0 }
    }

    /// Runs one loader step: a panic or an error message without the file's name is recorded as a
    /// problem; `Ok` values are passed on.
    pub fn step<T, E: std::fmt::Display>(
        &mut self,
        what: &str,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Option<T> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.errors += 1;
                let msg = e.to_string();
                if std::env::var_os("BABELRL_FUZZ_VERBOSE").is_some() {
                    eprintln!("fuzz error: {what}: {}", msg.chars().take(300).collect::<String>());
                }
                if !msg.contains(&self.names) {
                    self.problems.push(format!("{what}: error does not name {}: {msg}", self.names));
                }
                None
            }
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.problems.push(format!("{what}: PANIC: {msg}"));
                None
            }
        }
    }

    /// A step whose errors need not name a file (e.g. rendering a template given as text); only a
    /// panic is a problem.
    pub fn step_any<T, E>(&mut self, what: &str, f: impl FnOnce() -> Result<T, E>) -> Option<T> {
        let (names, errors) = (std::mem::take(&mut self.names), self.errors);
        let out = self.step(what, || f().map_err(|_| "")); // "" always contains ""
        (self.names, self.errors) = (names, errors);
        out
    }
}

/// How many cases and which seed: `default_cases` × `BABELRL_FUZZ_SCALE` (default 1), and
/// `BABELRL_FUZZ_SEED` (default fixed, so CI runs the same cases every time).
fn runner(default_cases: u32, target: &str) -> (TestRunner, u64) {
    let scale: u32 = std::env::var("BABELRL_FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let cases = default_cases.saturating_mul(scale);
    let seed = std::env::var("BABELRL_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_u64);
    let mut bytes = [0u8; 32];
    // The same seed gives each target its own stream.
    let h = target
        .bytes()
        .fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    bytes[..8].copy_from_slice(&h.to_le_bytes());
    bytes[8..16].copy_from_slice(&seed.to_le_bytes());
    let config =
        Config { cases, failure_persistence: None, max_shrink_iters: 256, verbose: 0, ..Config::default() };
    (TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)), seed)
}

/// Runs `cases` inputs drawn from `strategy` through `check`, which builds the input, loads it and
/// returns the case's problems and the input's size. Fails (after shrinking) with the smallest input
/// that breaks the property and the seed to replay it.
pub fn fuzz<S: Strategy>(
    target: &str,
    default_cases: u32,
    strategy: S,
    mut check: impl FnMut(&S::Value) -> (Case, usize),
) where
    S::Value: std::fmt::Debug,
{
    let (mut runner, seed) = runner(default_cases, target);
    let started = std::time::Instant::now();
    let (cases, errors) = (Cell::new(0usize), Cell::new(0usize));
    let check = std::cell::RefCell::new(&mut check);
    let result = runner.run(&strategy, |input| {
        LARGEST.with(|c| c.set(0));
        let (case, size) = {
            let mut f = check.borrow_mut();
            (*f)(&input)
        };
        let largest = LARGEST.with(Cell::get);
        cases.set(cases.get() + 1);
        errors.set(errors.get() + usize::from(case.errors > 0));
        let mut problems = case.problems;
        if largest > allocation_bound(size) {
            problems.push(format!("one allocation of {largest} bytes for a {size}-byte input"));
        }
        if problems.is_empty() { Ok(()) } else { Err(TestCaseError::fail(problems.join("\n"))) }
    });
    eprintln!(
        "fuzz {target}: {} runs (seed {seed}), {} refused with an error, {:.1} s",
        cases.get(),
        errors.get(),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("fuzz {target} (BABELRL_FUZZ_SEED={seed}): {e}");
    }
}

// ---------------------------------------------------------------------------------------------------
// Byte-level mutations.
// ---------------------------------------------------------------------------------------------------

/// One edit of a byte string. Positions are fractions of the current length (`Index`), so a sequence of
/// edits stays valid whatever the earlier ones did.
#[derive(Clone, Debug)]
pub enum Edit {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    Delete(Index, u8),
    /// Copy `len` bytes from one place over another (duplicates structure: headers, length fields).
    Splice(Index, Index, u8),
    /// Insert token `dict[i]` of the target's dictionary.
    Token(Index, Index),
    /// Set a known integer field (`fields[i]`, e.g. a GGUF length) to an edge value.
    Field(Index, Index),
}

pub fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::SetByte(i, b)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => (any::<Index>(), any::<Index>(), any::<u8>()).prop_map(|(a, b, n)| Edit::Splice(a, b, n)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Token(a, b)),
        5 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Field(a, b)),
    ]
}

/// An integer field of a binary file: where it is, how wide (1, 2, 4 or 8 bytes), little-endian.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub at: usize,
    pub width: usize,
}

/// Edge values for an integer field holding `orig` in a file of `len` bytes.
fn edge_values(orig: u64, len: u64) -> [u64; 24] {
    [
        0,
        1,
        2,
        3,
        orig.wrapping_sub(1),
        orig.wrapping_add(1),
        orig.wrapping_mul(2),
        orig / 2,
        orig.wrapping_add(32),
        len.wrapping_sub(1),
        len,
        len + 1,
        len * 2,
        0x7F,
        0xFF,
        0xFFFF,
        0x7FFF_FFFF,
        0xFFFF_FFFF,
        0x1_0000_0000,
        1 << 40,
        i64::MAX as u64,
        u64::MAX,
        u64::MAX - 7,
        13,
    ]
}

/// Applies `edits` to `bytes`; `fields` (integer fields of the seed) only apply while the file still has
/// the seed's length up to them; `dict` gives the tokens of `Edit::Token`.
pub fn apply(bytes: &mut Vec<u8>, edits: &[Edit], fields: &[Field], dict: &[&str]) {
    for e in edits {
        let len = bytes.len();
        match *e {
            Edit::FlipBit(i, b) if len > 0 => bytes[i.index(len)] ^= 1 << b,
            Edit::SetByte(i, v) if len > 0 => bytes[i.index(len)] = v,
            Edit::Truncate(i) => bytes.truncate(i.index(len + 1)),
            Edit::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                bytes.drain(at..(at + n as usize + 1).min(len));
            }
            Edit::Splice(a, b, n) if len > 0 => {
                let (from, to) = (a.index(len), b.index(len));
                let n = (n as usize + 1).min(len - from).min(len - to);
                let chunk = bytes[from..from + n].to_vec();
                bytes[to..to + n].copy_from_slice(&chunk);
            }
            Edit::Token(a, t) if !dict.is_empty() => {
                let at = a.index(len + 1);
                let tok = dict[t.index(dict.len())].as_bytes();
                bytes.splice(at..at, tok.iter().copied());
            }
            Edit::Field(f, v) if !fields.is_empty() => {
                let field = fields[f.index(fields.len())];
                if field.at + field.width <= len {
                    let mut raw = [0u8; 8];
                    raw[..field.width].copy_from_slice(&bytes[field.at..field.at + field.width]);
                    let orig = u64::from_le_bytes(raw);
                    let values = edge_values(orig, len as u64);
                    let value = values[v.index(values.len())].to_le_bytes();
                    bytes[field.at..field.at + field.width].copy_from_slice(&value[..field.width]);
                }
            }
            _ => {}
        }
    }
}

/// Up to `max` edits.
pub fn edits(max: usize) -> impl Strategy<Value = Vec<Edit>> {
    proptest::collection::vec(edit(), 1..=max)
}

// ---------------------------------------------------------------------------------------------------
// The integer fields of a GGUF file (structure-aware mutation of the header, metadata and tensor infos).
// ---------------------------------------------------------------------------------------------------

/// Every length, count, type id, dimension and offset field of a well-formed GGUF file.
pub fn gguf_fields(b: &[u8]) -> Vec<Field> {
    let mut fields = vec![Field { at: 4, width: 4 }, Field { at: 8, width: 8 }, Field { at: 16, width: 8 }];
    let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
    let n_tensors = u64_at(8);
    let n_kv = u64_at(16);
    let mut p = 24;
    let string = |p: &mut usize, fields: &mut Vec<Field>| {
        fields.push(Field { at: *p, width: 8 });
        *p += 8 + u64_at(*p) as usize;
    };
    // Scalars (the model's sizes, token ids, flags) are fields too; of an array's elements only the
    // first few, so the thousands of vocabulary strings do not drown the rest.
    fn value(b: &[u8], ty: u32, p: &mut usize, fields: &mut Vec<Field>, record: bool) {
        let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
        let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
        let width = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                if record {
                    fields.push(Field { at: *p, width: 8 });
                }
                *p += 8 + u64_at(*p) as usize;
                return;
            }
            9 => {
                fields.push(Field { at: *p, width: 4 });
                fields.push(Field { at: *p + 4, width: 8 });
                let (elem, n) = (u32_at(*p), u64_at(*p + 4));
                *p += 12;
                for i in 0..n {
                    value(b, elem, p, fields, i < 4 || i + 2 >= n);
                }
                return;
            }
            other => panic!("seed GGUF has value type {other}"),
        };
        if record {
            fields.push(Field { at: *p, width });
        }
        *p += width;
    }
    for _ in 0..n_kv {
        string(&mut p, &mut fields);
        fields.push(Field { at: p, width: 4 });
        let ty = u32_at(p);
        p += 4;
        value(b, ty, &mut p, &mut fields, true);
    }
    for _ in 0..n_tensors {
        string(&mut p, &mut fields);
        let n_dims = u32_at(p) as usize;
        fields.push(Field { at: p, width: 4 });
        p += 4;
        for d in 0..n_dims {
            fields.push(Field { at: p + 8 * d, width: 8 });
        }
        p += 8 * n_dims;
        fields.push(Field { at: p, width: 4 }); // type
        fields.push(Field { at: p + 4, width: 8 }); // offset
        p += 12;
    }
    fields
}

// ---------------------------------------------------------------------------------------------------
// Structure-aware edits of JSON documents (config.json, tokenizer.json, safetensors headers).
// ---------------------------------------------------------------------------------------------------

/// One edit of a JSON tree, at the `node`-th node in pre-order.
#[derive(Clone, Debug)]
pub enum JsonEdit {
    Replace(Index, Index),
    Remove(Index),
    /// Copy one subtree over another.
    Copy(Index, Index),
}

pub fn json_edits(max: usize) -> impl Strategy<Value = Vec<JsonEdit>> {
    let one = prop_oneof![
        3 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| JsonEdit::Replace(a, b)),
        1 => any::<Index>().prop_map(JsonEdit::Remove),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| JsonEdit::Copy(a, b)),
    ];
    proptest::collection::vec(one, 1..=max)
}

fn edge_json() -> Vec<Value> {
    let deep = (0..40).fold(Value::from(1), |v, _| Value::Array(vec![v]));
    vec![
        Value::Null,
        Value::from(true),
        Value::from(0),
        Value::from(1),
        Value::from(2),
        Value::from(-1),
        Value::from(3),
        Value::from(4_294_967_296u64),
        Value::from(u64::MAX),
        Value::from(i64::MIN),
        Value::from(1e300),
        Value::from(-0.5),
        Value::from(""),
        Value::from("x"),
        Value::from("F16"),
        Value::from("I64"),
        Value::from("<unk>"),
        Value::Array(vec![]),
        Value::Array(vec![Value::from(0), Value::from(u64::MAX)]),
        Value::Object(Default::default()),
        deep,
    ]
}

fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

/// The `n`-th node in pre-order.
fn node_mut<'a>(v: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
    if *n == 0 {
        return Some(v);
    }
    *n -= 1;
    match v {
        Value::Array(a) => a.iter_mut().find_map(|c| node_mut(c, n)),
        Value::Object(o) => o.values_mut().find_map(|c| node_mut(c, n)),
        _ => None,
    }
}

fn node(v: &mut Value, i: Index) -> &mut Value {
    let mut n = i.index(count(v));
    node_mut(v, &mut n).expect("index below the node count")
}

/// Removes the `n`-th node (never the root) from its parent.
fn remove(v: &mut Value, n: &mut usize) -> bool {
    match v {
        Value::Array(a) => {
            for i in 0..a.len() {
                if *n == 0 {
                    a.remove(i);
                    return true;
                }
                *n -= 1;
                if remove(&mut a[i], n) {
                    return true;
                }
            }
            false
        }
        Value::Object(o) => {
            let keys: Vec<String> = o.keys().cloned().collect();
            for k in keys {
                if *n == 0 {
                    o.remove(&k);
                    return true;
                }
                *n -= 1;
                if remove(o.get_mut(&k).expect("key listed"), n) {
                    return true;
                }
            }
            false
        }
        _ => false,
    }
}

pub fn apply_json(v: &mut Value, edits: &[JsonEdit]) {
    let edge = edge_json();
    for e in edits {
        match *e {
            JsonEdit::Replace(at, with) => *node(v, at) = edge[with.index(edge.len())].clone(),
            JsonEdit::Remove(at) => {
                let total = count(v);
                if total > 1 {
                    remove(v, &mut at.index(total - 1));
                }
            }
            JsonEdit::Copy(from, to) => {
                let sub = node(v, from).clone();
                *node(v, to) = sub;
            }
        }
    }
}
