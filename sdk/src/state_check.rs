//! Testing a router's `load_state` against corrupt checkpoints, natively: every state derived from a
//! good one by editing one JSON node (edge numbers, wrong types, removed entries) or cutting or flipping
//! bytes must be refused with `Err` or, if accepted, leave a router whose `choose`, `update` and
//! `save_state` still work. A panic fails the calling test; in the engine it would be a trap on every
//! call after the bad state was loaded.

use crate::router::Router;
use crate::{ChooseRequest, Feedback};
use serde_json::Value;

fn edge_values() -> Vec<Value> {
    vec![
        Value::Null,
        Value::from(true),
        Value::from(0),
        Value::from(-1),
        Value::from(0.5),
        Value::from(u64::MAX),
        Value::from(u64::MAX / 2 + 1),
        Value::from(i64::MIN),
        Value::from(1e308),
        Value::from(-1e308),
        Value::from(""),
        Value::from("zz"),
        Value::Array(vec![]),
        Value::Array(vec![Value::from(1), Value::from(2)]),
        Value::Object(Default::default()),
    ]
}

fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

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

/// Removes the `n`-th node below the root (pre-order) from its parent.
fn remove_node(v: &mut Value, n: &mut usize) -> bool {
    match v {
        Value::Array(a) => {
            for i in 0..a.len() {
                if *n == 0 {
                    a.remove(i);
                    return true;
                }
                *n -= 1;
                if remove_node(&mut a[i], n) {
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
                if o.get_mut(&k).is_some_and(|c| remove_node(c, n)) {
                    return true;
                }
            }
            false
        }
        _ => false,
    }
}

/// Corrupt variants of a saved state: each JSON node replaced by each edge value or removed, every
/// array extended by a copy of its last element, and the bytes cut or flipped at a few places.
pub fn corrupted_states(saved: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if let Ok(root) = serde_json::from_slice::<Value>(saved) {
        let nodes = count(&root);
        for i in 0..nodes {
            for e in edge_values() {
                let mut v = root.clone();
                if let Some(n) = node_mut(&mut v, &mut { i }) {
                    *n = e;
                }
                out.push(serde_json::to_vec(&v).unwrap_or_default());
            }
            let mut v = root.clone();
            if remove_node(&mut v, &mut { i }) {
                out.push(serde_json::to_vec(&v).unwrap_or_default());
            }
            let mut v = root.clone();
            if let Some(Value::Array(a)) = node_mut(&mut v, &mut { i })
                && let Some(last) = a.last().cloned()
            {
                a.push(last);
                out.push(serde_json::to_vec(&v).unwrap_or_default());
            }
        }
    }
    for k in 0..16 {
        let at = saved.len() * k / 16;
        out.push(saved[..at].to_vec());
        let mut flipped = saved.to_vec();
        if let Some(b) = flipped.get_mut(at) {
            *b ^= 0x20;
        }
        out.push(flipped);
    }
    out
}

/// Loads every [`corrupted_states`] of `saved` into a fresh router from `make` (configured with
/// `languages`); where one is accepted, runs `choose` (k = 3, with and without a topic), `update` and
/// `save_state`. Returns `(refused, accepted)`. Panics (failing the test) if any of it panics.
pub fn check_corrupt_states<R: Router>(
    make: impl Fn() -> R,
    languages: &[String],
    saved: &[u8],
) -> (usize, usize) {
    let (mut refused, mut accepted) = (0, 0);
    for state in corrupted_states(saved) {
        let mut r = make();
        if r.load_state(&state).is_err() {
            refused += 1;
            continue;
        }
        accepted += 1;
        let shown = String::from_utf8_lossy(&state).into_owned();
        for topic in [None, Some("math".to_string())] {
            let request = ChooseRequest {
                question_id: "q".into(),
                topic: topic.clone(),
                question_language: languages[0].clone(),
                k: 3,
                step: 1,
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = r.choose(&request);
                let feedback: Vec<Feedback> = languages
                    .iter()
                    .map(|l| Feedback {
                        topic: topic.clone().unwrap_or("_".into()),
                        language: l.clone(),
                        reward: 1.0,
                    })
                    .collect();
                let _ = r.update(2, &feedback);
                let _ = r.choose(&request);
                r.save_state()
            }));
            if result.is_err() {
                panic!("the router accepted this state and then panicked: {shown}");
            }
        }
    }
    (refused, accepted)
}
