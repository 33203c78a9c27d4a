//! Which PostgreSQL a command uses: `DATABASE_URL` when set, exactly; else a private
//! PostgreSQL in `AIPM_DATA_DIR` when that is set; else the default URL, unless nothing
//! answers there or it refuses user `postgres` without a password, and then a private
//! PostgreSQL in `./.aipm/`.

use std::path::{Path, PathBuf};

use sqlx::PgPool;

use crate::db;
use crate::private_postgres::{PrivateServer, DEFAULT_DATA_DIR};

/// The database of a command, and the private server it started, stopped when this is
/// dropped (at the end of the command).
pub struct Database {
    url: Option<String>,
    data_dir: Option<PathBuf>,
    server: Option<PrivateServer>,
}

impl Database {
    /// From `DATABASE_URL` and `AIPM_DATA_DIR` (an empty value counts as unset).
    pub fn new(url: Option<String>, data_dir: Option<PathBuf>) -> Self {
        Self {
            url: url.filter(|url| !url.is_empty()),
            data_dir: data_dir.filter(|dir| !dir.as_os_str().is_empty()),
            server: None,
        }
    }

    /// Connects with a pool of `max_connections`, starting the private server if it is the
    /// one to use and not running.
    pub async fn connect(&mut self, max_connections: u32) -> Result<PgPool, String> {
        if let Some(url) = &self.url {
            return db::connect(url, max_connections).await.map_err(|e| e.to_string());
        }
        let (folder, why) = match &self.data_dir {
            Some(folder) => (folder.clone(), "AIPM_DATA_DIR is set".to_string()),
            None => match db::refusal(db::DEFAULT_URL).await.map_err(|e| e.to_string())? {
                None => {
                    return db::connect(db::DEFAULT_URL, max_connections)
                        .await
                        .map_err(|e| e.to_string())
                }
                Some(refusal) => (PathBuf::from(DEFAULT_DATA_DIR), refusal),
            },
        };
        let server = start_or_reuse(folder, why).await?;
        let options = server.connect_options("aipm");
        // Kept before connecting, so that a failure still stops a server started here.
        self.server = Some(server);
        db::connect_with(options, max_connections)
            .await
            .map_err(|e| e.to_string())
    }
}

/// [`PrivateServer::start_or_reuse`] off the async threads: it waits for programs and a lock.
async fn start_or_reuse(folder: PathBuf, why: String) -> Result<PrivateServer, String> {
    tokio::task::spawn_blocking(move || PrivateServer::start_or_reuse(Path::new(&folder), &why))
        .await
        .map_err(|e| format!("cannot start the private PostgreSQL: {e}"))?
        .map_err(|e| e.to_string())
}
