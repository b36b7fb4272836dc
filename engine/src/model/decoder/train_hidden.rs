//! The decoder's training pass for a scalar head on the final-normed hidden states (a reward model's
//! `score = Linear(hidden, 1)`): the forward stops at `acts.normed` and returns the rows the head reads;
//! the backward starts from the head's gradient at those rows only (zero on every other row).

use crate::lora::Adapter;
use crate::model::Decoder;
use crate::train::activations::{Activations, Gradients};
use crate::train::batch::TrainBatch;
use crate::train::lora_grads::LoraGrads;
use crate::{Error, Result};

use super::train::Head;

impl Decoder {
    /// The training forward of `batch` with `adapter` on, stopped at the final norm: fills `acts` and
    /// returns the final-normed hidden states of the flat rows `rows` (R, hidden), read back. The LM
    /// head is not used (a headless decoder trains here).
    pub fn train_forward_hidden(
        &self,
        acts: &mut Activations,
        batch: &TrainBatch,
        adapter: &Adapter,
        rows: &[u32],
    ) -> Result<Vec<f32>> {
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= batch.len()) {
            return Err(Error::Input(format!("training forward: row {bad} of a {}-row batch", batch.len())));
        }
        self.forward_walk(acts, batch, Some(adapter), Head::None)?;
        let d = self.cfg.hidden;
        let g = &self.gpu;
        let gathered = g.zeros("act.head_rows", &[rows.len().max(1), d])?;
        let mut b = g.batch();
        for (i, &r) in rows.iter().enumerate() {
            b.copy(
                &acts.normed.buffer,
                (r as usize * d * 4) as u64,
                &gathered.buffer,
                (i * d * 4) as u64,
                (d * 4) as u64,
            );
        }
        b.submit()?;
        g.read_words::<f32>(&gathered.buffer, 0, rows.len() * d)
    }

    /// The backward of the last [`Decoder::train_forward_hidden`] on `acts`, from `drows` (R, hidden), the
    /// gradient of the hidden states of `rows` (every other row's is zero): adds every LoRA gradient
    /// into `grads`. Rows may repeat (their gradients add).
    pub fn train_backward_hidden(
        &self,
        acts: &Activations,
        scratch: &Gradients,
        adapter: &Adapter,
        grads: &LoraGrads,
        rows: &[u32],
        drows: &[f32],
    ) -> Result<()> {
        let Some(last) = acts.last.filter(|l| l.hidden_only) else {
            return Err(Error::Input(
                "training backward: no hidden-state forward (train_forward_hidden) to go back through".into(),
            ));
        };
        let (t, d) = (last.tokens, self.cfg.hidden);
        if drows.len() != rows.len() * d {
            return Err(Error::Input(format!(
                "training backward: {} hidden-state gradients for {} rows of {d}",
                drows.len(),
                rows.len()
            )));
        }
        let mut dnormed = vec![0.0f32; t * d];
        for (&r, dr) in rows.iter().zip(drows.chunks_exact(d)) {
            let r = r as usize;
            if r >= t {
                return Err(Error::Input(format!("training backward: row {r} of a {t}-row pass")));
            }
            for (o, &v) in dnormed[r * d..(r + 1) * d].iter_mut().zip(dr) {
                *o += v;
            }
        }
        self.gpu.write_f32(&acts.dnormed, &dnormed);
        let p = self.attn_params(t, &acts.cache, last.span);
        let mut b = self.gpu.batch();
        self.body_backward(&mut b, &p, acts, scratch, adapter, grads, last)?;
        b.submit()
    }
}
