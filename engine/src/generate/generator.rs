//! Batched generation: prompts of different lengths prefilled together, then decoded one token per
//! sequence per step over a shared KV cache, with stop tokens, stop strings and streaming.

use rand::SeedableRng;

use crate::generate::sampler::{SamplingConfig, sample};
use crate::gpu::cpu_ref::TokenInfo;
use crate::lora::Adapted;
use crate::model::KvCache;
use crate::text::Tokenizer;
use crate::{Error, Result};

/// Most tokens run through the model in one forward pass (bounds the attention scratch memory).
pub const PREFILL_CHUNK: usize = 256;

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum FinishReason {
    /// An end-of-sequence or stop token (the last of `tokens`, not part of `text`).
    StopToken,
    /// A stop string appeared (the text is cut before it).
    StopString,
    /// `max_new_tokens` reached, or the context is full.
    Length,
}

/// One finished completion.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Completion {
    pub tokens: Vec<u32>,
    /// Log-probability of each token under the model's unmodified distribution.
    pub logprobs: Vec<f32>,
    pub text: String,
    pub finish: FinishReason,
}

/// A streamed piece of text of sequence `seq`.
pub struct Chunk<'a> {
    pub seq: usize,
    pub token: u32,
    pub text: &'a str,
}

struct Active {
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    prompt_len: usize,
    emitted: usize,
    done: Option<FinishReason>,
    text: String,
}

/// Runs `tokens` with `info` through the model in chunks; returns the logits rows for `want`
/// (indices into `tokens`), in that order. `model` is a `&Decoder` (the base) or a decoder with its
/// adapter switched on or off ([`Adapted`]).
pub fn forward_chunked<'m>(
    model: impl Into<Adapted<'m>>,
    cache: &KvCache,
    tokens: &[u32],
    info: &[TokenInfo],
    want: &[usize],
) -> Result<Vec<Vec<f32>>> {
    let model = model.into();
    if tokens.len() != info.len() {
        return Err(Error::Input(format!("{} tokens but {} positions", tokens.len(), info.len())));
    }
    if let Some(&w) = want.iter().find(|&&w| w >= tokens.len()) {
        return Err(Error::Input(format!("wanted row {w} of {} tokens", tokens.len())));
    }
    let vocab = model.config().vocab;
    let mut rows: Vec<Option<Vec<f32>>> = vec![None; want.len()];
    for_each_chunk(model, cache, tokens, info, want, |picked, logits| {
        let flat = model.read_logits(logits)?;
        for (j, &k) in picked.iter().enumerate() {
            rows[k] = Some(flat[j * vocab..(j + 1) * vocab].to_vec());
        }
        Ok(())
    })?;
    Ok(rows.into_iter().map(|r| r.expect("every wanted row lies in some chunk")).collect())
}

/// Runs `tokens` through the model in chunks that fit the attention scratch and one buffer of logits;
/// for every chunk holding rows of `want` (token indices), calls `on_rows(picked, logits)` where
/// `picked` are the indices into `want` whose logits are the rows of `logits`, in order.
fn for_each_chunk(
    model: Adapted<'_>,
    cache: &KvCache,
    tokens: &[u32],
    info: &[TokenInfo],
    want: &[usize],
    mut on_rows: impl FnMut(&[usize], &crate::gpu::Tensor) -> Result<()>,
) -> Result<()> {
    let chunk = PREFILL_CHUNK.min(model.max_logit_rows());
    for start in (0..tokens.len()).step_by(chunk) {
        let end = (start + chunk).min(tokens.len());
        let picked: Vec<usize> = (0..want.len()).filter(|&k| (start..end).contains(&want[k])).collect();
        let out_rows: Vec<u32> = picked.iter().map(|&k| (want[k] - start) as u32).collect();
        let logits = model.forward(cache, &tokens[start..end], &info[start..end], &out_rows)?;
        if !picked.is_empty() {
            on_rows(&picked, &logits)?;
        }
    }
    Ok(())
}

