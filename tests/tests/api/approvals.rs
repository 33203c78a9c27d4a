//! Four-eyes approval: a change to something protected waits for another key.

use integration_tests::harness::{expect_each_not_found, expect_problem, expect_status, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn protect(app: &TestApp, scope: &str) {
    expect_status(
        app.put(&format!("/v1/protections/{scope}"), &app.admin_key, json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
}

async fn events_by(app: &TestApp, id: &str) -> Vec<(String, String)> {
    let history = expect_status(
        app.get(&format!("/v1/change-requests/{id}/history"), &app.admin_key)
            .await,
        StatusCode::OK,
    )
    .await;
    history["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().expect("event type").to_string(),
                e["actor"]["name"].as_str().expect("actor").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_change_applies_only_when_another_admin_approves_it() {
    let app = TestApp::spawn().await;
    let proposer = &app.admin_key;
    let approver = app.key("acme", "admin").await;
    protect(&app, "config:limits.").await;
    let listed = expect_status(app.get("/v1/protections", proposer).await, StatusCode::OK).await;
    assert_eq!(listed["items"][0]["scope"], "config:limits.");

    let proposed = app
        .put(
            "/v1/config/limits.max_output_tokens",
            proposer,
            json!({ "value": 8000, "reason": "holiday traffic" }),
        )
        .await;
    let location = proposed.headers()["location"].to_str().unwrap().to_string();
    let request = expect_status(proposed, StatusCode::ACCEPTED).await;
    let id = request["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/change-requests/{id}"));
    assert_eq!(request["state"], "proposed");
    assert_eq!(
        request["change"],
        json!({ "kind": "set_config", "key": "limits.max_output_tokens", "value": 8000 })
    );
    assert_eq!(request["proposer_name"], "test-admin");
    assert_eq!(request["reason"], "holiday traffic");
    let unset = app.get("/v1/config/limits.max_output_tokens", proposer).await;
    expect_problem(unset, StatusCode::NOT_FOUND, "not-found").await;
    // Outside the protected prefix, changes apply at once.
    set_directly(&app, "routing.default_model", json!("openai/gpt-4o-mini")).await;

    let own = app
        .post(&format!("/v1/change-requests/{id}/approve"), proposer, json!({}))
        .await;
    let problem = expect_problem(own, StatusCode::FORBIDDEN, "own-approval").await;
    assert!(problem["detail"].as_str().unwrap().contains("another key"));
    let editor = app.key("acme", "editor").await;
    let by_editor = app
        .post(&format!("/v1/change-requests/{id}/approve"), &editor, json!({}))
        .await;
    expect_problem(by_editor, StatusCode::FORBIDDEN, "forbidden").await;
    let still = app.get("/v1/config/limits.max_output_tokens", proposer).await;
    expect_problem(still, StatusCode::NOT_FOUND, "not-found").await;

    let approved = expect_status(
        app.post(
            &format!("/v1/change-requests/{id}/approve"),
            &approver,
            json!({ "reason": "checked the capacity plan" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["decided_by_name"], "acme-admin");
    assert_eq!(approved["decision_reason"], "checked the capacity plan");
    let value = expect_status(
        app.get("/v1/config/limits.max_output_tokens", proposer).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(value["value"], 8000);
    assert_eq!(approved["applied_version"], value["version"]);
    assert_eq!(
        events_by(&app, &id).await,
        [
            ("ChangeProposed".to_string(), "test-admin".to_string()),
            ("ChangeApproved".to_string(), "acme-admin".to_string())
        ]
    );
    // The change itself is the approver's, caused by the request.
    let (actor, causation): (String, String) = sqlx::query_as(
        "select metadata->>'actor_name', metadata->>'causation_id' from events
         where aggregate_type = 'config' and event_type = 'ConfigValueSet' and aggregate_id = 'acme:limits.max_output_tokens'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!((actor.as_str(), causation.as_str()), ("acme-admin", id.as_str()));
    let again = app
        .post(&format!("/v1/change-requests/{id}/approve"), &approver, json!({}))
        .await;
    expect_problem(again, StatusCode::CONFLICT, "conflict").await;

    // Clearing a protected key is a request too; an editor may propose.
    let clear = app
        .request(Method::DELETE, "/v1/config/limits.max_output_tokens", &editor)
        .header("X-Reason", "back to the default")
        .send()
        .await
        .unwrap();
    let clear = expect_status(clear, StatusCode::ACCEPTED).await;
    assert_eq!(clear["change"]["kind"], "clear_config");
    let pending = expect_status(
        app.get("/v1/change-requests?state=proposed", proposer).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(pending["items"].as_array().unwrap().len(), 1);
    // A value the key's schema refuses is refused before it is proposed.
    expect_status(
        app.put(
            "/v1/config-schemas/limits.max_output_tokens",
            proposer,
            json!({ "schema": { "type": "integer", "maximum": 32000 }, "reason": "bound" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let refused = app
        .put(
            "/v1/config/limits.max_output_tokens",
            proposer,
            json!({ "value": 64000, "reason": "more" }),
        )
        .await;
    expect_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
}

async fn set_directly(app: &TestApp, key: &str, value: Value) {
    expect_status(
        app.put(
            &format!("/v1/config/{key}"),
            &app.admin_key,
            json!({ "value": value, "reason": "r" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_label_moves_only_with_approval_and_a_rejection_needs_a_reason() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let reviewer = app.key("acme", "admin").await;
    let prompt = app.create_prompt("support-reply").await;
    app.publish(&prompt, "v1 {{x}}").await;
    app.publish(&prompt, "v2 {{x}}").await;
    let label = format!("/v1/prompts/{prompt}/labels/production");
    expect_status(
        app.put(&label, key, json!({ "version": 1 })).await,
        StatusCode::OK,
    )
    .await;
    protect(&app, &format!("prompt:{prompt}:production")).await;

    let request = expect_status(
        app.put(&label, key, json!({ "version": 2, "reason": "ship v2" }))
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    let id = request["id"].as_str().unwrap().to_string();
    assert_eq!(
        request["change"],
        json!({ "kind": "move_prompt_label", "prompt": prompt, "label": "production", "version": 2 })
    );
    // Other labels of the prompt are not protected.
    expect_status(
        app.put(
            &format!("/v1/prompts/{prompt}/labels/staging"),
            key,
            json!({ "version": 2 }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let no_reason = app
        .post(&format!("/v1/change-requests/{id}/reject"), &reviewer, json!({}))
        .await;
    let problem = expect_problem(no_reason, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    assert_eq!(problem["errors"][0]["field"], "reason");
    let rejected = expect_status(
        app.post(
            &format!("/v1/change-requests/{id}/reject"),
            &reviewer,
            json!({ "reason": "v2 invents order numbers" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(rejected["state"], "rejected");
    let resolved = expect_status(
        app.get(&format!("/v1/prompts/{prompt}/resolve?label=production"), key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(resolved["version"], 1, "a rejected change is never made");
    let late = app
        .post(&format!("/v1/change-requests/{id}/approve"), &reviewer, json!({}))
        .await;
    expect_problem(late, StatusCode::CONFLICT, "conflict").await;

    // Removing the protected label is a request, approved by the other admin.
    let removal = app.delete(&label, key).await;
    let removal = expect_status(removal, StatusCode::ACCEPTED).await;
    let removal = removal["id"].as_str().unwrap().to_string();
    expect_status(
        app.post(
            &format!("/v1/change-requests/{removal}/approve"),
            &reviewer,
            json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let gone = app
        .get(&format!("/v1/prompts/{prompt}/resolve?label=production"), key)
        .await;
    expect_problem(gone, StatusCode::NOT_FOUND, "not-found").await;

    for bad in ["config:", "prompt:nope:production", "limits."] {
        let refused = app.put(&format!("/v1/protections/{bad}"), key, json!({})).await;
        expect_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    }
    let viewer = app.key("acme", "editor").await;
    let refused = app.put("/v1/protections/config:x.", &viewer, json!({})).await;
    expect_problem(refused, StatusCode::FORBIDDEN, "forbidden").await;

    // Another tenant sees none of it, and acme's protections do not bind it.
    let other = app.key("globex", "admin").await;
    expect_each_not_found(
        &app,
        &other,
        vec![
            (Method::GET, format!("/v1/change-requests/{id}"), None),
            (Method::GET, format!("/v1/change-requests/{id}/history"), None),
            (
                Method::POST,
                format!("/v1/change-requests/{removal}/approve"),
                Some(json!({})),
            ),
            (
                Method::POST,
                format!("/v1/change-requests/{id}/reject"),
                Some(json!({ "reason": "r" })),
            ),
            (
                Method::DELETE,
                format!("/v1/protections/prompt:{prompt}:production"),
                None,
            ),
        ],
        "acme",
    )
    .await;
    for listing in ["/v1/change-requests", "/v1/protections"] {
        let theirs = expect_status(app.get(listing, &other).await, StatusCode::OK).await;
        assert_eq!(theirs["items"], json!([]), "{listing}");
    }
    expect_status(
        app.delete(&format!("/v1/protections/prompt:{prompt}:production"), key)
            .await,
        StatusCode::NO_CONTENT,
    )
    .await;
    expect_status(
        app.put(&label, key, json!({ "version": 2 })).await,
        StatusCode::OK,
    )
    .await;
}
