//! A PostgreSQL of aipm's own, for a machine that has PostgreSQL's server programs installed
//! but no server aipm may use: found on the machine ([`ServerPrograms::find`]), created with
//! `initdb` in a data folder on first use, started with `pg_ctl` listening on a Unix socket in
//! that folder only, shared by the aipm processes using that folder, and stopped by the last
//! of them to leave ([`PrivateServer`]).
//!
//! PostgreSQL refuses to run as root, so a root process runs the server programs as an
//! unprivileged system user ([`RunAs`]), which owns the data folder.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sqlx::postgres::PgConnectOptions;

/// The data folder when `AIPM_DATA_DIR` is not set.
pub const DEFAULT_DATA_DIR: &str = ".aipm";

/// The system user a root process runs the server programs as.
pub const SYSTEM_USER: &str = "postgres";

/// The database role `initdb` creates as superuser, the one aipm connects as.
const SUPERUSER: &str = "postgres";

/// Longest path of a Unix socket (`sun_path` is 104 bytes on macOS, 108 on Linux, with
/// the terminating zero).
const MAX_SOCKET_PATH: usize = 103;

/// Why a private PostgreSQL cannot be started or used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateServerError {
    #[error(
        "no PostgreSQL server programs (initdb and pg_ctl) on PATH or in {searched}. {advice}, \
         then run aipm again; or set DATABASE_URL to a PostgreSQL you have"
    )]
    NoServerPrograms { searched: String, advice: String },
    #[error(
        "aipm runs as root, which PostgreSQL refuses, and there is no `{user}` system user to run \
         its private PostgreSQL as. Run aipm as an ordinary user, create the user (e.g. \
         `useradd --system --user-group {user}`), or set DATABASE_URL to a PostgreSQL you have"
    )]
    RootWithoutUser { user: String },
    #[error(
        "the private PostgreSQL's socket {socket} would be longer than a Unix socket's path may \
         be ({MAX_SOCKET_PATH} bytes): set AIPM_DATA_DIR to a shorter folder"
    )]
    SocketPathTooLong { socket: String },
    #[error(
        "the private PostgreSQL in {data} was made by PostgreSQL {major}, but the server programs \
         found ({found}) are PostgreSQL {found_version}: install PostgreSQL {major}'s server, or \
         move {data} aside to start afresh"
    )]
    OtherMajorVersion {
        data: String,
        major: String,
        found: String,
        found_version: String,
    },
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error(
        "PostgreSQL's server programs run as user `{user}` (aipm runs as root), who cannot enter \
         {folder}: open every folder above it to that user (chmod o+x), or set AIPM_DATA_DIR to \
         a folder it can reach, e.g. under /var/lib or /tmp"
    )]
    FolderOutOfReach { user: String, folder: String },
    #[error("{command} failed: {output}")]
    ProgramFailed { command: String, output: String },
}

impl PrivateServerError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |cause| Self::Io { what, cause }
    }
}

/// What to install to have PostgreSQL's server programs, on this platform.
pub fn install_advice() -> &'static str {
    if cfg!(target_os = "macos") {
        "Install PostgreSQL: `brew install postgresql@15`, or Postgres.app (https://postgresapp.com)"
    } else {
        "Install PostgreSQL's server: `sudo apt install postgresql` (Debian, Ubuntu) or \
         `sudo dnf install postgresql-server` (Fedora, RHEL); on macOS, `brew install \
         postgresql@15` or Postgres.app (https://postgresapp.com)"
    }
}

