//! A batch whose sequences share a prompt (`TrainBatch::sharing_prompts`: the prompt's rows run once in
//! a leader's slot, each layer copies its keys and values to the followers and adds their gradients
//! back) gives the loss and the LoRA gradients of the same sequences laid out whole, on every tiny model,
//! with the token gradients known before the forward (SFT) or after it (GRPO), and with checkpointing.

use crate::common::gpu;
use crate::train_lora::{Fixture, MODELS, close_within, fixture, read_grads};

use babelrl::gpu::kernels::XENT_IGNORE;
use babelrl::train::{LoraGrads, TrainBatch, TrainSequence, TrainShape};
use safetensors::SafeTensors;

/// Three completions of the fixture's first prompt (its own and two others' completion tokens), then
/// the second sequence whole: a group of three and a sequence of its own.
fn group(f: &Fixture) -> Vec<TrainSequence> {
    let st = SafeTensors::deserialize(&f.bytes).unwrap();
    let seqs = crate::train_lora::sequences(&st);
    let (first, second) = (&seqs[0], &seqs[1]);
    let prompt = &first.tokens[..first.prompt_len.max(3)];
    let with = |completion: &[u32]| TrainSequence {
        tokens: [prompt, completion].concat(),
        prompt_len: prompt.len(),
    };
    let tail = |s: &TrainSequence| s.tokens[s.prompt_len..].to_vec();
    vec![with(&tail(first)), second.clone(), with(&tail(second)), with(&[5, 6, 7, 8, 9])]
}

/// Per-row nll of the rows with a target (in order) and the gradients, with the upstream gradient given
/// to the forward (`grad_first`) or to the backward.
fn run(
    f: &Fixture,
    batch: &TrainBatch,
    grad_first: bool,
    checkpointing: bool,
) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
    let dec = &f.lm.decoder;
    let shape = TrainShape { tokens: batch.len(), slots: batch.slots, span: batch.span };
    let mut acts = dec.train_activations(shape, &f.adapter, checkpointing).unwrap();
    let scratch = dec.train_gradients(shape, &f.adapter).unwrap();
    let grads = LoraGrads::new(&gpu(), &f.adapter).unwrap();
    let g = gpu();
    let mut b = g.batch();
    grads.zero(&mut b);
    b.submit().unwrap();
    // A different weight for each target row (the k-th in order, the same row in both layouts), so a
    // row's gradient landing on another row shows.
    let mut k = 0.0f32;
    let grad: Vec<f32> = batch
        .targets
        .iter()
        .map(|&y| match y {
            XENT_IGNORE => 0.0,
            _ => {
                k += 1.0;
                0.05 + 0.01 * k
            }
        })
        .collect();
    if grad_first {
        dec.train_forward(&mut acts, batch, &f.adapter, Some(&grad)).unwrap();
        dec.train_backward(&acts, &scratch, &f.adapter, &grads, None).unwrap();
    } else {
        dec.train_forward(&mut acts, batch, &f.adapter, None).unwrap();
        dec.train_backward(&acts, &scratch, &f.adapter, &grads, Some(&grad)).unwrap();
    }
    let nll = gpu().read_f32(&acts.nll).unwrap();
    let nll = batch.targets.iter().zip(&nll).filter(|(y, _)| **y != XENT_IGNORE).map(|(_, &v)| v).collect();
    (nll, read_grads(f, &grads))
}

#[test]
fn a_shared_prompt_gives_the_loss_and_gradients_of_the_whole_layout() {
    for dir in MODELS {
        let f = fixture(dir);
        let dec = &f.lm.decoder;
        let seqs = group(&f);
        let (vocab, ctx) = (dec.config().vocab, dec.max_context());
        let whole = TrainBatch::new(&seqs, vocab, ctx).unwrap();
        let shared = TrainBatch::sharing_prompts(&seqs, vocab, ctx).unwrap();
        assert_eq!(shared.shared.len(), 1, "{dir}: one shared prompt");
        assert_eq!(shared.shared[0].followers, [2, 3], "{dir}");
        assert_eq!(whole.len() - shared.len(), 2 * shared.shared[0].len, "{dir}: rows saved");
        assert_eq!(shared.completion_tokens, whole.completion_tokens);
        for (grad_first, checkpointing) in [(true, false), (false, false), (false, true)] {
            let what = format!(
                "{dir} (token gradients {}, checkpointing {checkpointing})",
                if grad_first { "before the forward" } else { "after it" }
            );
            let (nll_w, grads_w) = run(&f, &whole, grad_first, checkpointing);
            let (nll_s, grads_s) = run(&f, &shared, grad_first, checkpointing);
            close_within(&format!("{what}: nll"), &nll_s, &nll_w, 1e-5);
            for ((name, w), (_, s)) in grads_w.iter().zip(&grads_s) {
                close_within(&format!("{what}: grad.{name}"), s, w, 1e-5);
            }
        }
    }
}

/// A batch whose shared prompt names a leader without the prompt's rows, or a follower whose rows do not
/// start after it, is refused before anything runs, naming the prefix.
#[test]
fn a_malformed_shared_prompt_is_an_error() {
    let f = fixture(MODELS[0]);
    let dec = &f.lm.decoder;
    let seqs = group(&f);
    let (vocab, ctx) = (dec.config().vocab, dec.max_context());
    let good = TrainBatch::sharing_prompts(&seqs, vocab, ctx).unwrap();
    let shape = TrainShape { tokens: good.len(), slots: good.slots, span: good.span };
    let mut acts = dec.train_activations(shape, &f.adapter, false).unwrap();
    let mut wrong_leader = good.clone();
    wrong_leader.shared[0].leader = 2;
    wrong_leader.shared[0].followers = vec![3];
    let err = dec.train_forward(&mut acts, &wrong_leader, &f.adapter, None).unwrap_err().to_string();
    assert!(err.contains("shared prompt 0") && err.contains("leader 2"), "{err}");
    let mut wrong_follower = good.clone();
    wrong_follower.shared[0].followers = vec![1];
    let err = dec.train_forward(&mut acts, &wrong_follower, &f.adapter, None).unwrap_err().to_string();
    assert!(err.contains("shared prompt 0") && err.contains("follower 1"), "{err}");
}
