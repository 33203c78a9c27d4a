//! Exports in end-to-end tests: request one and wait for it, download its file (checked
//! against the size and hash the job states), and read CSV and JSON files back.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::{expect_status, TestApp};

/// Requests an export with `key` and waits for it to finish; its final state.
pub async fn export_as(app: &TestApp, key: &str, body: Value) -> Value {
    let accepted = expect_status(app.post("/v1/exports", key, body).await, StatusCode::ACCEPTED).await;
    let id = accepted["id"].as_str().expect("id").to_string();
    finished(app, &id).await
}

/// [`export_as`] with the admin key.
pub async fn export(app: &TestApp, body: Value) -> Value {
    export_as(app, &app.admin_key, body).await
}

/// The export `id` once it is neither queued nor running.
pub async fn finished(app: &TestApp, id: &str) -> Value {
    for _ in 0..600 {
        let job = expect_status(
            app.get(&format!("/v1/exports/{id}"), &app.admin_key).await,
            StatusCode::OK,
        )
        .await;
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("export {id} did not finish");
}

/// The file of a done export and its headers, checked against its stated size and hash.
pub async fn download_response(app: &TestApp, job: &Value) -> (HeaderMap, Vec<u8>) {
    assert_eq!(job["status"], "done", "{job}");
    let url = job["download_url"].as_str().expect("download url");
    let response = app.get(url, &app.admin_key).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("file").to_vec();
    assert_eq!(bytes.len() as i64, job["size_bytes"].as_i64().expect("size"));
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        job["content_sha256"],
        "the file is what the job says"
    );
    (headers, bytes)
}

/// The file of a done export; see [`download_response`].
pub async fn download(app: &TestApp, job: &Value) -> Vec<u8> {
    download_response(app, job).await.1
}

/// A CSV of plain fields (none quoted) as rows of fields, the header first.
pub fn csv_rows(bytes: &[u8]) -> Vec<Vec<String>> {
    let text = std::str::from_utf8(bytes).expect("UTF-8");
    assert!(text.ends_with("\r\n"), "records end with CRLF");
    text.split_terminator("\r\n")
        .map(|line| line.split(',').map(str::to_string).collect())
        .collect()
}

/// The field of `row` under the header `name`.
pub fn column<'a>(rows: &'a [Vec<String>], row: usize, name: &str) -> &'a str {
    let at = rows[0].iter().position(|header| header == name).expect("column");
    &rows[row][at]
}

/// The rows of `section` in a JSON export's document.
pub fn section_rows<'a>(document: &'a Value, section: &str) -> &'a Vec<Value> {
    document["sections"][section]["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no section {section}: {document}"))
}