/// The folders searched for `initdb` and `pg_ctl`, in order: those of `path` (the value of
/// `PATH`), then the usual install folders, each family newest version first.
pub fn server_folders(path: Option<&OsStr>) -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = path
        .map(|path| std::env::split_paths(path).collect())
        .unwrap_or_default();
    // Debian and Ubuntu: /usr/lib/postgresql/<version>/bin.
    folders.extend(
        versioned("/usr/lib/postgresql", "")
            .into_iter()
            .map(|dir| dir.join("bin")),
    );
    // RHEL and Fedora (PGDG packages): /usr/pgsql-<version>/bin.
    folders.extend(versioned("/usr", "pgsql-").into_iter().map(|dir| dir.join("bin")));
    folders.push(PathBuf::from("/usr/local/pgsql/bin"));
    // Homebrew on Apple silicon, then on Intel: postgresql@<version>, then unversioned.
    for prefix in ["/opt/homebrew/opt", "/usr/local/opt"] {
        folders.extend(
            versioned(prefix, "postgresql@")
                .into_iter()
                .map(|dir| dir.join("bin")),
        );
        folders.push(Path::new(prefix).join("postgresql/bin"));
    }
    folders.push(PathBuf::from(
        "/Applications/Postgres.app/Contents/Versions/latest/bin",
    ));
    folders
}

/// The entries of `parent` named `<prefix><version>`, newest version first.
fn versioned(parent: &str, prefix: &str) -> Vec<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix(prefix)?;
            let parts: Option<Vec<u32>> = version.split('.').map(|part| part.parse().ok()).collect();
            Some((parts?, entry.path()))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, path)| path).collect()
}

/// The folders among `folders` holding both `initdb` and `pg_ctl`, in order. A folder of
/// links (`/usr/local/bin`, Homebrew's `bin`) stands for the folder `pg_ctl` links to, which
/// holds the other server programs too (`postgres`, `pg_resetwal`).
pub fn folders_with_programs(folders: &[PathBuf]) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    for folder in folders {
        if !["initdb", "pg_ctl"].iter().all(|p| folder.join(p).is_file()) {
            continue;
        }
        let folder = std::fs::canonicalize(folder.join("pg_ctl"))
            .ok()
            .and_then(|program| program.parent().map(Path::to_path_buf))
            .filter(|real| real.join("initdb").is_file())
            .unwrap_or_else(|| folder.clone());
        if !found.contains(&folder) {
            found.push(folder);
        }
    }
    found
}

/// Whom the server programs run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// This process's user (not root).
    CurrentUser,
    /// A system user, as this process is root and PostgreSQL refuses to run as root.
    SystemUser { name: String, uid: u32, gid: u32 },
}

impl RunAs {
    /// Decides for a process whose effective user id is `euid`; `lookup` gives a user's uid
    /// and gid, and is asked only when `euid` is root's.
    pub fn decide(
        euid: u32,
        lookup: impl FnOnce(&str) -> Option<(u32, u32)>,
    ) -> Result<Self, PrivateServerError> {
        if euid != 0 {
            return Ok(Self::CurrentUser);
        }
        match lookup(SYSTEM_USER) {
            Some((uid, gid)) if uid != 0 => Ok(Self::SystemUser {
                name: SYSTEM_USER.to_string(),
                uid,
                gid,
            }),
            _ => Err(PrivateServerError::RootWithoutUser {
                user: SYSTEM_USER.to_string(),
            }),
        }
    }

    /// For this process.
    pub fn for_this_process() -> Result<Self, PrivateServerError> {
        let euid = id(&["-u"]).ok_or_else(|| PrivateServerError::Io {
            what: "cannot tell which user aipm runs as (`id -u`)".into(),
            cause: std::io::Error::other("no answer"),
        })?;
        Self::decide(euid, |user| Some((id(&["-u", user])?, id(&["-g", user])?)))
    }
}