/// Generates a completion for each prompt (token ids). `on_chunk` receives text as it is produced.
/// `model` is a `&Decoder` (the base) or `decoder.with_adapter(&adapter)` ([`Adapted`]).
pub fn generate<'m>(
    model: impl Into<Adapted<'m>>,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
    mut on_chunk: impl FnMut(Chunk<'_>),
) -> Result<Vec<Completion>> {
    let model = model.into();
    cfg.validate()?;
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(Error::Input(format!("prompt {i} is empty: give at least one token")));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest >= model.max_context() {
        return Err(Error::Input(format!(
            "a prompt of {longest} tokens does not fit the model's context of {} tokens",
            model.max_context()
        )));
    }
    let ctx = (longest + cfg.max_new_tokens).min(model.max_context());
    let cache = model.new_cache(prompts.len(), ctx)?;
    let mut stops: Vec<u32> = tokenizer.eos_ids().to_vec();
    stops.extend(&cfg.stop_tokens);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);

    // Prefill every distinct prompt once, in one flat batch (a GRPO group repeats its prompt): the
    // first slot holding a prompt computes it, the others get its keys and values copied and share the
    // logits of its last position.
    let mut tokens = Vec::new();
    let mut info = Vec::new();
    let mut last = Vec::new();
    let mut leader_of: std::collections::HashMap<&[u32], usize> = std::collections::HashMap::new();
    let mut row_of = Vec::with_capacity(prompts.len());
    let mut followers: Vec<(usize, Vec<usize>)> = Vec::new();
    for (slot, p) in prompts.iter().enumerate() {
        if let Some(&leader) = leader_of.get(p.as_slice()) {
            row_of.push(row_of[leader]);
            followers.iter_mut().find(|(l, _)| *l == leader).expect("leader listed").1.push(slot);
            continue;
        }
        leader_of.insert(p, slot);
        followers.push((slot, Vec::new()));
        for (pos, &t) in p.iter().enumerate() {
            tokens.push(t);
            info.push(TokenInfo { pos: pos as u32, slot: slot as u32, n_keys: pos as u32 + 1 });
        }
        row_of.push(last.len());
        last.push(tokens.len() - 1);
    }
    let leader_logits = forward_chunked(model, &cache, &tokens, &info, &last)?;
    for (leader, to) in followers.iter().filter(|(_, to)| !to.is_empty()) {
        model.copy_cache_prefix(&cache, *leader, to, prompts[*leader].len())?;
    }
    let mut logits: Vec<Vec<f32>> = row_of.iter().map(|&r| leader_logits[r].clone()).collect();
    let mut seqs: Vec<Active> = prompts
        .iter()
        .map(|p| Active {
            tokens: p.clone(),
            logprobs: Vec::new(),
            prompt_len: p.len(),
            emitted: 0,
            done: None,
            text: String::new(),
        })
        .collect();

    loop {
        // Sample one token for every live sequence, in slot order.
        let live: Vec<usize> = (0..seqs.len()).filter(|&i| seqs[i].done.is_none()).collect();
        for (row, &i) in live.iter().enumerate() {
            let (tok, lp) = sample(&logits[row], cfg, &mut rng);
            let s = &mut seqs[i];
            s.tokens.push(tok);
            s.logprobs.push(lp);
            if stops.contains(&tok) {
                // Kept in the tokens (as TRL does: the policy learns to stop), left out of the text.
                s.done = Some(FinishReason::StopToken);
            } else {
                s.text = tokenizer.decode(&s.tokens[s.prompt_len..], true)?;
                let generated = s.tokens.len() - s.prompt_len;
                if let Some(cut) = cfg.stop_strings.iter().filter_map(|st| s.text.find(st.as_str())).min() {
                    s.text.truncate(cut);
                    s.done = Some(FinishReason::StopString);
                } else if generated >= cfg.max_new_tokens || s.tokens.len() >= ctx {
                    s.done = Some(FinishReason::Length);
                }
            }
            // While the sequence runs, stream whole characters only (hold back a trailing partial UTF-8
            // sequence) and hold back an ending that may grow into a stop string; once it is done,
            // flush the rest, so the streamed pieces always add up to the final text.
            let ready = match s.done {
                Some(_) => s.text.len(),
                None => {
                    let whole = s.text.trim_end_matches('\u{FFFD}').len();
                    whole - stop_prefix_len(&s.text[..whole], &cfg.stop_strings)
                }
            };
            if ready > s.emitted {
                on_chunk(Chunk { seq: i, token: tok, text: &s.text[s.emitted..ready] });
                s.emitted = ready;
            }
        }
        let live: Vec<usize> = (0..seqs.len()).filter(|&i| seqs[i].done.is_none()).collect();
        if live.is_empty() {
            break;
        }
        let step_tokens: Vec<u32> =
            live.iter().map(|&i| *seqs[i].tokens.last().expect("non-empty")).collect();
        let step_info: Vec<TokenInfo> = live
            .iter()
            .map(|&i| {
                let pos = seqs[i].tokens.len() as u32 - 1;
                TokenInfo { pos, slot: i as u32, n_keys: pos + 1 }
            })
            .collect();
        let rows: Vec<u32> = (0..live.len() as u32).collect();
        let out = model.forward(&cache, &step_tokens, &step_info, &rows)?;
        let flat = model.read_logits(&out)?;
        let vocab = model.config().vocab;
        logits = flat.chunks(vocab).map(<[f32]>::to_vec).collect();
    }

    Ok(seqs
        .into_iter()
        .map(|s| Completion {
            tokens: s.tokens[s.prompt_len..].to_vec(),
            logprobs: s.logprobs,
            text: s.text,
            finish: s.done.unwrap_or(FinishReason::Length),
        })
        .collect())
}

