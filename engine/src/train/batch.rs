//! A flat training batch: sequences of different lengths laid end to end, each in its own cache slot,
//! with the target of every position (the next token where it belongs to the completion, else ignored).

use crate::gpu::cpu_ref::TokenInfo;
use crate::gpu::kernels::XENT_IGNORE;
use crate::{Error, Result};

/// One training sequence: `tokens[..prompt_len]` is the prompt (never a target), the rest the
/// completion, each completion token predicted from the position before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainSequence {
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
}

impl TrainSequence {
    /// Number of targets the sequence contributes (its completion tokens, the first token excepted).
    pub fn completion_len(&self) -> usize {
        self.tokens.len().saturating_sub(self.prompt_len.max(1))
    }
}

/// The host side of one training pass.
#[derive(Debug, Clone)]
pub struct TrainBatch {
    /// Every sequence's tokens, concatenated (T).
    pub tokens: Vec<u32>,
    /// Position, slot (= sequence index) and key count of each token (T).
    pub info: Vec<TokenInfo>,
    /// The id each row predicts, or [`XENT_IGNORE`] (T).
    pub targets: Vec<u32>,
    /// Start of each sequence in the flat batch, and one past the last token (S + 1).
    pub starts: Vec<usize>,
    /// Number of sequences (cache slots).
    pub slots: usize,
    /// Longest sequence (cache positions per slot, and attention's score row length).
    pub span: usize,
    /// Rows with a target.
    pub completion_tokens: usize,
    /// Seed of this pass's LoRA dropout masks (each layer and projection derives its own from it);
    /// set a new one per micro-batch (see [`crate::gpu::kernels::dropout_seed`]).
    pub dropout_seed: u64,
    /// The sampling temperature the log-probs are taken at: each row's logits are divided by it before
    /// the log-softmax, as TRL scores GRPO completions (1 for SFT).
    pub temperature: f32,
}

impl TrainBatch {
    /// Lays out `seqs` for a model with `vocab` ids and room for `max_context` positions. Errors name
    /// the sequence: an empty batch, a sequence without completion, one too long, an id outside the
    /// vocabulary.
    pub fn new(seqs: &[TrainSequence], vocab: usize, max_context: usize) -> Result<TrainBatch> {
        if seqs.is_empty() {
            return Err(Error::Input("training batch: no sequences".into()));
        }
        let total: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let mut b = TrainBatch {
            tokens: Vec::with_capacity(total),
            info: Vec::with_capacity(total),
            targets: Vec::with_capacity(total),
            starts: Vec::with_capacity(seqs.len() + 1),
            slots: seqs.len(),
            span: 0,
            completion_tokens: 0,
            dropout_seed: 0,
            temperature: 1.0,
        };
        for (s, seq) in seqs.iter().enumerate() {
            let n = seq.tokens.len();
            if seq.completion_len() == 0 {
                return Err(Error::Input(format!(
                    "training sequence {s}: {n} tokens with a prompt of {}: no completion token to learn",
                    seq.prompt_len
                )));
            }
            if n > max_context {
                return Err(Error::Input(format!(
                    "training sequence {s}: {n} tokens; the model's context holds {max_context}"
                )));
            }
            if let Some(&bad) = seq.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::Input(format!(
                    "training sequence {s}: token id {bad} is outside the vocabulary of {vocab}"
                )));
            }
            b.starts.push(b.tokens.len());
            for (pos, &tok) in seq.tokens.iter().enumerate() {
                b.tokens.push(tok);
                b.info.push(TokenInfo { pos: pos as u32, slot: s as u32, n_keys: pos as u32 + 1 });
                let next = pos + 1;
                let target = if next < n && next >= seq.prompt_len { seq.tokens[next] } else { XENT_IGNORE };
                b.targets.push(target);
            }
            b.span = b.span.max(n);
            b.completion_tokens += seq.completion_len();
        }
        b.starts.push(b.tokens.len());
        Ok(b)
    }

    /// Rows in the pass (T).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the batch has no rows (never, for a batch made by [`TrainBatch::new`]).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The upstream gradient of a mean cross-entropy over `denominator` target tokens (all the
    /// completion tokens of an optimizer step, summed over its micro-batches): `1 / denominator` on
    /// each row with a target, 0 elsewhere.
    pub fn mean_grad(&self, denominator: usize) -> Vec<f32> {
        let w = 1.0 / denominator.max(1) as f32;
        self.targets.iter().map(|&t| if t == XENT_IGNORE { 0.0 } else { w }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_next_completion_token() {
        let seqs = [
            TrainSequence { tokens: vec![5, 6, 7, 8], prompt_len: 2 },
            TrainSequence { tokens: vec![9, 10], prompt_len: 1 },
        ];
        let b = TrainBatch::new(&seqs, 100, 16).unwrap();
        let i = XENT_IGNORE;
        assert_eq!(b.targets, vec![i, 7, 8, i, 10, i]);
        assert_eq!((b.completion_tokens, b.span, b.slots), (3, 4, 2));
        assert_eq!(b.starts, vec![0, 4, 6]);
        assert_eq!(b.info[4], TokenInfo { pos: 0, slot: 1, n_keys: 1 });
        assert_eq!(b.mean_grad(4), vec![0.0, 0.25, 0.25, 0.0, 0.25, 0.0]);
    }

    #[test]
    fn bad_sequences_are_named() {
        let err = |seqs: &[TrainSequence]| TrainBatch::new(seqs, 100, 8).unwrap_err().to_string();
        let ok = TrainSequence { tokens: vec![1, 2, 3], prompt_len: 1 };
        assert!(
            err(&[ok.clone(), TrainSequence { tokens: vec![1, 2], prompt_len: 2 }])
                .contains("sequence 1: 2 tokens with a prompt of 2: no completion")
        );
        assert!(err(&[TrainSequence { tokens: vec![1; 9], prompt_len: 1 }]).contains("context holds 8"));
        assert!(err(&[TrainSequence { tokens: vec![1, 200], prompt_len: 1 }]).contains("token id 200"));
        assert!(err(&[]).contains("no sequences"));
    }
}