/// A number `id` prints (`id -u`, `id -g postgres`); `None` when it fails, as for an
/// unknown user.
fn id(args: &[&str]) -> Option<u32> {
    let output = Command::new("id").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

/// PostgreSQL's server programs found on this machine, and whom they run as.
#[derive(Debug, Clone)]
pub struct ServerPrograms {
    bin: PathBuf,
    run_as: RunAs,
}

impl ServerPrograms {
    /// The first folder of [`server_folders`] (with this process's `PATH`) holding `initdb`
    /// and `pg_ctl`, run as [`RunAs::for_this_process`].
    pub fn find() -> Result<Self, PrivateServerError> {
        let candidates = Self::candidates()?;
        let bin = candidates.into_iter().next().ok_or_else(missing_programs)?;
        Ok(Self {
            bin,
            run_as: RunAs::for_this_process()?,
        })
    }

    /// The first folder holding server programs of PostgreSQL `major` (as `PG_VERSION` in a
    /// data folder names it).
    fn find_major(major: &str, data: &Path) -> Result<Self, PrivateServerError> {
        let candidates = Self::candidates()?;
        let run_as = RunAs::for_this_process()?;
        let mut first = None;
        for bin in candidates {
            let programs = Self {
                bin,
                run_as: run_as.clone(),
            };
            let version = programs.version()?;
            if major_of(&version) == major {
                return Ok(programs);
            }
            first.get_or_insert((programs, version));
        }
        let (programs, found_version) = first.ok_or_else(missing_programs)?;
        Err(PrivateServerError::OtherMajorVersion {
            data: data.display().to_string(),
            major: major.to_string(),
            found: programs.bin.display().to_string(),
            found_version,
        })
    }

    fn candidates() -> Result<Vec<PathBuf>, PrivateServerError> {
        let path: Option<OsString> = std::env::var_os("PATH");
        Ok(folders_with_programs(&server_folders(path.as_deref())))
    }

    /// The folder the programs are in.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Whom they run as.
    pub fn run_as(&self) -> &RunAs {
        &self.run_as
    }

    /// A command running `program` of this folder as [`Self::run_as`], in `working_dir` (the
    /// system user may not be allowed into this process's).
    pub fn command(&self, program: &str, working_dir: &Path) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(working_dir);
        if let RunAs::SystemUser { uid, gid, .. } = &self.run_as {
            // std drops the supplementary groups too when root changes user.
            command.uid(*uid).gid(*gid);
        }
        command
    }

    /// Runs `program` with `args` in `working_dir`; its output, or an error with it.
    pub fn run(
        &self,
        program: &str,
        args: &[&OsStr],
        working_dir: &Path,
    ) -> Result<String, PrivateServerError> {
        let rendered = format!(
            "{} {}",
            self.bin.join(program).display(),
            args.iter()
                .map(|arg| arg.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let output = self
            .command(program, working_dir)
            .args(args)
            .output()
            .map_err(PrivateServerError::io(format!("cannot run {rendered}")))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            Ok(text)
        } else {
            Err(PrivateServerError::ProgramFailed {
                command: rendered,
                output: text.trim().to_string(),
            })
        }
    }

    /// Fails when the system user the programs run as cannot enter `folder` (one under
    /// `/root`, say), which would otherwise surface as a bare "permission denied".
    pub fn check_reach(&self, folder: &Path) -> Result<(), PrivateServerError> {
        let RunAs::SystemUser { name, .. } = &self.run_as else {
            return Ok(());
        };
        match self.command("pg_ctl", folder).arg("--version").output() {
            Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                Err(PrivateServerError::FolderOutOfReach {
                    user: name.clone(),
                    folder: folder.display().to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Creates `folder` if missing and makes it the server's user's: its own, mode 0700.
    pub fn prepare_folder(&self, folder: &Path) -> Result<(), PrivateServerError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(folder).map_err(PrivateServerError::io(format!(
            "cannot create {}",
            folder.display()
        )))?;
        if let RunAs::SystemUser { uid, gid, .. } = &self.run_as {
            std::os::unix::fs::chown(folder, Some(*uid), Some(*gid)).map_err(PrivateServerError::io(
                format!("cannot give {} to its user", folder.display()),
            ))?;
        }
        std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o700)).map_err(
            PrivateServerError::io(format!("cannot restrict {}", folder.display())),
        )
    }

    /// The version `pg_ctl --version` states, e.g. `15.14`.
    pub fn version(&self) -> Result<String, PrivateServerError> {
        let output = self.run("pg_ctl", &[OsStr::new("--version")], Path::new("/"))?;
        Ok(output
            .split("(PostgreSQL)")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or(output.trim())
            .to_string())
    }
}

fn missing_programs() -> PrivateServerError {
    PrivateServerError::NoServerPrograms {
        searched: "/usr/lib/postgresql/<version>/bin, /usr/pgsql-<version>/bin, \
                   /usr/local/pgsql/bin, Homebrew's and Postgres.app's folders"
            .into(),
        advice: install_advice().into(),
    }
}

/// `15` of `15.14`, `9.6` of `9.6.24` (before 10, the major version had two parts).
fn major_of(version: &str) -> &str {
    let mut parts = version.splitn(3, '.');
    let first = parts.next().unwrap_or(version);
    match (first.parse::<u32>(), parts.next()) {
        (Ok(major), Some(second)) if major < 10 => &version[..first.len() + 1 + second.len()],
        _ => first,
    }
}

/// A private PostgreSQL running in a data folder: its data in `<folder>/postgres`, its
/// socket in `<folder>`, no TCP.
///
/// Every process using it holds a shared lock on `<folder>/aipm.users` while it does;
/// dropping this releases it, and the last process out stops the server if an aipm process
/// started it (`<folder>/aipm.started`). So a command run while `aipm serve` runs leaves the
/// server to it, and a server whose starter was killed is stopped by the next one to leave.
#[derive(Debug)]
pub struct PrivateServer {
    folder: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    version: String,
    programs: ServerPrograms,
    started_here: bool,
    /// The shared lock on `aipm.users`; `None` once left.
    using: Option<File>,
}

impl PrivateServer {
    /// Uses the private server in `folder`, creating and starting it first if need be. `why`
    /// says why a private server is used, for the one line that says so.
    ///
    /// Processes starting at the same moment take turns under a lock in the folder
    /// (`aipm.lock`): the first creates and starts the server, the others find it running and
    /// use it.
    pub fn start_or_reuse(folder: &Path, why: &str) -> Result<Self, PrivateServerError> {
        let folder = std::path::absolute(folder).map_err(PrivateServerError::io(format!(
            "cannot resolve the data folder {}",
            folder.display()
        )))?;
        let data = folder.join("postgres");
        let socket = folder.join(".s.PGSQL.65535");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(PrivateServerError::SocketPathTooLong {
                socket: socket.display().to_string(),
            });
        }
        let programs = match std::fs::read_to_string(data.join("PG_VERSION")) {
            Ok(major) => ServerPrograms::find_major(major.trim(), &data)?,
            Err(_) => ServerPrograms::find()?,
        };
        programs.prepare_folder(&folder)?;
        programs.check_reach(&folder)?;
        let _turn = Lock::take(&folder)?;
        if !data.join("PG_VERSION").is_file() {
            create(&programs, &folder, &data)?;
        }
        let version = programs.version()?;
        let (socket_dir, port, started_here) = match Running::read(&programs, &folder, &data)? {
            Some(running) => (running.socket_dir, running.port, false),
            None => {
                let port = start(&programs, &folder, &data)?;
                (folder.clone(), port, true)
            }
        };
        // Taken under the turn, as a leaving process checks for users under it.
        let using = open_lock_file(&folder, USERS)?;
        using
            .lock_shared()
            .map_err(PrivateServerError::io(format!("cannot lock {USERS}")))?;
        let server = Self {
            folder,
            socket_dir,
            port,
            version,
            programs,
            started_here,
            using: Some(using),
        };
        let (verb, state) = if started_here {
            ("started", "")
        } else {
            ("using", " already running")
        };
        tracing::info!(
            "{verb} a private PostgreSQL {version}{state} in {data} (socket {socket}; no TCP) \
             because {why}",
            version = server.version,
            data = data.display(),
            socket = server.socket().display(),
        );
        Ok(server)
    }

    /// How to connect to its database `database`, over the socket.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .socket(&self.socket_dir)
            .port(self.port)
            .username(SUPERUSER)
            .database(database)
    }

    /// The socket's path.
    pub fn socket(&self) -> PathBuf {
        self.socket_dir.join(format!(".s.PGSQL.{}", self.port))
    }

    /// Whether this process started it.
    pub fn started_here(&self) -> bool {
        self.started_here
    }

    /// Stops using the server now; see [`PrivateServer`] for when that stops it.
    pub fn leave(mut self) -> Result<(), PrivateServerError> {
        self.leave_once()
    }

    fn leave_once(&mut self) -> Result<(), PrivateServerError> {
        let Some(using) = self.using.take() else {
            return Ok(());
        };
        let _turn = Lock::take(&self.folder)?;
        drop(using);
        let users = open_lock_file(&self.folder, USERS)?;
        match users.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(()),
            Err(std::fs::TryLockError::Error(cause)) => {
                return Err(PrivateServerError::Io {
                    what: format!("cannot lock {USERS}"),
                    cause,
                })
            }
        }
        let started = self.folder.join(STARTED);
        if !started.exists() {
            return Ok(());
        }
        let data = self.folder.join("postgres");
        if Running::read(&self.programs, &self.folder, &data)?.is_some() {
            self.programs.run(
                "pg_ctl",
                &[
                    OsStr::new("-D"),
                    data.as_os_str(),
                    OsStr::new("-m"),
                    OsStr::new("fast"),
                    OsStr::new("-w"),
                    OsStr::new("stop"),
                ],
                &self.folder,
            )?;
            tracing::info!(data = %data.display(), "stopped the private PostgreSQL");
        }
        std::fs::remove_file(&started).map_err(PrivateServerError::io(format!(
            "cannot remove {}",
            started.display()
        )))
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Err(error) = self.leave_once() {
            tracing::error!(%error, "cannot stop the private PostgreSQL");
        }
    }
}

