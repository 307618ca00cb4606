//! Helpers for the unit tests.

use std::path::{Path, PathBuf};

/// A fresh directory under the system temp dir, removed with everything in it when the
/// test ends (also when it fails: nothing in it is needed to diagnose a unit test, and
/// test runs must not fill /tmp). The name holds `name`, the process id and a space, as
/// user paths may.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("cdcw-{name} {}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
