//! The prompt lifecycle: create, versions, labels, resolve, rollback, diff, history, as_of,
//! listing.

use integration_tests::harness::{expect_problem, expect_status, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_walks_through_versions_labels_rollback_and_history() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let created = app
        .post(
            "/v1/prompts",
            key,
            json!({ "name": "greeting", "description": "hi", "tags": ["support"] }),
        )
        .await;
    assert_eq!(created.headers()["etag"], "\"1\"");
    let location = created.headers()["location"].to_str().unwrap().to_string();
    let prompt = expect_status(created, StatusCode::CREATED).await;
    let id = prompt["id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/prompts/{id}"));
    assert_eq!(prompt["latest_version"], 0);
    assert_eq!(prompt["tags"], json!(["support"]));

    let v1 = app
        .post(
            &format!("/v1/prompts/{id}/versions"),
            key,
            json!({ "template": "Hello {{name}}", "params": { "temperature": 0.2 }, "message": "first" }),
        )
        .await;
    let v1 = expect_status(v1, StatusCode::CREATED).await;
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["variables"], json!(["name"]));
    let v2 = app.post(&format!("/v1/prompts/{id}/versions"), key, json!({ "template": "Hi {{name}}, about {{ topic }}", "model": "openai/gpt-4o", "params": { "temperature": 0.5 } })).await;
    assert_eq!(expect_status(v2, StatusCode::CREATED).await["version"], 2);

    let labelled = app
        .put(
            &format!("/v1/prompts/{id}/labels/production"),
            key,
            json!({ "version": 2 }),
        )
        .await;
    assert_eq!(
        expect_status(labelled, StatusCode::OK).await["labels"],
        json!({ "production": 2 })
    );
    let resolved = expect_status(
        app.get(&format!("/v1/prompts/{id}/resolve?label=production"), key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(resolved["version"], 2);
    assert_eq!(resolved["template"], "Hi {{name}}, about {{ topic }}");
    assert_eq!(resolved["variables"], json!(["name", "topic"]));
    assert_eq!(resolved["model"], "openai/gpt-4o");
    assert_eq!(resolved["params"], json!({ "temperature": 0.5 }));
    let before_rollback = chrono::Utc::now();

    // Rollback is moving the label back, with a reason.
    let rolled_back = app
        .request(Method::PUT, &format!("/v1/prompts/{id}/labels/production"), key)
        .header("x-reason", "v2 hallucinates")
        .header("x-request-id", "rollback-1")
        .json(&json!({ "version": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(rolled_back.headers()["x-request-id"], "rollback-1");
    expect_status(rolled_back, StatusCode::OK).await;
    let resolved = expect_status(
        app.get(&format!("/v1/prompts/{id}/resolve?label=production"), key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(resolved["version"], 1);

    let history = expect_status(
        app.get(&format!("/v1/prompts/{id}/history"), key).await,
        StatusCode::OK,
    )
    .await;
    let items = history["items"].as_array().unwrap();
    let types: Vec<&str> = items.iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "PromptCreated",
            "PromptVersionPublished",
            "PromptVersionPublished",
            "PromptLabelMoved",
            "PromptLabelMoved"
        ]
    );
    let rollback = &items[4];
    assert_eq!(rollback["reason"], "v2 hallucinates");
    assert_eq!(rollback["request_id"], "rollback-1");
    assert_eq!(rollback["actor"]["name"], "test-admin");
    assert_eq!(
        rollback["data"],
        json!({ "label": "production", "version": 1, "previous_version": 2 })
    );
    assert!(rollback["actor"]["key_id"].is_string());
    assert!(rollback["recorded_at"].is_string());

    // As of just before the rollback, production pointed at 2.
    let as_of = before_rollback.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let past = app
        .get(
            &format!("/v1/prompts/{id}?as_of={}", as_of.replace('+', "%2B")),
            key,
        )
        .await;
    assert_eq!(past.headers()["etag"], "\"4\"");
    let past = expect_status(past, StatusCode::OK).await;
    assert_eq!(past["labels"], json!({ "production": 2 }));
    assert_eq!(past["latest_version"], 2);
    let now = expect_status(app.get(&format!("/v1/prompts/{id}"), key).await, StatusCode::OK).await;
    assert_eq!(now["labels"], json!({ "production": 1 }));
    assert_eq!(now["version"], 5);
    let before_creation = app
        .get(&format!("/v1/prompts/{id}?as_of=2000-01-01T00:00:00Z"), key)
        .await;
    expect_problem(before_creation, StatusCode::NOT_FOUND, "not-found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diff_shows_template_lines_and_changed_parameters() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let id = app.create_prompt("summariser").await;
    let path = format!("/v1/prompts/{id}/versions");
    expect_status(
        app.post(
            &path,
            key,
            json!({ "template": "Line one\nLine two\n", "params": { "temperature": 0.2, "top_p": 1 } }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    expect_status(app.post(&path, key, json!({ "template": "Line one\nLine 2\n", "params": { "temperature": 0.7, "top_p": 1, "seed": 7 } })).await, StatusCode::CREATED).await;
    let diff = expect_status(
        app.get(&format!("/v1/prompts/{id}/diff?from=1&to=2"), key).await,
        StatusCode::OK,
    )
    .await;
    let lines = diff["template"]["lines"].as_array().unwrap();
    assert_eq!(lines[0], json!({ "op": "equal", "text": "Line one" }));
    assert!(lines.contains(&json!({ "op": "delete", "text": "Line two" })));
    assert!(lines.contains(&json!({ "op": "insert", "text": "Line 2" })));
    assert!(diff["template"]["unified"]
        .as_str()
        .unwrap()
        .contains("-Line two"));
    assert_eq!(
        diff["params"],
        json!([{ "key": "seed", "from": null, "to": 7 }, { "key": "temperature", "from": 0.2, "to": 0.7 }])
    );
    let missing = app.get(&format!("/v1/prompts/{id}/diff?from=1&to=9"), key).await;
    expect_problem(missing, StatusCode::NOT_FOUND, "not-found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_tags_archive_and_restore_change_what_reads_show() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let id = app.create_prompt("triage").await;
    let renamed = app
        .patch(
            &format!("/v1/prompts/{id}"),
            key,
            json!({ "name": "triage-v2", "description": "routes tickets" }),
        )
        .await;
    let renamed = expect_status(renamed, StatusCode::OK).await;
    assert_eq!(renamed["name"], "triage-v2");
    assert_eq!(renamed["description"], "routes tickets");
    let tagged = expect_status(
        app.post(
            &format!("/v1/prompts/{id}/tags"),
            key,
            json!({ "tags": ["b", "a"] }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(tagged["tags"], json!(["a", "b"]));
    let untagged = expect_status(
        app.delete(&format!("/v1/prompts/{id}/tags/a"), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(untagged["tags"], json!(["b"]));
    let archived = expect_status(
        app.request(Method::POST, &format!("/v1/prompts/{id}/archive"), key)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(archived["archived"], true);
    let publish = app
        .post(
            &format!("/v1/prompts/{id}/versions"),
            key,
            json!({ "template": "x" }),
        )
        .await;
    expect_problem(publish, StatusCode::CONFLICT, "conflict").await;
    let restored = expect_status(
        app.request(Method::POST, &format!("/v1/prompts/{id}/restore"), key)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(restored["archived"], false);
    // The old name is free again, the new one is taken.
    app.create_prompt("triage").await;
    let taken = app.post("/v1/prompts", key, json!({ "name": "TRIAGE-V2" })).await;
    expect_problem(taken, StatusCode::CONFLICT, "name-taken").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_filters_and_paginates_with_a_cursor() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let category = expect_status(
        app.post("/v1/categories", key, json!({ "name": "Support" }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let category = category["id"].as_str().unwrap();
    for i in 0..7 {
        let body = if i % 2 == 0 {
            json!({ "name": format!("support-{i}"), "category": category, "tags": ["even"] })
        } else {
            json!({ "name": format!("sales_{i}") })
        };
        expect_status(app.post("/v1/prompts", key, body).await, StatusCode::CREATED).await;
    }
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/prompts?limit=3&cursor={c}"),
            None => "/v1/prompts?limit=3".to_string(),
        };
        let page = expect_status(app.get(&path, key).await, StatusCode::OK).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        names.extend(items.iter().map(|p| p["name"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(names.len(), 7, "every prompt once, in creation order: {names:?}");
    assert_eq!(names[0], "support-0");
    assert_eq!(names[6], "support-6");

    let in_category = expect_status(
        app.get(&format!("/v1/prompts?category={category}"), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(in_category["items"].as_array().unwrap().len(), 4);
    let tagged = expect_status(app.get("/v1/prompts?tag=even", key).await, StatusCode::OK).await;
    assert_eq!(tagged["items"].as_array().unwrap().len(), 4);
    // `_` is a literal in search, not a wildcard.
    let searched = expect_status(app.get("/v1/prompts?q=SALES_", key).await, StatusCode::OK).await;
    assert_eq!(searched["items"].as_array().unwrap().len(), 3);
    let none = expect_status(app.get("/v1/prompts?q=sales%25", key).await, StatusCode::OK).await;
    assert_eq!(none["items"].as_array().unwrap().len(), 0);
    let archived = expect_status(app.get("/v1/prompts?archived=true", key).await, StatusCode::OK).await;
    assert_eq!(archived["items"].as_array().unwrap().len(), 0);
    let category_view = expect_status(
        app.get(&format!("/v1/categories/{category}"), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(category_view["prompt_count"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_with_many_versions_is_loaded_from_a_snapshot() {
    let app = TestApp::spawn().await;
    let id = app.create_prompt("long-lived").await;
    for i in 1..=130 {
        assert_eq!(app.publish(&id, &format!("v{i} {{{{x}}}}")).await, i);
    }
    let snapshot: (i64,) = sqlx::query_as(
        "select last_sequence from snapshots where aggregate_type = 'prompt' and aggregate_id = $1",
    )
    .bind(&id)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(snapshot.0, 128, "a snapshot every 64 events");
    // A fresh process (no cache) loads the snapshot plus the three events after it: a
    // marker planted in the snapshot shows it was read instead of the whole history.
    sqlx::query("update snapshots set payload = jsonb_set(payload, '{name}', '\"from-snapshot\"') where aggregate_id = $1")
        .bind(&id)
        .execute(app.pool())
        .await
        .unwrap();
    let store = commands::EventStore::new(app.pool().clone(), projections::inline())
        .aggregates::<domain::prompt::Prompt>(());
    let (prompt, version) = store.load(&id).await.unwrap();
    assert_eq!(version, 131);
    assert_eq!(prompt.latest_version, 130);
    assert_eq!(prompt.name, "from-snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_lag_counts_the_events_a_stalled_projection_has_not_applied() {
    let app = TestApp::spawn().await;
    app.create_prompt("before-the-stall").await;
    // A read of the audit log answers once the log has caught up with it.
    expect_status(app.get("/v1/audit?limit=1", &app.admin_key).await, StatusCode::OK).await;
    // Hold the audit projection's lock, as a long rebuild would, and append behind its back.
    let mut stall = app.pool().begin().await.unwrap();
    projections::runner::lock_projection(&mut stall, projections::audit::NAME)
        .await
        .unwrap();
    for name in ["stalled-1", "stalled-2", "stalled-3"] {
        app.create_prompt(name).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let lag = expect_status(
        app.get("/v1/system/projections", &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    let of = |name: &str| {
        lag["projections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()
            .clone()
    };
    let audit = of(projections::audit::NAME);
    assert_eq!(audit["events_behind"], 3, "{lag}");
    assert!(audit["seconds_behind"].as_f64().unwrap() >= 0.25, "{lag}");
    // The catalogue is written with the events: never behind.
    let catalog = of("catalog");
    assert_eq!(catalog["checkpoint"], "inline", "{lag}");
    assert_eq!(catalog["events_behind"], 0, "{lag}");
    let listed = expect_status(
        app.get("/v1/prompts?q=stalled", &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 3);

    stall.rollback().await.unwrap();
    let caught_up = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            let lag = expect_status(
                app.get("/v1/system/projections", &app.admin_key).await,
                StatusCode::OK,
            )
            .await;
            if lag["projections"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["events_behind"] == 0)
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(caught_up.is_ok(), "the projection never caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_answers_from_memory_and_follows_label_moves_made_by_another_process() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let id = app.create_prompt("support-reply").await;
    app.publish(&id, "first {{x}}").await;
    app.publish(&id, "second {{x}}").await;
    let label = format!("/v1/prompts/{id}/labels/production");
    expect_status(
        app.put(&label, key, json!({ "version": 1 })).await,
        StatusCode::OK,
    )
    .await;
    let resolve = format!("/v1/prompts/{id}/resolve?label=production");
    let resolved = expect_status(app.get(&resolve, key).await, StatusCode::OK).await;
    assert_eq!(
        resolved["template"], "first {{x}}",
        "this process's own move is read at once"
    );

    // The read model changed behind the process's back: the answer still comes from memory.
    sqlx::query("update prompt_version set template = 'tampered' where prompt_id = $1::uuid")
        .bind(&id)
        .execute(app.pool())
        .await
        .unwrap();
    let resolved = expect_status(app.get(&resolve, key).await, StatusCode::OK).await;
    assert_eq!(resolved["template"], "first {{x}}");
    sqlx::query(
        "update prompt_version set template = 'second {{x}}' where prompt_id = $1::uuid and version = 2",
    )
    .bind(&id)
    .execute(app.pool())
    .await
    .unwrap();

    // A move made by another process reaches this one through the log.
    let peer = app.spawn_peer().await;
    let moved = app
        .client
        .put(format!("{}{label}", peer.address))
        .bearer_auth(key)
        .json(&json!({ "version": 2 }))
        .send()
        .await
        .unwrap();
    expect_status(moved, StatusCode::OK).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let resolved = expect_status(app.get(&resolve, key).await, StatusCode::OK).await;
        if resolved["version"] == 2 {
            assert_eq!(resolved["template"], "second {{x}}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the move never reached this process"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Removed elsewhere: gone here too; another tenant never sees it.
    let removed = app
        .client
        .delete(format!("{}{label}", peer.address))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    expect_status(removed, StatusCode::OK).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let response = app.get(&resolve, key).await;
        if response.status() == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the removal never reached this process"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let other = app.key("globex", "admin").await;
    expect_problem(
        app.get(&resolve, &other).await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
}