/// Held exclusively while a process starts, reuses or leaves the server.
const TURN: &str = "aipm.lock";
/// Held shared by every process using the server.
const USERS: &str = "aipm.users";
/// Present while a server an aipm process started runs.
const STARTED: &str = "aipm.started";

fn open_lock_file(folder: &Path, name: &str) -> Result<File, PrivateServerError> {
    let path = folder.join(name);
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(PrivateServerError::io(format!("cannot open {}", path.display())))
}

/// The turn of this process in a data folder, until dropped.
struct Lock(File);

impl Lock {
    fn take(folder: &Path) -> Result<Self, PrivateServerError> {
        let file = open_lock_file(folder, TURN)?;
        file.lock()
            .map_err(PrivateServerError::io(format!("cannot lock {TURN}")))?;
        Ok(Self(file))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// `initdb` into a folder beside `data`, renamed to it once complete, so that an interrupted
/// initialisation is never mistaken for a cluster.
fn create(programs: &ServerPrograms, folder: &Path, data: &Path) -> Result<(), PrivateServerError> {
    let partial = folder.join("postgres.partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(PrivateServerError::io(format!(
            "cannot remove {}",
            partial.display()
        )))?;
    }
    programs.run(
        "initdb",
        &[
            OsStr::new("-D"),
            partial.as_os_str(),
            OsStr::new("-U"),
            OsStr::new(SUPERUSER),
            // Only the socket, which only the folder's owner can reach, is trusted.
            OsStr::new("--auth-local=trust"),
            OsStr::new("--auth-host=scram-sha-256"),
            OsStr::new("-E"),
            OsStr::new("UTF8"),
            // The C locale exists on every machine; the environment's may not be installed.
            OsStr::new("--locale=C"),
        ],
        folder,
    )?;
    let conf = partial.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf)
        .map_err(PrivateServerError::io(format!("cannot read {}", conf.display())))?;
    text.push_str(
        "\n# aipm writes where the server listens at each start.\ninclude_if_exists = 'aipm.conf'\n",
    );
    std::fs::write(&conf, text)
        .map_err(PrivateServerError::io(format!("cannot write {}", conf.display())))?;
    std::fs::rename(&partial, data).map_err(PrivateServerError::io(format!(
        "cannot rename {} to {}",
        partial.display(),
        data.display()
    )))
}

