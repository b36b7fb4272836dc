//! Per-kernel timing for `babelrl bench --profile` (`BABELRL_PROFILE=1`): every recorded step of a
//! batch is submitted and waited for on its own, and its wall time is added to its kernel's total.
//! The figures include one submit and one wait per step (on lavapipe ~0.1 ms), so they show where a
//! forward pass spends its time, not how fast the unprofiled, batched pass runs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Totals per kernel (pipeline label, "copy" or "clear").
#[derive(Default)]
pub(crate) struct DispatchProfile {
    totals: Mutex<HashMap<String, (u64, Duration)>>,
}

/// One kernel's share of the profiled work.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    /// `shader.wgsl::entry_point`, `copy` or `clear`.
    pub kernel: String,
    pub calls: u64,
    pub total: Duration,
}

impl DispatchProfile {
    pub(crate) fn record(&self, kernel: &str, elapsed: Duration) {
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        let entry = totals.entry(kernel.to_string()).or_default();
        entry.0 += 1;
        entry.1 += elapsed;
    }

    /// The totals so far, longest first, and a fresh start.
    pub(crate) fn take(&self) -> Vec<KernelTime> {
        let totals = std::mem::take(&mut *self.totals.lock().unwrap_or_else(|p| p.into_inner()));
        let mut out: Vec<KernelTime> =
            totals.into_iter().map(|(kernel, (calls, total))| KernelTime { kernel, calls, total }).collect();
        out.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.kernel.cmp(&b.kernel)));
        out
    }
}
