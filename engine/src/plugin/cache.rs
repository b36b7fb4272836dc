//! The on-disk cache of compiled components (`$BABELRL_CACHE/plugins`). Loading compiled code is loading
//! native code outside the sandbox, so an entry is used only when (1) the directory is private to the
//! user running the engine (owned by them, no access for group or others; it is created so), (2) the
//! entry file is a regular file owned by them and writable by nobody else, and (3) its header names the
//! same key (sha256 of the component's bytes, the engine version and wasmtime's compatibility hash) and
//! the sha256 of the artifact that follows matches. Anything else is ignored (with a warning) and the
//! component is compiled afresh. On systems without Unix permissions the disk cache is off.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// First bytes of every entry; bump the version on any change of the layout.
const MAGIC: &[u8] = b"babelrl-plugin-cache-v1\n";

/// Where compiled plugins are cached: `$BABELRL_CACHE/plugins` (the engine's cache convention).
pub fn cache_dir() -> PathBuf {
    crate::model::cache_dir().join("plugins")
}

/// The file of the entry for `key`.
pub(crate) fn entry_path(key: &[u8; 32]) -> PathBuf {
    cache_dir().join(format!("{}.cwasm", hex(key)))
}

/// An entry's bytes: magic, key, sha256 of the artifact, artifact.
pub(crate) fn encode(key: &[u8; 32], artifact: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 64 + artifact.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(key);
    out.extend_from_slice(&Sha256::digest(artifact));
    out.extend_from_slice(artifact);
    out
}

/// The artifact of an entry, when its header names `key` and its digest matches; else why not.
fn decode<'a>(key: &[u8; 32], entry: &'a [u8]) -> Result<&'a [u8], &'static str> {
    let rest = entry.strip_prefix(MAGIC).ok_or("not a babelrl cache entry (or an older layout)")?;
    if rest.len() < 64 {
        return Err("truncated");
    }
    let (header, artifact) = rest.split_at(64);
    if header[..32] != key[..] {
        return Err("it belongs to another component or engine build");
    }
    if header[32..] != Sha256::digest(artifact)[..] {
        return Err("its contents do not match their recorded sha256 (modified or corrupt)");
    }
    Ok(artifact)
}

/// The cached component for `key`, when a trustworthy entry exists (see the module docs).
pub(crate) fn read(engine: &Engine, key: &[u8; 32]) -> Option<Component> {
    let path = entry_path(key);
    if !path.exists() {
        return None;
    }
    if let Err(why) = private_dir(&cache_dir(), false).and_then(|()| private_file(&path)) {
        log::warn!("not using the plugin cache entry {}: {why}", path.display());
        return None;
    }
    // Read once into memory: what is checked is exactly what is loaded.
    let entry = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            log::warn!("could not read the plugin cache entry {}: {e}", path.display());
            return None;
        }
    };
    let artifact = match decode(key, &entry) {
        Ok(a) => a,
        Err(why) => {
            log::warn!("ignoring the plugin cache entry {}: {why}; compiling afresh", path.display());
            return None;
        }
    };
    // SAFETY: the artifact was written by this engine build for exactly this component (the key binds
    // the component's sha256 and the engine build, the digest binds the artifact), and it sits in a
    // directory and file only the current user can write: as trusted as the engine binary itself.
    // wasmtime also checks the version and settings recorded in the artifact.
    match unsafe { Component::deserialize(engine, artifact) } {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!("ignoring the stale plugin cache entry {}: {e}", path.display());
            None
        }
    }
}

/// Stores `component` under `key` (in a private directory, through a private temporary file and a
/// rename). Failures only cost a recompile next time: logged, not returned.
pub(crate) fn write(key: &[u8; 32], component: &Component) {
    let path = entry_path(key);
    let result = (|| -> std::io::Result<()> {
        let artifact = component.serialize().map_err(std::io::Error::other)?;
        let dir = cache_dir();
        private_dir(&dir, true).map_err(std::io::Error::other)?;
        let tmp = dir.join(format!(".{}.{}.tmp", std::process::id(), hex(&key[..8])));
        write_private(&tmp, &encode(key, &artifact))?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = result {
        log::warn!("could not cache the compiled plugin at {}: {e}", path.display());
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(_: &Path, _: &[u8]) -> std::io::Result<()> {
    Err(std::io::Error::other("the plugin disk cache needs Unix permissions; it is off on this system"))
}

/// Checks that `dir` is a real directory (not a symlink) owned by the current user with no access for
/// group or others. With `create`, creates it (mode 0700) when missing and tightens a directory of
/// ours that others may read but not write.
#[cfg(unix)]
pub(crate) fn private_dir(dir: &Path, create: bool) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if create && !dir.exists() {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let made = std::fs::DirBuilder::new().mode(0o700).create(dir);
        if let Err(e) = made
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(format!("cannot create {}: {e}", dir.display()));
        }
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory (a symlink?)", dir.display()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "{} belongs to user {}, not to the current user {me}",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "{} is writable by group or others (mode {mode:o}); make it private (chmod 700) or remove it",
            dir.display()
        ));
    }
    if mode & 0o077 != 0 && create {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot make {} private: {e}", dir.display()))?;
    }
    Ok(())
}

#[cfg(not(unix))]
pub(crate) fn private_dir(_: &Path, _: bool) -> Result<(), String> {
    Err("the plugin disk cache needs Unix permissions; it is off on this system".into())
}

/// Checks that `path` is a regular file (not a symlink) owned by the current user, writable only by them.
#[cfg(unix)]
fn private_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_file() {
        return Err("not a regular file (a symlink?)".into());
    }
    if meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "owned by user {} with mode {:o}; only the current user may write it",
            meta.uid(),
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn private_file(_: &Path) -> Result<(), String> {
    Err("the plugin disk cache needs Unix permissions; it is off on this system".into())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_decodes_only_under_its_own_key_and_unmodified() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let entry = encode(&a, b"compiled code");
        assert_eq!(decode(&a, &entry), Ok(&b"compiled code"[..]));
        assert_eq!(decode(&b, &entry), Err("it belongs to another component or engine build"));
        let mut tampered = entry.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(decode(&a, &tampered).unwrap_err().contains("do not match"));
        let mut longer = entry.clone();
        longer.push(0);
        assert!(decode(&a, &longer).is_err());
        assert!(decode(&a, &entry[..40]).is_err());
        assert!(decode(&a, b"\x7fELF...").is_err());
    }
}