/// Starts the server on a free port with its socket in `folder` and no TCP; the port.
fn start(programs: &ServerPrograms, folder: &Path, data: &Path) -> Result<u16, PrivateServerError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(PrivateServerError::io("cannot find a free port"))?
        .port();
    // Written at each start, so that a folder moved elsewhere still works.
    let settings = format!(
        "listen_addresses = ''\nport = {port}\nunix_socket_directories = '{directories}'\n\
         unix_socket_permissions = 0700\n",
        directories = quote_directory(folder)
    );
    let conf = data.join("aipm.conf");
    std::fs::write(&conf, settings)
        .map_err(PrivateServerError::io(format!("cannot write {}", conf.display())))?;
    let log = folder.join("postgres.log");
    programs.run(
        "pg_ctl",
        &[
            OsStr::new("-D"),
            data.as_os_str(),
            OsStr::new("-l"),
            log.as_os_str(),
            OsStr::new("-t"),
            OsStr::new("120"),
            OsStr::new("-w"),
            OsStr::new("start"),
        ],
        folder,
    )?;
    let started = folder.join(STARTED);
    std::fs::write(&started, "").map_err(PrivateServerError::io(format!(
        "cannot write {}",
        started.display()
    )))?;
    Ok(port)
}

/// `folder` as one entry of `unix_socket_directories` inside a single-quoted setting: the
/// list is split at commas unless double-quoted, and the setting's quotes are doubled.
fn quote_directory(folder: &Path) -> String {
    let entry = format!("\"{}\"", folder.to_string_lossy().replace('"', "\"\""));
    entry.replace('\\', "\\\\").replace('\'', "''")
}

