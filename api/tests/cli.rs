//! The `aipm` binary as an operator meets it.

use std::process::Command;

fn aipm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aipm"))
}

#[test]
fn an_unreachable_database_is_one_clear_line_and_a_non_zero_exit() {
    let output = aipm()
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/aipm")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot reach PostgreSQL at 127.0.0.1:1/aipm"),
        "{stderr}"
    );
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn keys_create_prints_the_key_alone_on_the_last_line_and_rejects_bad_input() {
    let database = format!("aipm_test_cli_{}", std::process::id());
    let url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let output = aipm()
        .env("DATABASE_URL", &url)
        .args([
            "keys", "create", "--tenant", "acme", "--role", "viewer", "--name", "ci",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with("aipm_") && last.len() == 69, "{stdout}");
    assert!(last[5..].chars().all(|c| c.is_ascii_hexdigit()), "{stdout}");

    let bad_role = aipm()
        .env("DATABASE_URL", &url)
        .args([
            "keys", "create", "--tenant", "acme", "--role", "root", "--name", "ci",
        ])
        .output()
        .unwrap();
    assert_eq!(bad_role.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_role.stderr).contains("unknown role"));

    let _ = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"])
        .arg(format!("drop database if exists \"{database}\" with (force)"))
        .output();
}

#[test]
fn without_a_subcommand_it_serves_on_the_address_from_the_environment() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = probe.local_addr().unwrap().to_string();
    drop(probe);
    let mut server = aipm()
        .env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/aipm_test_cli_default",
        )
        .env("AIPM_LISTEN", &address)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut answered = false;
    for _ in 0..100 {
        if let Ok(mut stream) = std::net::TcpStream::connect(&address) {
            use std::io::{Read, Write};
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response);
            answered = response.starts_with("HTTP/1.1 200");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"])
        .arg("drop database if exists aipm_test_cli_default with (force)")
        .output();
    assert!(answered, "no answer on {address}");
}