/// Length in bytes of the longest ending of `text` that is a proper beginning of one of `stops`.
fn stop_prefix_len(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|st| st.char_indices().skip(1).map(|(i, _)| &st[..i]))
        .filter(|prefix| text.ends_with(prefix))
        .map(str::len)
        .max()
        .unwrap_or(0)
}

/// Default KV-cache budget of one teacher-forcing pass, in token slots (see [`completion_logprobs_packed`]).
pub const LOGPROB_PACK_TOKENS: usize = 8192;

/// Teacher forcing: the log-probability of every completion token given its prompt and the
/// completion tokens before it, for a batch of (prompt, completion) pairs. Pairs are packed into as
/// few forward passes as [`LOGPROB_PACK_TOKENS`] allows; only the log-probs are read back, the
/// softmax runs on the GPU. `model` is a `&Decoder` (the base) or a decoder with its adapter switched
/// on or off ([`Adapted`]; off is the reference policy).
pub fn completion_logprobs<'m>(
    model: impl Into<Adapted<'m>>,
    pairs: &[(Vec<u32>, Vec<u32>)],
) -> Result<Vec<Vec<f32>>> {
    completion_logprobs_packed(model, pairs, LOGPROB_PACK_TOKENS)
}

/// [`completion_logprobs`] with an explicit KV-cache budget: a pass over n pairs whose longest is L
/// tokens holds n·L token slots, at most `pack_tokens` (a single pair longer than that gets a pass of
/// its own). A GRPO group (one prompt, several completions) is typically one pack, and its prompt is
/// computed once.
pub fn completion_logprobs_packed<'m>(
    model: impl Into<Adapted<'m>>,
    pairs: &[(Vec<u32>, Vec<u32>)],
    pack_tokens: usize,
) -> Result<Vec<Vec<f32>>> {
    let model = model.into();
    for (i, (prompt, completion)) in pairs.iter().enumerate() {
        if prompt.is_empty() {
            return Err(Error::Input(format!("pair {i}: empty prompt")));
        }
        let len = prompt.len() + completion.len();
        if len > model.max_context() {
            return Err(Error::Input(format!(
                "pair {i}: {len} tokens exceed the model's context of {}",
                model.max_context()
            )));
        }
    }
    let mut out = vec![Vec::new(); pairs.len()];
    let todo: Vec<usize> = (0..pairs.len()).filter(|&i| !pairs[i].1.is_empty()).collect();
    // At most one chunk's worth of pairs per pack: phase 1 may want every pair's row in one chunk.
    let most = PREFILL_CHUNK.min(model.max_logit_rows());
    for pack in packs(&todo, |i| pairs[i].0.len() + pairs[i].1.len(), pack_tokens, most) {
        let ctx = pack.iter().map(|&i| pairs[i].0.len() + pairs[i].1.len()).max().unwrap_or(1);
        let cache = model.new_cache(pack.len(), ctx)?;
        // A prompt shared by several pairs of the pack (a GRPO group) runs once, in the slot of its
        // first pair; its keys and values are then copied into the other pairs' slots.
        let leader: Vec<usize> = (0..pack.len())
            .map(|s| (0..s).find(|&f| pairs[pack[f]].0 == pairs[pack[s]].0).unwrap_or(s))
            .collect();

        // Phase 1: the distinct prompts. The last prompt token's row gives every pair of that prompt
        // the log-prob of its first completion token.
        let mut tokens = Vec::new();
        let mut info = Vec::new();
        let mut last_row = vec![0; pack.len()];
        for (slot, &i) in pack.iter().enumerate() {
            if leader[slot] != slot {
                continue;
            }
            for (pos, &t) in pairs[i].0.iter().enumerate() {
                tokens.push(t);
                info.push(TokenInfo { pos: pos as u32, slot: slot as u32, n_keys: pos as u32 + 1 });
            }
            last_row[slot] = tokens.len() - 1;
        }
        let want: Vec<usize> = (0..pack.len()).map(|slot| last_row[leader[slot]]).collect();
        let first: Vec<u32> = pack.iter().map(|&i| pairs[i].1[0]).collect();
        score_rows(model, &cache, (&tokens, &info), (&want, &first, &pack), &mut out)?;
        for slot in 0..pack.len() {
            let followers: Vec<usize> = (slot + 1..pack.len()).filter(|&s| leader[s] == slot).collect();
            if !followers.is_empty() {
                model.copy_cache_prefix(&cache, slot, &followers, pairs[pack[slot]].0.len())?;
            }
        }

        // Phase 2: every completion but its last token, each row giving the next token's log-prob.
        let mut tokens = Vec::new();
        let mut info = Vec::new();
        let mut want = Vec::new();
        let mut owner = Vec::new();
        let mut targets = Vec::new();
        for (slot, &i) in pack.iter().enumerate() {
            let (prompt, completion) = &pairs[i];
            for (j, &t) in completion[..completion.len() - 1].iter().enumerate() {
                let pos = (prompt.len() + j) as u32;
                want.push(tokens.len());
                owner.push(i);
                targets.push(completion[j + 1]);
                tokens.push(t);
                info.push(TokenInfo { pos, slot: slot as u32, n_keys: pos + 1 });
            }
        }
        score_rows(model, &cache, (&tokens, &info), (&want, &targets, &owner), &mut out)?;
    }
    Ok(out)
}

