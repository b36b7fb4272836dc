//! Training checkpoints: `OUT/checkpoint-STEP/` holds the adapter (PEFT's `adapter_config.json` and
//! `adapter_model.safetensors`), the optimizer state (`optimizer.safetensors`) and `trainer_state.json`
//! (step, schedule, seeds, data position, fingerprints, and the run's stage), and whatever other files the
//! job adds (an LRPO run's router state, [`ROUTER_STATE_FILE`]), written in the same atomic step.
//!
//! A checkpoint is written into a temporary sibling folder (`OUT/.tmp-checkpoint-…`), every file and the
//! folder are synced, and only then is it renamed to `checkpoint-STEP`; so a crash at any moment leaves
//! either no `checkpoint-STEP` or a complete one. Loaders ignore temporary folders; the next save
//! removes them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lora::{Adapter, CONFIG_FILE, WEIGHTS_FILE};
use crate::train::{AdamWState, Schedule, Stage};
use crate::{Error, Result};

/// The `format` of `trainer_state.json`.
pub const CHECKPOINT_FORMAT: &str = "babelrl-checkpoint-1";
/// The trainer state's file name.
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
/// The optimizer state's file name.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The router plugin's state (its `save-state` bytes) in a checkpoint of a run with `[router]`.
pub const ROUTER_STATE_FILE: &str = "router_state.bin";

/// Prefix of checkpoint folders (`checkpoint-STEP`, as transformers names them).
const PREFIX: &str = "checkpoint-";
/// Prefix of the temporary folders a save writes, moves aside or prunes through.
const TMP_PREFIX: &str = ".tmp-checkpoint-";

const NOT_A_CHECKPOINT: &str = "not a babelrl checkpoint (expected trainer_state.json, \
                                optimizer.safetensors, adapter_model.safetensors, adapter_config.json)";

/// Where a run stands after `step` optimizer steps: what an exact resume needs besides the adapter and
/// the optimizer moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerState {
    /// Always [`CHECKPOINT_FORMAT`].
    pub format: String,
    /// Optimizer steps done.
    pub step: u64,
    pub schedule: Schedule,
    /// Seed of the run's random draws (adapter initialisation, dropout).
    pub seed: u64,
    /// Seed of the data order.
    pub data_seed: u64,
    /// Examples consumed so far, over all epochs.
    pub examples_seen: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// SHA-256 of the run file ([`crate::train::RunFile::sha256`]).
    pub run_file_sha256: String,
    /// A fingerprint of the base model, chosen by the caller (a resume checks it is the same model).
    pub base_model: String,
    /// The stage this checkpoint belongs to; `None` in checkpoints written before runs had stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// The run's stages in order (`["sft", "grpo"]` for cold-start SFT then GRPO), so a resume with
    /// another layout is refused ([`crate::train::RunFile::resume_stage`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<Stage>,
    /// The last values of the run's metrics (loss, grad norm, …), free-form.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metrics: serde_json::Map<String, serde_json::Value>,
}

/// A checkpoint read from disk, but for the adapter: that needs a GPU, so the caller loads it with
/// [`Adapter::load_peft`] from `adapter_dir`.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub dir: PathBuf,
    /// The PEFT adapter folder (the checkpoint folder itself).
    pub adapter_dir: PathBuf,
    pub optimizer: AdamWState,
    pub state: TrainerState,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// Flushes `path` (a file or, where the platform allows, a folder) to disk.
fn sync(path: &Path) -> Result<()> {
    match std::fs::File::open(path).and_then(|f| f.sync_all()) {
        // Windows cannot open folders for syncing; its renames are durable without it.
        Err(_) if path.is_dir() && cfg!(windows) => Ok(()),
        r => r.map_err(io(path)),
    }
}

/// A name unique to this process and moment, for temporary folders.
fn unique(step: u64, what: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{TMP_PREFIX}{step}{what}-{}-{nanos}", std::process::id())
}

/// The step of a folder named `checkpoint-STEP`.
fn checkpoint_step(name: &std::ffi::OsStr) -> Option<u64> {
    let digits = name.to_str()?.strip_prefix(PREFIX)?;
    digits.bytes().all(|b| b.is_ascii_digit()).then(|| digits.parse().ok()).flatten()
}

