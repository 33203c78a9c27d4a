//! `aipm serve` as a process of its own, for tests that kill one with SIGKILL.

use std::process::Stdio;
use std::time::{Duration, Instant};

use integration_tests::harness::TestApp;

const START_DEADLINE: Duration = Duration::from_secs(60);

/// An `aipm serve` process on `app`'s database, killed with SIGKILL when dropped.
pub struct ServerProcess {
    child: std::process::Child,
    pub address: String,
}

impl ServerProcess {
    /// A process without the NATS feed.
    pub async fn start(app: &TestApp) -> Self {
        Self::start_with(app, &[("NATS_URL", "")]).await
    }

    /// A process with `env` added to its environment.
    pub async fn start_with(app: &TestApp, env: &[(&str, &str)]) -> Self {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address").port()
        };
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_aipm-process"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--db-connections",
                "8",
            ])
            .env("DATABASE_URL", &app.db.url)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aipm");
        let address = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while app.client.get(format!("{address}/healthz")).send().await.is_err() {
            assert!(started.elapsed() < START_DEADLINE, "aipm never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { child, address }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
