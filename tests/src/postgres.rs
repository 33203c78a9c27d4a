//! PostgreSQL beyond a database of the shared server: a cluster of a test's own, for what
//! cannot be done to the shared server (stopping it at once, restoring into a cluster whose
//! transaction counter is elsewhere), and copying a database with pg_dump and pg_restore.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// Where PostgreSQL's server programs are: `AIPM_TEST_PG_BIN`, or the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian), or the `PATH`.
fn server_bin(program: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("AIPM_TEST_PG_BIN") {
        return Path::new(&dir).join(program);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join(program).exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map_or_else(|| PathBuf::from(program), |bin| bin.join(program))
}

/// PostgreSQL refuses to run as root: as root, server programs run as the `postgres` user.
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a server program (as `postgres` when this process is root) and fails the test with
/// its output if it fails.
fn run_server_program(program: &str, args: &[&str]) {
    let binary = server_bin(program);
    let mut command = if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(&binary);
        command
    } else {
        Command::new(&binary)
    };
    let output = command
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {binary:?}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs a client program (pg_dump, pg_restore, psql) and fails the test if it fails.
pub fn run_client_program(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Copies database `from` into a new database `to` (both given as URLs) with pg_dump and
/// pg_restore, as an operator restoring a backup would.
pub fn copy_database(from: &str, to_server: &str, to_database: &str) {
    let dump = std::env::temp_dir().join(format!("aipm-test-dump-{}", Uuid::new_v4().simple()));
    let dump_path = dump.to_string_lossy().to_string();
    run_client_program("pg_dump", &["--format=custom", "--file", &dump_path, from]);
    run_client_program(
        "psql",
        &[
            &format!("{to_server}/postgres"),
            "-qc",
            &format!("create database \"{to_database}\""),
        ],
    );
    run_client_program(
        "pg_restore",
        &[
            "--exit-on-error",
            "--no-owner",
            "-d",
            &format!("{to_server}/{to_database}"),
            &dump_path,
        ],
    );
    let _ = std::fs::remove_file(dump);
}

/// A PostgreSQL cluster of the test's own on a free port, removed when dropped.
pub struct PrivateCluster {
    dir: PathBuf,
    pub port: u16,
}

impl PrivateCluster {
    /// Creates and starts a cluster. Asynchronous commits are flushed only every ten
    /// seconds (`wal_writer_delay`), so that an immediate stop loses any that have not been.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("aipm-test-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        if running_as_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(status.success(), "chown of {dir:?} failed");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let data = dir.join("data");
        let data_arg = data.to_string_lossy().to_string();
        run_server_program(
            "initdb",
            &[
                "-D",
                &data_arg,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let cluster = Self { dir, port };
        cluster.start_again().await;
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().to_string()
    }

    /// The server's URL (append `/<database>`).
    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Starts the cluster (again) and waits until it accepts connections.
    pub async fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c wal_writer_delay=10000",
            self.port,
            self.data()
        );
        let log = self.dir.join("data").join("server.log");
        run_server_program(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log.to_string_lossy(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/postgres", self.server_url());
        while PgConnection::connect(&url).await.is_err() {
            assert!(Instant::now() < deadline, "the private cluster did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the cluster at once, as a crash of PostgreSQL would: nothing not yet written to
    /// the WAL survives.
    pub fn stop_immediately(&self) {
        run_server_program("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }

    /// Stops the cluster cleanly.
    pub fn stop(&self) {
        run_server_program("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// Runs `pg_resetwal` with `args` on the stopped cluster.
    pub fn reset_wal(&self, args: &[&str]) {
        let mut all: Vec<&str> = args.to_vec();
        let data = self.data();
        all.push(&data);
        run_server_program("pg_resetwal", &all);
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let data = self.data();
        let binary = server_bin("pg_ctl");
        let mut command = if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(binary);
            command
        } else {
            Command::new(binary)
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
