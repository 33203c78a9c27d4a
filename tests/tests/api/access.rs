//! Authentication, roles and tenant isolation.

use integration_tests::harness::{expect_each_not_found, expect_problem, expect_status, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_key_are_unauthorized_except_probes() {
    let app = TestApp::spawn().await;
    let anonymous = app
        .client
        .get(format!("{}/v1/prompts", app.address))
        .send()
        .await
        .unwrap();
    expect_problem(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let wrong = app
        .get(
            "/v1/prompts",
            "aipm_0000000000000000000000000000000000000000000000000000000000000000",
        )
        .await;
    expect_problem(wrong, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let garbage = app.get("/v1/prompts", "not even a key").await;
    expect_problem(garbage, StatusCode::UNAUTHORIZED, "unauthorized").await;
    for probe in ["/healthz", "/readyz"] {
        let response = app
            .client
            .get(format!("{}{probe}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{probe}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_gets_exactly_its_rights() {
    let app = TestApp::spawn().await;
    let prompt = app.create_prompt("p").await;
    let editor = app.key("acme", "editor").await;
    let viewer = app.key("acme", "viewer").await;
    let auditor = app.key("acme", "auditor").await;
    let ingest = app.key("acme", "ingest").await;

    let created = app
        .post("/v1/prompts", &editor, json!({ "name": "by-editor" }))
        .await;
    expect_status(created, StatusCode::CREATED).await;
    for reader in [&viewer, &auditor, &editor] {
        expect_status(
            app.get(&format!("/v1/prompts/{prompt}"), reader).await,
            StatusCode::OK,
        )
        .await;
    }
    for read_only in [&viewer, &auditor, &ingest] {
        let denied = app
            .post("/v1/prompts", read_only, json!({ "name": "nope" }))
            .await;
        expect_problem(denied, StatusCode::FORBIDDEN, "forbidden").await;
        let denied = app
            .post(
                &format!("/v1/prompts/{prompt}/versions"),
                read_only,
                json!({ "template": "x" }),
            )
            .await;
        expect_problem(denied, StatusCode::FORBIDDEN, "forbidden").await;
    }
    expect_problem(
        app.get("/v1/prompts", &ingest).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    for not_admin in [&editor, &viewer, &auditor] {
        let lag = app.get("/v1/system/projections", not_admin).await;
        expect_problem(lag, StatusCode::FORBIDDEN, "forbidden").await;
    }
    for not_admin in [&editor, &viewer, &auditor, &ingest] {
        expect_problem(
            app.get("/v1/keys", not_admin).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        let denied = app
            .post("/v1/keys", not_admin, json!({ "name": "k", "role": "admin" }))
            .await;
        expect_problem(denied, StatusCode::FORBIDDEN, "forbidden").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_issued_and_revoked_over_http_or_the_cli_take_effect_at_once() {
    let app = TestApp::spawn().await;
    let issued = app
        .post(
            "/v1/keys",
            &app.admin_key,
            json!({ "name": "ci", "role": "editor" }),
        )
        .await;
    let issued = expect_status(issued, StatusCode::CREATED).await;
    let secret = issued["key"].as_str().unwrap().to_string();
    let key_id = issued["api_key"]["id"].as_str().unwrap().to_string();
    assert_eq!(issued["api_key"]["role"], "editor");
    expect_status(app.get("/v1/prompts", &secret).await, StatusCode::OK).await;

    let listed = expect_status(app.get("/v1/keys", &app.admin_key).await, StatusCode::OK).await;
    let listed = listed.to_string();
    assert!(listed.contains(&key_id));
    assert!(!listed.contains(&secret), "secrets are never listed");
    let stored: i64 =
        sqlx::query_scalar("select count(*) from events where payload::text like '%' || $1 || '%'")
            .bind(&secret)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(stored, 0, "the secret is not in the event log");

    expect_status(
        app.delete(&format!("/v1/keys/{key_id}"), &app.admin_key).await,
        StatusCode::NO_CONTENT,
    )
    .await;
    expect_problem(
        app.get("/v1/prompts", &secret).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let again = app.delete(&format!("/v1/keys/{key_id}"), &app.admin_key).await;
    expect_problem(again, StatusCode::CONFLICT, "conflict").await;

    // The CLI path, against this running server.
    let (cli_key_id, cli_secret) = api::cli::create_key(app.pool(), "acme", "viewer", "from-cli")
        .await
        .unwrap();
    expect_status(app.get("/v1/prompts", &cli_secret).await, StatusCode::OK).await;
    api::cli::revoke_key(app.pool(), cli_key_id).await.unwrap();
    expect_problem(
        app.get("/v1/prompts", &cli_secret).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let bad_role = app
        .post("/v1/keys", &app.admin_key, json!({ "name": "x", "role": "root" }))
        .await;
    expect_problem(bad_role, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
}

/// Every endpoint, called by another tenant's admin on acme's resources, answers as if
/// they did not exist, and never changes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_can_neither_see_nor_touch_anything() {
    let app = TestApp::spawn().await;
    let acme = &app.admin_key;
    let category = expect_status(
        app.post("/v1/categories", acme, json!({ "name": "Secret" }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let category = category["id"].as_str().unwrap().to_string();
    let prompt = app.create_prompt("acme-secret-prompt").await;
    app.publish(&prompt, "secret {{x}}").await;
    app.publish(&prompt, "secret 2 {{x}}").await;
    expect_status(
        app.put(
            &format!("/v1/prompts/{prompt}/labels/production"),
            acme,
            json!({ "version": 1 }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let acme_key = expect_status(
        app.post("/v1/keys", acme, json!({ "name": "acme-ci", "role": "viewer" }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let acme_key_id = acme_key["api_key"]["id"].as_str().unwrap().to_string();
    let other = app.key("globex", "admin").await;
    // Acme's events only: globex's own reads of its key list are recorded in globex's log.
    let acme_events = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from events where tenant_id = 'acme'")
            .fetch_one(app.pool())
            .await
            .unwrap()
    };
    let events_before = acme_events().await;
    let p = format!("/v1/prompts/{prompt}");
    let c = format!("/v1/categories/{category}");
    let not_found: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::GET, p.clone(), None),
        (Method::GET, format!("{p}?as_of=2999-01-01T00:00:00Z"), None),
        (Method::PATCH, p.clone(), Some(json!({ "name": "stolen" }))),
        (
            Method::PUT,
            format!("{p}/category"),
            Some(json!({ "category": null })),
        ),
        (Method::POST, format!("{p}/tags"), Some(json!({ "tags": ["x"] }))),
        (Method::DELETE, format!("{p}/tags/x"), None),
        (Method::POST, format!("{p}/archive"), None),
        (Method::POST, format!("{p}/restore"), None),
        (
            Method::POST,
            format!("{p}/versions"),
            Some(json!({ "template": "x" })),
        ),
        (Method::GET, format!("{p}/versions"), None),
        (Method::GET, format!("{p}/versions/1"), None),
        (
            Method::PUT,
            format!("{p}/labels/production"),
            Some(json!({ "version": 2 })),
        ),
        (Method::DELETE, format!("{p}/labels/production"), None),
        (Method::GET, format!("{p}/resolve?label=production"), None),
        (Method::GET, format!("{p}/diff?from=1&to=2"), None),
        (Method::GET, format!("{p}/history"), None),
        (Method::GET, c.clone(), None),
        (Method::PATCH, c.clone(), Some(json!({ "name": "stolen" }))),
        (Method::DELETE, c.clone(), None),
        (Method::DELETE, format!("/v1/keys/{acme_key_id}"), None),
    ];
    expect_each_not_found(&app, &other, not_found, "acme").await;
    // Using acme's category from globex is refused as unknown.
    let foreign_category = app
        .post(
            "/v1/prompts",
            &other,
            json!({ "name": "x", "category": category }),
        )
        .await;
    expect_problem(
        foreign_category,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    // Lists show nothing of acme, and names are unique per tenant only.
    for list in ["/v1/prompts", "/v1/categories", "/v1/keys", "/v1/prompts?q=acme"] {
        let body = expect_status(app.get(list, &other).await, StatusCode::OK).await;
        let text = body.to_string();
        assert!(
            !text.contains(&prompt) && !text.contains(&category) && !text.contains(&acme_key_id),
            "{list}: {text}"
        );
    }
    assert_eq!(
        acme_events().await,
        events_before,
        "globex changed nothing of acme's"
    );
    expect_status(
        app.post("/v1/prompts", &other, json!({ "name": "acme-secret-prompt" }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let acme_view = expect_status(app.get(&p, acme).await, StatusCode::OK).await;
    assert_eq!(acme_view["name"], "acme-secret-prompt");
    assert_eq!(acme_view["labels"], json!({ "production": 1 }));
}
