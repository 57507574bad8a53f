//! A private temporary directory for one attempt of a built-in (`exec`'s
//! default working directory, `git.*`'s work tree), removed when the
//! attempt ends, whether it finishes or is dropped.

use std::{
    io,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

/// A directory only this worker's user can read (a work tree's
/// `.git/config` holds the remote URL, credentials included), removed on
/// [`ScratchDir::remove`] or drop.
#[derive(Debug)]
pub(crate) struct ScratchDir {
    /// Empty once removed.
    path: PathBuf,
}

impl ScratchDir {
    /// A new empty directory under the system's temporary directory.
    pub fn create(label: &str) -> io::Result<Self> {
        let path =
            std::env::temp_dir().join(format!("fulfil-{label}-{}", uuid::Uuid::now_v7().simple()));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory off the async threads (a work tree can be big).
    pub async fn remove(mut self) {
        let path = std::mem::take(&mut self.path);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(path)).await;
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