/// Where a running server listens, from its `postmaster.pid`.
struct Running {
    port: u16,
    socket_dir: PathBuf,
}

impl Running {
    /// `None` when no server runs on `data` (`pg_ctl status` says so: exit code 3).
    fn read(
        programs: &ServerPrograms,
        folder: &Path,
        data: &Path,
    ) -> Result<Option<Self>, PrivateServerError> {
        let status = programs
            .command("pg_ctl", folder)
            .args([OsStr::new("-D"), data.as_os_str(), OsStr::new("status")])
            .output()
            .map_err(PrivateServerError::io("cannot run pg_ctl status"))?;
        if status.status.code() == Some(3) {
            return Ok(None);
        }
        let pid_file = data.join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file).map_err(PrivateServerError::io(format!(
            "cannot read {}",
            pid_file.display()
        )))?;
        // Lines: pid, data folder, start time, port, first socket folder, listen address, …
        let lines: Vec<&str> = text.lines().collect();
        let port = lines.get(3).and_then(|line| line.trim().parse().ok());
        let socket_dir = lines.get(4).map(|line| PathBuf::from(line.trim()));
        match (port, socket_dir) {
            (Some(port), Some(socket_dir)) if !socket_dir.as_os_str().is_empty() => {
                Ok(Some(Self { port, socket_dir }))
            }
            _ => Err(PrivateServerError::Io {
                what: format!("cannot tell where the server of {} listens", pid_file.display()),
                cause: std::io::Error::other(text),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_process_runs_the_server_as_the_system_user() {
        let decided = RunAs::decide(0, |user| (user == "postgres").then_some((101, 104))).unwrap();
        assert_eq!(
            decided,
            RunAs::SystemUser {
                name: "postgres".into(),
                uid: 101,
                gid: 104
            }
        );
    }

    #[test]
    fn a_root_process_without_the_system_user_is_told_what_to_do() {
        let error = RunAs::decide(0, |_| None).unwrap_err().to_string();
        assert!(error.contains("aipm runs as root"), "{error}");
        assert!(error.contains("no `postgres` system user"), "{error}");
        assert!(error.contains("useradd --system"), "{error}");
        assert!(error.contains("DATABASE_URL"), "{error}");
        // A `postgres` that is root itself is no way out of running as root.
        assert!(RunAs::decide(0, |_| Some((0, 0))).is_err());
    }

    #[test]
    fn an_ordinary_user_runs_the_server_as_itself_without_looking_anyone_up() {
        let decided = RunAs::decide(1000, |_| panic!("looked up a user")).unwrap();
        assert_eq!(decided, RunAs::CurrentUser);
    }

    #[test]
    fn folders_without_the_programs_give_none_and_the_message_says_what_to_install() {
        let empty = std::env::temp_dir().join(format!("aipm-no-pg-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        assert!(folders_with_programs(&[empty.clone(), empty.join("missing")]).is_empty());
        let message = missing_programs().to_string();
        for expected in [
            "no PostgreSQL server programs (initdb and pg_ctl)",
            "apt install postgresql",
            "dnf install postgresql-server",
            "brew install postgresql@15",
            "Postgres.app",
            "DATABASE_URL",
        ] {
            assert!(message.contains(expected), "{expected:?} missing: {message}");
        }
        std::fs::remove_dir_all(empty).unwrap();
    }

    #[test]
    fn a_folder_with_both_programs_is_found_once_and_path_comes_first() {
        let root = std::env::temp_dir().join(format!("aipm-pg-bin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let only_initdb = root.join("a");
        let both = root.join("b");
        for (folder, programs) in [
            (&only_initdb, &["initdb"][..]),
            (&both, &["initdb", "pg_ctl"][..]),
        ] {
            std::fs::create_dir_all(folder).unwrap();
            for program in programs {
                std::fs::write(folder.join(program), "").unwrap();
            }
        }
        let path = std::env::join_paths([&only_initdb, &both]).unwrap();
        let folders = server_folders(Some(&path));
        assert_eq!(folders[..2], [only_initdb.clone(), both.clone()]);
        assert_eq!(
            folders_with_programs(&[only_initdb, both.clone(), both.clone()]),
            std::slice::from_ref(&both)
        );
        // A folder of links stands for the folder they point into.
        let links = root.join("links");
        std::fs::create_dir_all(&links).unwrap();
        for program in ["initdb", "pg_ctl"] {
            std::os::unix::fs::symlink(both.join(program), links.join(program)).unwrap();
        }
        let real = std::fs::canonicalize(&both).unwrap();
        assert_eq!(folders_with_programs(&[links, both]), [real]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn versioned_folders_come_newest_first_by_number() {
        let root = std::env::temp_dir().join(format!("aipm-pg-versions-{}", std::process::id()));
        for name in ["9.6", "15", "10", "pgsql-16", "notes"] {
            std::fs::create_dir_all(root.join(name)).unwrap();
        }
        let found = versioned(&root.to_string_lossy(), "");
        assert_eq!(found, [root.join("15"), root.join("10"), root.join("9.6")]);
        assert_eq!(
            versioned(&root.to_string_lossy(), "pgsql-"),
            [root.join("pgsql-16")]
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn the_major_version_has_one_part_from_ten_on() {
        assert_eq!(major_of("15.14"), "15");
        assert_eq!(major_of("16beta1"), "16beta1");
        assert_eq!(major_of("9.6.24"), "9.6");
    }

    #[test]
    fn a_socket_folder_is_quoted_for_the_setting() {
        assert_eq!(quote_directory(Path::new("/tmp/a")), "\"/tmp/a\"");
        assert_eq!(
            quote_directory(Path::new("/tmp/it's, \"x\"")),
            "\"/tmp/it''s, \"\"x\"\"\""
        );
    }
}
