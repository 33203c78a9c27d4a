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