/// `(step, folder)` of every `checkpoint-STEP` folder in `out_dir`, oldest first (none if `out_dir`
/// does not exist).
fn checkpoints(out_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(out_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        r => r.map_err(io(out_dir))?,
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(out_dir))?;
        if let Some(step) = checkpoint_step(&entry.file_name())
            && entry.path().is_dir()
        {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The first of the checkpoint's four files missing from `dir`.
fn missing_file(dir: &Path) -> Option<&'static str> {
    [TRAINER_STATE_FILE, OPTIMIZER_FILE, WEIGHTS_FILE, CONFIG_FILE]
        .into_iter()
        .find(|f| !dir.join(f).is_file())
}

/// Writes a checkpoint of `adapter`, `optim` and `state` to `out_dir/checkpoint-STEP` (STEP =
/// `state.step`), replacing one of the same step, and returns its folder.
pub fn save_checkpoint(
    out_dir: &Path,
    adapter: &Adapter,
    optim: &AdamWState,
    state: &TrainerState,
) -> Result<PathBuf> {
    save_checkpoint_with(out_dir, |dir| adapter.save_peft(dir), optim, state)
}

/// [`save_checkpoint`] with more files in the checkpoint folder: `(name, contents)`, each name a plain
/// file name other than the checkpoint's own four (e.g. [`ROUTER_STATE_FILE`]); they are part of the
/// same atomic write.
pub fn save_checkpoint_with_files(
    out_dir: &Path,
    adapter: &Adapter,
    optim: &AdamWState,
    state: &TrainerState,
    files: &[(&str, &[u8])],
) -> Result<PathBuf> {
    write_checkpoint(out_dir, |dir| adapter.save_peft(dir), optim, state, files)
}

/// [`save_checkpoint`] with the adapter's two files written by `write_adapter` into the folder given.
pub fn save_checkpoint_with(
    out_dir: &Path,
    write_adapter: impl FnOnce(&Path) -> Result<()>,
    optim: &AdamWState,
    state: &TrainerState,
) -> Result<PathBuf> {
    write_checkpoint(out_dir, write_adapter, optim, state, &[])
}

/// Writes the checkpoint's files and `files` into a temporary folder and renames it into place.
pub(crate) fn write_checkpoint(
    out_dir: &Path,
    write_adapter: impl FnOnce(&Path) -> Result<()>,
    optim: &AdamWState,
    state: &TrainerState,
    files: &[(&str, &[u8])],
) -> Result<PathBuf> {
    for (name, _) in files {
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && !name.contains(['/', '\\'])
            && ![TRAINER_STATE_FILE, OPTIMIZER_FILE, WEIGHTS_FILE, CONFIG_FILE].contains(name);
        if !plain {
            return Err(Error::Input(format!(
                "checkpoint of step {}: `{name}` cannot be an extra file (a plain file name other than the \
                 checkpoint's own files)",
                state.step
            )));
        }
    }
    if state.format != CHECKPOINT_FORMAT {
        return Err(Error::Input(format!(
            "trainer state format `{}`: a checkpoint's must be `{CHECKPOINT_FORMAT}`",
            state.format
        )));
    }
    if optim.step != state.step {
        return Err(Error::Input(format!(
            "checkpoint of step {}: the optimizer state is at step {}",
            state.step, optim.step
        )));
    }
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    remove_temporaries(out_dir)?;
    let tmp = out_dir.join(unique(state.step, ""));
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let written = (|| {
        write_adapter(&tmp)?;
        let json = serde_json::to_string_pretty(state).expect("a trainer state serialises");
        std::fs::write(tmp.join(TRAINER_STATE_FILE), format!("{json}\n")).map_err(io(&tmp))?;
        std::fs::write(tmp.join(OPTIMIZER_FILE), optim.to_safetensors()?).map_err(io(&tmp))?;
        for (name, bytes) in files {
            std::fs::write(tmp.join(name), bytes).map_err(io(&tmp))?;
        }
        if let Some(f) = missing_file(&tmp) {
            return Err(Error::Input(format!("checkpoint of step {}: {f} was not written", state.step)));
        }
        for entry in std::fs::read_dir(&tmp).map_err(io(&tmp))? {
            sync(&entry.map_err(io(&tmp))?.path())?;
        }
        sync(&tmp)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dir = out_dir.join(format!("{PREFIX}{}", state.step));
    // A checkpoint of this step exists (a resumed run saving it again): move it aside, then replace it.
    let aside = dir.exists().then(|| out_dir.join(unique(state.step, "-old")));
    if let Some(aside) = &aside {
        std::fs::rename(&dir, aside).map_err(io(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    sync(out_dir)?;
    if let Some(aside) = aside {
        std::fs::remove_dir_all(&aside).map_err(io(&aside))?;
    }
    Ok(dir)
}

/// Removes the temporary folders of earlier saves that did not finish.
fn remove_temporaries(out_dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(out_dir).map_err(io(out_dir))? {
        let entry = entry.map_err(io(out_dir))?;
        if entry.file_name().to_str().is_some_and(|n| n.starts_with(TMP_PREFIX)) {
            let path = entry.path();
            let removed =
                if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            removed.map_err(io(&path))?;
        }
    }
    Ok(())
}

/// Reads the checkpoint in `dir` (trainer state and optimizer state; the adapter is the caller's, see
/// [`Checkpoint`]). A folder that is not a complete checkpoint is an error naming it and the file.
pub fn load_checkpoint(dir: &Path) -> Result<Checkpoint> {
    if !dir.is_dir() {
        return Err(Error::format(dir, format!("no such folder: {NOT_A_CHECKPOINT}")));
    }
    if let Some(f) = missing_file(dir) {
        return Err(Error::format(dir, format!("{f} is missing: {NOT_A_CHECKPOINT}")));
    }
    let path = dir.join(TRAINER_STATE_FILE);
    let bad = |m: String| Error::format(&path, format!("{m}: {NOT_A_CHECKPOINT}"));
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
    match json.get("format").and_then(|f| f.as_str()) {
        Some(CHECKPOINT_FORMAT) => {}
        Some(other) => return Err(bad(format!("format `{other}`, expected `{CHECKPOINT_FORMAT}`"))),
        None => return Err(bad(format!("no `format` field (expected `{CHECKPOINT_FORMAT}`)"))),
    }
    let state: TrainerState =
        serde_json::from_value(json).map_err(|e| bad(format!("bad trainer state ({e})")))?;
    let opt_path = dir.join(OPTIMIZER_FILE);
    let bytes = std::fs::read(&opt_path).map_err(io(&opt_path))?;
    let optimizer = AdamWState::from_safetensors(&bytes, &opt_path)?;
    if optimizer.step != state.step {
        return Err(Error::format(
            dir,
            format!(
                "{OPTIMIZER_FILE} is at step {} but {TRAINER_STATE_FILE} at step {}: the files belong to \
                 different checkpoints",
                optimizer.step, state.step
            ),
        ));
    }
    Ok(Checkpoint { dir: dir.to_path_buf(), adapter_dir: dir.to_path_buf(), optimizer, state })
}

impl Checkpoint {
    /// The contents of the checkpoint's file `name` (one its job added, e.g. [`ROUTER_STATE_FILE`]), or
    /// `None` when it has none.
    pub fn read_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }
}

/// The newest complete checkpoint in `out_dir` (highest STEP of the `checkpoint-STEP` folders that hold
/// all four files), or `None`. Temporary folders are ignored; an incomplete checkpoint folder (not one
/// babelrl wrote) is skipped with a warning.
pub fn latest_checkpoint(out_dir: &Path) -> Result<Option<PathBuf>> {
    for (_, dir) in checkpoints(out_dir)?.into_iter().rev() {
        match missing_file(&dir) {
            None => return Ok(Some(dir)),
            Some(f) => log::warn!("{}: {f} is missing; skipping this incomplete checkpoint", dir.display()),
        }
    }
    Ok(None)
}

/// Removes all but the newest `keep` checkpoints of `out_dir` (none when `keep` is 0, which keeps all),
/// and returns the folders removed. Each is renamed to a temporary name before it is deleted, so a crash
/// never leaves a half-deleted `checkpoint-STEP`.
pub fn prune_checkpoints(out_dir: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    let all = checkpoints(out_dir)?;
    if keep == 0 || all.len() <= keep {
        return Ok(Vec::new());
    }
    let mut removed = Vec::new();
    for (step, dir) in &all[..all.len() - keep] {
        let doomed = out_dir.join(unique(*step, "-pruned"));
        std::fs::rename(dir, &doomed).map_err(io(dir))?;
        std::fs::remove_dir_all(&doomed).map_err(io(&doomed))?;
        removed.push(dir.clone());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests;
