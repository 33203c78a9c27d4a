//! PostgreSQL beyond a database of the shared server: a cluster of a test's own, for what
//! cannot be done to the shared server (stopping it at once, restoring into a cluster whose
//! transaction counter is elsewhere), and copying a database with pg_dump and pg_restore.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use api::private_postgres::ServerPrograms;

use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// PostgreSQL's server programs, as aipm finds them for its private server (run as the
/// `postgres` user when this process is root).
fn server_programs() -> ServerPrograms {
    ServerPrograms::find().unwrap_or_else(|e| panic!("{e}"))
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
    programs: ServerPrograms,
    pub port: u16,
}

impl PrivateCluster {
    /// Creates and starts a cluster. Asynchronous commits are flushed only every ten
    /// seconds (`wal_writer_delay`), so that an immediate stop loses any that have not been.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("aipm-test-pg-{}", Uuid::new_v4().simple()));
        let programs = server_programs();
        programs.prepare_folder(&dir).unwrap_or_else(|e| panic!("{e}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let data = dir.join("data");
        let data_arg = data.to_string_lossy().to_string();
        let cluster = Self { dir, programs, port };
        cluster.run_server_program(
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
        cluster.start_again().await;
        cluster
    }

    /// Runs a server program and fails the test with its output if it fails.
    fn run_server_program(&self, program: &str, args: &[&str]) {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        self.programs
            .run(program, &args, &self.dir)
            .unwrap_or_else(|e| panic!("{e}"));
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
        self.run_server_program(
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
        self.run_server_program("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }

    /// Stops the cluster cleanly.
    pub fn stop(&self) {
        self.run_server_program("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// Runs `pg_resetwal` with `args` on the stopped cluster.
    pub fn reset_wal(&self, args: &[&str]) {
        let mut all: Vec<&str> = args.to_vec();
        let data = self.data();
        all.push(&data);
        self.run_server_program("pg_resetwal", &all);
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .programs
            .command("pg_ctl", &self.dir)
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