/// Runs `tokens` and appends to `out[owner[k]]` the log-prob of `targets[k]` at row `want[k]`.
fn score_rows(
    model: Adapted<'_>,
    cache: &KvCache,
    (tokens, info): (&[u32], &[TokenInfo]),
    (want, targets, owner): (&[usize], &[u32], &[usize]),
    out: &mut [Vec<f32>],
) -> Result<()> {
    for_each_chunk(model, cache, tokens, info, want, |picked, logits| {
        let chosen: Vec<u32> = picked.iter().map(|&k| targets[k]).collect();
        for (&k, lp) in picked.iter().zip(model.logprobs_of(logits, &chosen)?) {
            out[owner[k]].push(lp);
        }
        Ok(())
    })
}

/// Splits `items` (in order) into runs of at most `most` items whose count × longest length stays
/// within `budget`; an item longer than the budget runs alone.
fn packs(items: &[usize], len: impl Fn(usize) -> usize, budget: usize, most: usize) -> Vec<Vec<usize>> {
    let mut packs: Vec<Vec<usize>> = Vec::new();
    let mut longest = 0;
    for &i in items {
        let l = len(i);
        match packs.last_mut() {
            Some(p) if p.len() < most && (p.len() + 1) * longest.max(l) <= budget => {
                p.push(i);
                longest = longest.max(l);
            }
            _ => {
                packs.push(vec![i]);
                longest = l;
            }
        }
    }
    packs
}

#[cfg(test)]
mod tests {
    use super::{packs, stop_prefix_len};

    #[test]
    fn endings_that_may_grow_into_a_stop_string_are_held_back() {
        let stops = vec!["\n\nUser:".to_string(), "ßend".to_string()];
        assert_eq!(stop_prefix_len("Hello\n", &stops), 1);
        assert_eq!(stop_prefix_len("Hello\n\nUse", &stops), 5);
        assert_eq!(stop_prefix_len("Hello", &stops), 0);
        assert_eq!(stop_prefix_len("Straß", &stops), "ß".len());
        assert_eq!(stop_prefix_len("Straße", &stops), "ße".len());
        assert_eq!(stop_prefix_len("Straßx", &stops), 0);
        assert_eq!(stop_prefix_len("anything", &[]), 0);
    }

    #[test]
    fn packs_respect_the_budget_and_keep_order() {
        let lens = [3, 5, 2, 9, 4, 20, 1];
        let got = packs(&(0..7).collect::<Vec<_>>(), |i| lens[i], 12, 100);
        // 3,5 → 2·5 = 10; +2 → 3·5 = 15 > 12: new pack. 2,9 → 18 > 12: alone each. 20 alone (over).
        assert_eq!(got, vec![vec![0, 1], vec![2], vec![3], vec![4], vec![5], vec![6]]);
        let got = packs(&[0, 1, 2], |_| 4, 12, 100);
        assert_eq!(got, vec![vec![0, 1, 2]]);
        let got = packs(&[0, 1, 2], |_| 4, 12, 2);
        assert_eq!(got, vec![vec![0, 1], vec![2]], "at most `most` items per pack");
        assert!(packs(&[], |_| 1, 4, 100).is_empty());
    }
}
