//! Preference pairs ([`crate::train::pairs`]) tokenized for DPO as TRL 1.16's `DPOTrainer` does: the prompt,
//! `prompt + chosen` and `prompt + rejected` tokenized whole (text with the tokenizer's special tokens,
//! chat pairs as their template renders them), the completion starting where the tokenized prompt stops
//! being a common prefix of both; EOS appended to a text pair's completions that do not end with it.
//! A text pair without a prompt (TRL's implicit prompt) takes the tokens both sides share as its prompt.

use std::path::Path;

use super::DpoPair;
use crate::text::Tokenizer;
use crate::train::pairs::{PairTexts, read_pairs, render_pairs};
use crate::{Error, Result};

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// One pair's token ids; the error says what is wrong with it.
pub fn tokenize_pair(texts: &PairTexts, tok: &Tokenizer) -> std::result::Result<DpoPair, String> {
    let special = !texts.chat;
    let enc = |s: &str| tok.encode(s, special).map_err(|e| e.to_string());
    let pc = enc(&format!("{}{}", texts.prompt, texts.chosen))?;
    let pr = enc(&format!("{}{}", texts.prompt, texts.rejected))?;
    let prompt_len = if texts.prompt.is_empty() {
        common_prefix(&pc, &pr)
    } else {
        let p = enc(&texts.prompt)?;
        common_prefix(&p, &pc).min(common_prefix(&p, &pr))
    };
    if prompt_len == 0 {
        return Err(
            "no prompt tokens: the first completion token is predicted from the tokens before it; give \
                    the pair a `prompt`"
                .into(),
        );
    }
    let mut pair = DpoPair {
        prompt: pc[..prompt_len].to_vec(),
        chosen: pc[prompt_len..].to_vec(),
        rejected: pr[prompt_len..].to_vec(),
    };
    if !texts.chat
        && let Some(&eos) = tok.eos_ids().first()
    {
        for side in [&mut pair.chosen, &mut pair.rejected] {
            if side.last() != Some(&eos) {
                side.push(eos);
            }
        }
    }
    if pair.chosen == pair.rejected {
        return Err("chosen and rejected are the same tokens: the pair teaches nothing".into());
    }
    Ok(pair)
}

/// Reads and tokenizes the preference pairs of `path` (the formats of [`crate::train::pairs`]); errors name
/// the file and line.
pub fn load_dpo_pairs(path: &Path, tok: &Tokenizer) -> Result<Vec<DpoPair>> {
    let pairs = read_pairs(path)?;
    let texts = render_pairs(path, &pairs, tok)?;
    pairs
        .iter()
        .zip(&texts)
        .map(|(p, t)| tokenize_pair(t, tok).map_err(|m| Error::format(path, format!("{}: {m}", p.origin))))
        .collect()
}
