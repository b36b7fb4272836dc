//! Which completion tokens the GRPO loss counts (TRL's loss mask), and the map between the loss's flat
//! per-completion-token arrays and the rows of a [`TrainBatch`] (the training walk's `nll` and `token_grad`).

use crate::gpu::kernels::XENT_IGNORE;
use crate::train::TrainBatch;
use crate::{Error, Result};

/// TRL's loss mask for one completion (as generated, EOS included): true up to **and including** the first
/// token in `eos_ids`, false after it (`_generate_single_turn`). With `mask_truncated_completions`, a
/// completion that is truncated — its kept tokens do not end in an EOS or in `pad_id` (TRL's test), i.e. it
/// hit `max_completion_length` without stopping — is masked whole (`_generate_and_score_completions`).
pub fn completion_mask(
    tokens: &[u32],
    eos_ids: &[u32],
    pad_id: Option<u32>,
    mask_truncated_completions: bool,
) -> Vec<bool> {
    let kept = tokens.iter().position(|t| eos_ids.contains(t)).map_or(tokens.len(), |i| i + 1);
    let truncated = match tokens[..kept].last() {
        Some(last) => !eos_ids.contains(last) && Some(*last) != pad_id,
        None => false,
    };
    let masked_whole = mask_truncated_completions && truncated;
    (0..tokens.len()).map(|i| i < kept && !masked_whole).collect()
}

/// Number of completion tokens (target rows) of each sequence of `batch`: the `lengths` of
/// [`super::LossInputs`] when the loss's arrays come from this batch.
pub fn completion_lengths(batch: &TrainBatch) -> Vec<usize> {
    batch
        .starts
        .windows(2)
        .map(|w| batch.targets[w[0]..w[1]].iter().filter(|&&t| t != XENT_IGNORE).count())
        .collect()
}

/// The log-prob of every completion token of `batch`, in order (sequence by sequence), from the training
/// walk's per-row `nll` (T): `logp = −nll` on the rows with a target.
pub fn completion_logp(batch: &TrainBatch, nll: &[f32]) -> Result<Vec<f32>> {
    check_rows("nll", batch, nll.len())?;
    Ok(batch.targets.iter().zip(nll).filter(|(t, _)| **t != XENT_IGNORE).map(|(_, &l)| -l).collect())
}

/// The training walk's upstream gradient (T rows, `d loss / d nll`) from the loss's `d loss / d logp` per
/// completion token: `−dlogp` on the rows with a target, in order, and 0 on the others.
pub fn nll_grad(batch: &TrainBatch, dlogp: &[f32]) -> Result<Vec<f32>> {
    if dlogp.len() != batch.completion_tokens {
        return Err(Error::Input(format!(
            "grpo: {} per-token gradients for a batch of {} completion tokens",
            dlogp.len(),
            batch.completion_tokens
        )));
    }
    let mut next = dlogp.iter();
    Ok(batch
        .targets
        .iter()
        .map(|&t| if t == XENT_IGNORE { 0.0 } else { -*next.next().expect("counted above") })
        .collect())
}

fn check_rows(what: &str, batch: &TrainBatch, len: usize) -> Result<()> {
    if len != batch.len() {
        return Err(Error::Input(format!("grpo: {what} has {len} rows, the training batch {}", batch.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::TrainSequence;

    #[test]
    fn the_mask_keeps_the_first_eos_and_drops_what_follows() {
        let eos = [2, 7];
        assert_eq!(completion_mask(&[5, 6, 2, 9, 2], &eos, None, false), [true, true, true, false, false]);
        assert_eq!(completion_mask(&[7], &eos, None, true), [true]);
        assert_eq!(
            completion_mask(&[5, 6, 8], &eos, None, false),
            [true; 3],
            "truncated rows count by default"
        );
        assert_eq!(completion_mask(&[5, 6, 8], &eos, None, true), [false; 3]);
        assert_eq!(completion_mask(&[5, 6, 0], &eos, Some(0), true), [true; 3], "ends in pad: not truncated");
        assert!(completion_mask(&[], &eos, None, true).is_empty());
    }

    #[test]
    fn batch_rows_map_to_completion_tokens_and_back() {
        let seqs = [
            TrainSequence { tokens: vec![5, 6, 7, 8], prompt_len: 2 },
            TrainSequence { tokens: vec![9, 10], prompt_len: 1 },
        ];
        let b = TrainBatch::new(&seqs, 100, 16).unwrap();
        assert_eq!(completion_lengths(&b), vec![2, 1]);
        let nll = [9.0, 0.5, 1.5, 9.0, 2.5, 9.0];
        assert_eq!(completion_logp(&b, &nll).unwrap(), vec![-0.5, -1.5, -2.5]);
        assert_eq!(nll_grad(&b, &[0.25, -0.5, 1.0]).unwrap(), vec![0.0, -0.25, 0.5, 0.0, -1.0, 0.0]);
        assert!(nll_grad(&b, &[0.0; 4]).unwrap_err().to_string().contains("4 per-token gradients"));
        assert!(completion_logp(&b, &[0.0; 5]).unwrap_err().to_string().contains("nll has 5 rows"));
    }
}