#[test]
fn audit_verify_exits_non_zero_naming_the_first_tampered_entry() {
    let database = format!("aipm_test_cli_audit_{}", std::process::id());
    let url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let psql = |sql: &str| {
        let output = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(if sql.starts_with("drop database") {
                "postgres"
            } else {
                &database
            })
            .arg("-qc")
            .arg(sql)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let verify = |tenant: Option<&str>| {
        let mut command = aipm();
        command.env("DATABASE_URL", &url).args(["audit", "verify"]);
        if let Some(tenant) = tenant {
            command.args(["--tenant", tenant]);
        }
        command.output().unwrap()
    };
    // A tenant and its first key: two events, audited when the CLI brings the read models up.
    let created = aipm()
        .env("DATABASE_URL", &url)
        .args([
            "keys", "create", "--tenant", "acme", "--role", "admin", "--name", "ci",
        ])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );

    let intact = verify(Some("acme"));
    let stdout = String::from_utf8_lossy(&intact.stdout);
    assert_eq!(intact.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("acme: ok, 2 entries, head #2 "), "{stdout}");

    psql(
        "begin; set local session_replication_role = replica;
         update events set metadata = jsonb_set(metadata, '{actor_name}', '\"someone-else\"')
         where aggregate_type = 'api_key'; commit;",
    );
    for tenant in [Some("acme"), None] {
        let tampered = verify(tenant);
        let stderr = String::from_utf8_lossy(&tampered.stderr);
        assert_eq!(tampered.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("tenant acme does not match the event log at entry #2 (content differs)"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        let stdout = String::from_utf8_lossy(&tampered.stdout);
        assert!(stdout.contains("acme: MISMATCH at entry #2"), "{stdout}");
    }
    let unknown = verify(Some("nobody"));
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no events and no audit entries"));

    psql(&format!("drop database if exists \"{database}\" with (force)"));
}

/// One HTTP/1.1 request; the status and the body.
fn http(address: &str, request: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

fn get(address: &str, path: &str, key: &str) -> Option<(u16, String)> {
    http(
        address,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
        ),
    )
}

/// `aipm serve` without `DATABASE_URL`, on a private PostgreSQL in `data_dir`, its log in
/// `log`; returns once it is ready.
fn serve_privately(data_dir: &std::path::Path, log: &std::path::Path) -> (std::process::Child, String) {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let address = probe.local_addr().expect("its address").to_string();
    drop(probe);
    let mut server = aipm()
        .env_remove("DATABASE_URL")
        .env("AIPM_DATA_DIR", data_dir)
        .env("NATS_URL", "")
        .env("AIPM_LISTEN", &address)
        .args(["serve", "--health-prober", "false"])
        .stderr(std::fs::File::create(log).expect("a log file"))
        .spawn()
        .expect("aipm serve starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Some((200, _)) = get(&address, "/readyz", "") {
            return (server, address);
        }
        if let Some(status) = server.try_wait().expect("its state") {
            panic!(
                "aipm serve exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "aipm serve never became ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Stops `server` with SIGTERM, as a service manager would, and waits for it to exit.
fn terminate(mut server: std::process::Child) -> std::process::ExitStatus {
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = server.try_wait().expect("its state") {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "aipm serve did not stop");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn without_database_url_it_runs_a_private_postgresql_in_the_data_folder_and_stops_it() {
    let data_dir = std::env::temp_dir().join(format!("aipm-first-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let logs = std::env::temp_dir().join(format!("aipm-first-run-logs-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();
    let pid_file = data_dir.join("postgres").join("postmaster.pid");

    let (server, address) = serve_privately(&data_dir, &logs.join("first.log"));
    let log = std::fs::read_to_string(logs.join("first.log")).unwrap();
    let said: Vec<&str> = log.lines().filter(|l| l.contains("private PostgreSQL")).collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains("started a private PostgreSQL"), "{log}");
    assert!(
        said[0].contains(&data_dir.join("postgres").display().to_string()),
        "{log}"
    );
    assert!(said[0].contains("socket"), "{log}");
    assert!(said[0].contains("because AIPM_DATA_DIR is set"), "{log}");
    assert!(pid_file.exists());
    assert!(
        !log.contains(":5432"),
        "the private server must not have been confused with the shared one: {log}"
    );

    // A second command while serve runs uses the running server, and leaves it running.
    let created = aipm()
        .env_remove("DATABASE_URL")
        .env("AIPM_DATA_DIR", &data_dir)
        .args([
            "keys",
            "create",
            "--tenant",
            "acme",
            "--role",
            "admin",
            "--name",
            "first-run",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert!(created.status.success(), "{stderr}");
    assert!(stderr.contains("already running in"), "{stderr}");
    assert!(!stderr.contains("stopped the private PostgreSQL"), "{stderr}");
    assert!(pid_file.exists(), "keys create stopped the server serve uses");
    let stdout = String::from_utf8(created.stdout).unwrap();
    let key = stdout.lines().last().unwrap().to_string();

    let body = r#"{"name":"first-run","description":"made on a private PostgreSQL"}"#;
    let (status, answer) = http(
        &address,
        &format!(
            "POST /v1/prompts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap();
    assert_eq!(status, 201, "{answer}");
    let id = answer
        .split("\"id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();

    assert!(terminate(server).success());
    assert!(
        !pid_file.exists(),
        "the private PostgreSQL still runs after serve stopped"
    );
    let log = std::fs::read_to_string(logs.join("first.log")).unwrap();
    assert!(log.contains("stopped the private PostgreSQL"), "{log}");
    // Nothing still running complains of the server going away.
    let after = log.split("shutting down").nth(1).unwrap();
    assert!(!after.contains("WARN") && !after.contains("ERROR"), "{log}");

    // Started again, the server finds the data it had.
    let (server, address) = serve_privately(&data_dir, &logs.join("second.log"));
    let (status, prompt) = get(&address, &format!("/v1/prompts/{id}"), &key).unwrap();
    assert_eq!(status, 200, "{prompt}");
    assert!(prompt.contains("made on a private PostgreSQL"), "{prompt}");
    assert!(terminate(server).success());
    assert!(
        !pid_file.exists(),
        "the private PostgreSQL still runs after serve stopped"
    );

    std::fs::remove_dir_all(&data_dir).unwrap();
    std::fs::remove_dir_all(&logs).unwrap();
}

#[test]
fn a_bad_database_url_is_refused_as_before_and_no_private_postgresql_is_tried() {
    let output = aipm()
        .env("DATABASE_URL", "not a url")
        .args(["keys", "revoke", "00000000-0000-0000-0000-000000000000"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("invalid DATABASE_URL \"not a url\""), "{stderr}");
    assert!(!stderr.contains("private PostgreSQL"), "{stderr}");
}

#[test]
fn two_commands_starting_at_once_share_one_private_postgresql_and_the_last_out_stops_it() {
    let data_dir = std::env::temp_dir().join(format!("aipm-first-run-race-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    // An empty DATABASE_URL counts as unset, as for the second command.
    let start = |tenant: &str| {
        let mut command = aipm();
        if tenant == "first" {
            command.env("DATABASE_URL", "");
        } else {
            command.env_remove("DATABASE_URL");
        }
        command
            .env("AIPM_DATA_DIR", &data_dir)
            .args([
                "keys", "create", "--tenant", tenant, "--role", "viewer", "--name", "race",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (start("first"), start("second"));
    let mut started = 0;
    let mut keys = Vec::new();
    for command in [first, second] {
        let output = command.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        started += stderr.matches("started a private PostgreSQL").count();
        let stdout = String::from_utf8(output.stdout).unwrap();
        keys.push(stdout.lines().last().unwrap().to_string());
    }
    // The loser of the race used the winner's server, unless the winner was done before.
    assert!((1..=2).contains(&started), "{started}");
    assert!(data_dir.join("postgres").join("PG_VERSION").is_file());
    assert!(!data_dir.join("postgres.partial").exists());
    assert!(
        !data_dir.join("postgres").join("postmaster.pid").exists(),
        "the last command out did not stop the private PostgreSQL"
    );
    assert!(!data_dir.join("aipm.started").exists());

    // Both keys are in the one database.
    let (server, address) = serve_privately(&data_dir, &data_dir.join("serve.log"));
    for key in &keys {
        let (status, body) = get(&address, "/v1/prompts", key).unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert!(terminate(server).success());
    std::fs::remove_dir_all(&data_dir).unwrap();
}

#[test]
fn as_root_a_data_folder_the_postgres_user_cannot_reach_is_refused_saying_why() {
    let id = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&id.stdout).trim() != "0" {
        eprintln!("not root: the server programs run as this user, who reaches its folders");
        return;
    }
    // A folder only root may enter, as /root is.
    let closed = std::env::temp_dir().join(format!("aipm-closed-{}", std::process::id()));
    std::fs::create_dir_all(&closed).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let data_dir = closed.join("data");
    let output = aipm()
        .env_remove("DATABASE_URL")
        .env("AIPM_DATA_DIR", &data_dir)
        .args(["keys", "revoke", "00000000-0000-0000-0000-000000000000"])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&closed).unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "run as user `postgres` (aipm runs as root), who cannot enter {}",
            data_dir.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("set AIPM_DATA_DIR"), "{stderr}");
}
