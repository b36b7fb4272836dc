//! What a plugin may do: resource limits per call and the capabilities it is granted, as declared in the
//! run configuration (`deny_unknown_fields`, so a misspelt limit is an error rather than silently ignored).

use serde::{Deserialize, Serialize};

/// Resource limits for one plugin, applied to every call into it (`configure`, `score`, `choose`, ...).
///
/// Every limit is per call: counters and the deadline start afresh at each call. Exceeding any of them
/// fails the call with an [`Error::Plugin`](crate::Error::Plugin) that says which limit was hit; the
/// plugin is then re-instantiated (and re-configured) before its next call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginLimits {
    /// Wall-clock time the plugin's own code may run per call, in milliseconds. Time spent inside host
    /// services (`embed`, `reward-model-score`) does not count. Enforced by epoch interruption: an epoch
    /// thread counts elapsed milliseconds (catching up after late wake-ups) and the host re-checks the
    /// plugin's own time whenever its epoch deadline passes. A busy call is stopped about a millisecond
    /// after its deadline on an idle machine; on a loaded one, as late as the scheduler runs the epoch
    /// thread and the plugin's thread: tested to be under 150 ms on a loaded 2-core machine
    /// (`docs/plugins-host.md`, "Deadlines").
    pub deadline_ms: u64,
    /// Cap on the plugin's memory in MiB: all linear memories and all tables (16 bytes per element) of
    /// all its instances together, for the life of an instance (it is not reset between calls). A
    /// growth past it fails inside the guest (most guests then abort, which is reported as exceeding
    /// the cap). A plugin may also create at most 100 instances, 100 tables and 16 memories.
    pub memory_mib: u64,
    /// Fuel per call (about one unit per WebAssembly instruction), for runs that must stop at the same
    /// point on every machine. `None` (the default) disables fuel metering, which is faster.
    pub fuel: Option<u64>,
    /// Calls to host functions (`embed`, `reward-model-score`, `log`) per call into the plugin.
    pub max_host_calls: u32,
    /// Texts per call sent to host services: all `embed` texts plus all `reward-model-score` pairs.
    pub max_embed_texts: u32,
    /// Size of what one call returns (scores at 8 bytes each, strings, router state, error messages).
    pub max_output_bytes: u64,
    /// Bytes of stdout, stderr and `log` messages kept per call. Past it, each stream still keeps its
    /// last 4 KiB (so a panic message after a flood reaches the error); the rest is dropped and counted.
    pub max_log_bytes: u64,
    /// Cap on the size of the component file, in MiB, checked before it is read (a Rust plugin is
    /// about 0.2 MiB, a componentize-py one about 18 MiB). Compiling is also bounded by structural limits
    /// checked before compiling (see docs/plugins-host.md).
    pub max_component_mib: u64,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            deadline_ms: 1_000,
            memory_mib: 128,
            fuel: None,
            max_host_calls: 1_000,
            max_embed_texts: 4_096,
            max_output_bytes: 1 << 20,
            max_log_bytes: 64 << 10,
            max_component_mib: 64,
        }
    }
}

impl PluginLimits {
    /// Refuses limits that cannot work (zero deadline or memory, absurd sizes), naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.deadline_ms == 0 {
            return Err("limits.deadline_ms must be at least 1".into());
        }
        if self.deadline_ms > 24 * 3600 * 1000 {
            return Err(format!("limits.deadline_ms = {} is more than a day", self.deadline_ms));
        }
        if self.memory_mib == 0 || self.memory_mib > 65_536 {
            return Err(format!("limits.memory_mib = {} must be between 1 and 65536", self.memory_mib));
        }
        if self.max_component_mib == 0 || self.max_component_mib > 1024 {
            return Err(format!(
                "limits.max_component_mib = {} must be between 1 and 1024",
                self.max_component_mib
            ));
        }
        if self.fuel == Some(0) {
            return Err("limits.fuel must be at least 1 (leave it out to disable fuel)".into());
        }
        Ok(())
    }

    /// The cap on component files in bytes.
    pub fn max_component_bytes(&self) -> u64 {
        self.max_component_mib << 20
    }

    /// The memory cap in bytes.
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mib << 20).unwrap_or(usize::MAX)
    }
}

/// Capabilities granted to a plugin. The default grants nothing: no files, no network, no environment,
/// a clock frozen at the Unix epoch and deterministic "randomness". Files and network cannot be granted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capabilities {
    /// Forward the plugin's stdout and stderr to the engine's log (capped by `max_log_bytes`). Without it
    /// they are still captured (stderr is quoted in trap messages) but not logged.
    pub stdout_log: bool,
    /// The host's real wall and monotonic clocks. Without it both clocks read 0 (the Unix epoch) forever.
    pub clock: bool,
    /// Real randomness for `wasi:random`. Without it every random byte is 0 and the insecure seed is 0,
    /// so runs are reproducible (a Rust guest's `HashMap` still works, with fixed keys).
    pub random: bool,
    /// Names of host environment variables passed through with their current values; no others are
    /// visible. Names that are not set on the host are simply absent.
    pub env: Vec<String>,
}
