//! Prompt categories: create, rename, delete only when empty, enforced by the write side.

use integration_tests::harness::{expect_problem, expect_status, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_category_can_be_renamed_and_deleted_only_once_empty() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let created = expect_status(
        app.post("/v1/categories", key, json!({ "name": "Support" }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    let duplicate = app
        .post("/v1/categories", key, json!({ "name": "support" }))
        .await;
    expect_problem(duplicate, StatusCode::CONFLICT, "name-taken").await;

    let renamed = expect_status(
        app.patch(
            &format!("/v1/categories/{id}"),
            key,
            json!({ "name": "Customer support" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(renamed["name"], "Customer support");
    // The old name is free again.
    let other = expect_status(
        app.post("/v1/categories", key, json!({ "name": "Support" }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let other = other["id"].as_str().unwrap().to_string();

    let prompt = expect_status(
        app.post("/v1/prompts", key, json!({ "name": "p", "category": id }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let prompt = prompt["id"].as_str().unwrap().to_string();
    let refused = app.delete(&format!("/v1/categories/{id}"), key).await;
    let problem = expect_problem(refused, StatusCode::CONFLICT, "conflict").await;
    assert!(problem["detail"].as_str().unwrap().contains("1 prompt"));

    let moved = expect_status(
        app.put(
            &format!("/v1/prompts/{prompt}/category"),
            key,
            json!({ "category": other }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(moved["category"], other.as_str());
    let counts = expect_status(app.get("/v1/categories", key).await, StatusCode::OK).await;
    let count_of = |name: &str| {
        counts["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["prompt_count"]
            .clone()
    };
    assert_eq!(count_of("Customer support"), 0);
    assert_eq!(count_of("Support"), 1);

    expect_status(
        app.delete(&format!("/v1/categories/{id}"), key).await,
        StatusCode::NO_CONTENT,
    )
    .await;
    expect_problem(
        app.get(&format!("/v1/categories/{id}"), key).await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    let into_deleted = app
        .put(
            &format!("/v1/prompts/{prompt}/category"),
            key,
            json!({ "category": id }),
        )
        .await;
    expect_problem(
        into_deleted,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    expect_status(
        app.post("/v1/categories", key, json!({ "name": "Customer support" }))
            .await,
        StatusCode::CREATED,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prompt_created_in_a_category_being_deleted_and_the_delete_never_both_succeed() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    for round in 0..20 {
        let category = expect_status(
            app.post(
                "/v1/categories",
                key,
                json!({ "name": format!("doomed-{round}") }),
            )
            .await,
            StatusCode::CREATED,
        )
        .await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let create = app.post(
            "/v1/prompts",
            key,
            json!({ "name": format!("joiner-{round}"), "category": category }),
        );
        let category_path = format!("/v1/categories/{category}");
        let delete = app.delete(&category_path, key);
        let (created, deleted) = tokio::join!(create, delete);
        let (created, deleted) = (created.status(), deleted.status());
        match (created, deleted) {
            (StatusCode::CREATED, StatusCode::CONFLICT) => {
                let kept = expect_status(
                    app.get(&format!("/v1/categories/{category}"), key).await,
                    StatusCode::OK,
                )
                .await;
                assert_eq!(kept["prompt_count"], 1, "round {round}");
            }
            (StatusCode::UNPROCESSABLE_ENTITY, StatusCode::NO_CONTENT) => {}
            other => panic!("round {round}: exactly one of the two must succeed, got {other:?}"),
        }
    }
    let orphans: i64 = sqlx::query_scalar(
        "select count(*) from prompt p
         where p.category_id is not null
           and not exists (select 1 from prompt_category c where c.category_id = p.category_id)",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(orphans, 0, "no prompt is left in a deleted category");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_answer_with_what_they_committed_while_readers_of_the_log_are_held_back() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    // A transaction of aipm's own database holding an id: every reader of the global order
    // (the audit log, the feeds) stops before it until it ends.
    let mut holder = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::query("begin").execute(&mut holder).await.unwrap();
    sqlx::query("select pg_current_xact_id()")
        .execute(&mut holder)
        .await
        .unwrap();

    let issued = app
        .request(reqwest::Method::POST, "/v1/keys", key)
        .header("idempotency-key", "held-back-key")
        .json(&json!({ "name": "issued-while-held", "role": "viewer" }))
        .send()
        .await
        .unwrap();
    let issued = expect_status(issued, StatusCode::CREATED).await;
    assert_eq!(issued["api_key"]["name"], "issued-while-held");
    let secret = issued["key"].as_str().unwrap();
    expect_status(app.get("/v1/prompts", secret).await, StatusCode::OK).await;

    let created = expect_status(
        app.post("/v1/categories", key, json!({ "name": "made-while-held" }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(created["name"], "made-while-held");
    assert_eq!(created["prompt_count"], 0);
    let id = created["id"].as_str().unwrap();
    let read = expect_status(
        app.get(&format!("/v1/categories/{id}"), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(read, created);
    sqlx::query("rollback").execute(&mut holder).await.unwrap();
}
