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
