//! A flat training batch: sequences of different lengths laid end to end, each in its own cache slot,
//! with the target of every position (the next token where it belongs to the completion, else ignored).

use crate::gpu::cpu_ref::TokenInfo;
use crate::gpu::kernels::{MAX_PROMPT_FOLLOWERS, XENT_IGNORE};
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
    /// Prompts laid out once for several sequences ([`TrainBatch::sharing_prompts`]; empty from
    /// [`TrainBatch::new`]).
    pub shared: Vec<SharedPrefix>,
}

/// Positions `0 .. len` of a prompt several sequences of a batch begin with: their rows are in the
/// `leader`'s slot only, and each layer copies the leader's keys and values of them into the
/// `followers`' slots before attention (and adds the followers' key and value gradients of them back
/// into the leader's after its backward), so every follower's rows attend to them as to its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedPrefix {
    pub leader: usize,
    pub followers: Vec<usize>,
    pub len: usize,
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
            shared: Vec::new(),
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

    /// As [`TrainBatch::new`], with every prompt that several sequences begin with (a GRPO group's)
    /// laid out once: a sequence whose `prompt_len` and prompt tokens equal an earlier sequence's
    /// (the leader) keeps only its rows from position `prompt_len − 1` on (that row predicts its first
    /// completion token), and [`TrainBatch::shared`] names the positions `0 .. prompt_len − 1` the
    /// passes copy from the leader's slot. The loss is the same; the rows, the work, fewer.
    pub fn sharing_prompts(seqs: &[TrainSequence], vocab: usize, max_context: usize) -> Result<TrainBatch> {
        let mut b = TrainBatch::new(seqs, vocab, max_context)?;
        let mut shared: Vec<SharedPrefix> = Vec::new();
        let mut skip = vec![0usize; seqs.len()];
        for (s, seq) in seqs.iter().enumerate() {
            let len = seq.prompt_len.saturating_sub(1);
            if len == 0 {
                continue;
            }
            let same = |l: &SharedPrefix| {
                let leader = &seqs[l.leader];
                leader.prompt_len == seq.prompt_len
                    && leader.tokens[..seq.prompt_len] == seq.tokens[..seq.prompt_len]
            };
            // One launch sums at most MAX_PROMPT_FOLLOWERS followers: a larger group takes a new leader.
            match shared.iter_mut().find(|l| same(l) && l.followers.len() < MAX_PROMPT_FOLLOWERS) {
                Some(l) => {
                    l.followers.push(s);
                    skip[s] = len;
                }
                None => shared.push(SharedPrefix { leader: s, followers: Vec::new(), len }),
            }
        }
        shared.retain(|l| !l.followers.is_empty());
        if shared.is_empty() {
            return Ok(b);
        }
        let keep: Vec<bool> = (0..seqs.len())
            .flat_map(|s| (0..b.starts[s + 1] - b.starts[s]).map(move |i| (s, i)))
            .map(|(s, i)| i >= skip[s])
            .collect();
        let pick =
            |v: &[u32]| v.iter().zip(&keep).filter(|(_, k)| **k).map(|(x, _)| *x).collect::<Vec<u32>>();
        b.tokens = pick(&b.tokens);
        b.targets = pick(&b.targets);
        b.info = b.info.iter().zip(&keep).filter(|(_, k)| **k).map(|(i, _)| *i).collect();
        let mut start = 0;
        for s in 0..seqs.len() {
            let n = seqs[s].tokens.len() - skip[s];
            b.starts[s] = start;
            start += n;
        }
        b.starts[seqs.len()] = start;
        b.shared = shared;
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
    fn a_prompt_several_sequences_begin_with_is_laid_out_once() {
        let seqs = [
            TrainSequence { tokens: vec![1, 2, 3, 10, 11], prompt_len: 3 },
            TrainSequence { tokens: vec![1, 2, 4, 12], prompt_len: 3 },
            TrainSequence { tokens: vec![1, 2, 3, 13], prompt_len: 3 },
            TrainSequence { tokens: vec![1, 2, 3, 14, 15, 16], prompt_len: 3 },
        ];
        let whole = TrainBatch::new(&seqs, 100, 16).unwrap();
        let b = TrainBatch::sharing_prompts(&seqs, 100, 16).unwrap();
        // Sequences 2 and 3 share sequence 0's prompt [1, 2, 3] (1's differs): their positions 0 and 1
        // come from slot 0, their rows start at position 2 (the last prompt token, which predicts
        // their first completion token).
        assert_eq!(b.shared, [SharedPrefix { leader: 0, followers: vec![2, 3], len: 2 }]);
        assert_eq!(b.tokens, [1, 2, 3, 10, 11, 1, 2, 4, 12, 3, 13, 3, 14, 15, 16]);
        assert_eq!(b.starts, [0, 5, 9, 11, 15]);
        let slot_pos: Vec<(u32, u32, u32)> = b.info.iter().map(|i| (i.slot, i.pos, i.n_keys)).collect();
        assert_eq!(&slot_pos[9..], [(2, 2, 3), (2, 3, 4), (3, 2, 3), (3, 3, 4), (3, 4, 5), (3, 5, 6)]);
        // The same targets in the same order: the loss reads them alike.
        let targets =
            |b: &TrainBatch| b.targets.iter().copied().filter(|&t| t != XENT_IGNORE).collect::<Vec<_>>();
        assert_eq!(targets(&b), targets(&whole));
        assert_eq!((b.completion_tokens, b.slots, b.span), (whole.completion_tokens, 4, 6));
        // A one-token prompt shares nothing.
        let short = [
            TrainSequence { tokens: vec![1, 5], prompt_len: 1 },
            TrainSequence { tokens: vec![1, 6], prompt_len: 1 },
        ];
        assert!(TrainBatch::sharing_prompts(&short, 100, 16).unwrap().shared.is_empty());
    }

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
