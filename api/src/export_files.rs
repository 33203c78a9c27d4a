//! Where export files are kept. One small interface — create a file to write, make it the
//! export's, open it, delete it — so that a store other than the local disk (an
//! S3-compatible one) is one more variant of [`Backend`] and nothing else changes.

use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct ExportStore {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    /// A directory of the local disk (`AIPM_EXPORT_DIR`), shared by every process.
    LocalDir(PathBuf),
}

/// A file being written: it becomes the export's file when committed, and is deleted if
/// dropped before.
pub struct Scratch {
    path: PathBuf,
    committed: bool,
}

impl Scratch {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl ExportStore {
    /// The store in `dir`, created if missing.
    pub fn local(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("export directory {}: {error}", dir.display()),
            )
        })?;
        Ok(Self {
            backend: Backend::LocalDir(dir.to_path_buf()),
        })
    }

    fn final_path(&self, export: Uuid, extension: &str) -> PathBuf {
        match &self.backend {
            Backend::LocalDir(dir) => dir.join(format!("{export}.{extension}")),
        }
    }

    /// A new scratch file for `export` (an earlier attempt's is replaced).
    pub fn create(&self, export: Uuid, extension: &str) -> io::Result<(std::fs::File, Scratch)> {
        let path = match &self.backend {
            Backend::LocalDir(dir) => dir.join(format!(".{export}.{extension}.partial")),
        };
        let file = std::fs::File::create(&path)?;
        Ok((
            file,
            Scratch {
                path,
                committed: false,
            },
        ))
    }

    /// Makes the written scratch file the export's file.
    pub async fn commit(&self, export: Uuid, extension: &str, mut scratch: Scratch) -> io::Result<()> {
        let target = self.final_path(export, extension);
        tokio::fs::rename(&scratch.path, &target).await?;
        scratch.committed = true;
        Ok(())
    }

    /// The export's file for reading, `None` when it is gone.
    pub async fn open(&self, export: Uuid, extension: &str) -> io::Result<Option<tokio::fs::File>> {
        match tokio::fs::File::open(self.final_path(export, extension)).await {
            Ok(file) => Ok(Some(file)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Deletes the export's file; one already gone is no error.
    pub async fn delete(&self, export: Uuid, extension: &str) -> io::Result<()> {
        match tokio::fs::remove_file(self.final_path(export, extension)).await {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }
}
