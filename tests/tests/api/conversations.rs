//! Conversations through aipm against a fake provider: history over several turns, the
//! resource a conversation is about, images, proposed actions confirmed or refused, a failed
//! call, and tenant isolation.

use integration_tests::fake_provider::Reply;
use integration_tests::harness::{expect_each_not_found, expect_problem, expect_status, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::gateway::{fixture_with, prompt_for, roles, usage_records, Fixture};

async fn fixture(model: &str) -> Fixture {
    fixture_with("assistant", "You help the {{team}} team.", model, json!(null)).await
}

async fn start(app: &TestApp, body: Value) -> String {
    let started = expect_status(
        app.post("/v1/conversations", &app.admin_key, body).await,
        StatusCode::CREATED,
    )
    .await;
    started["id"].as_str().expect("id").to_string()
}

async fn say(app: &TestApp, conversation: &str, body: Value) -> reqwest::Response {
    app.post(
        &format!("/v1/conversations/{conversation}/messages"),
        &app.admin_key,
        body,
    )
    .await
}

#[tokio::test]
async fn a_conversation_sends_its_history_and_the_state_of_what_it_is_about() {
    let Fixture {
        app,
        fake,
        prompt,
        _secret,
    } = fixture("local/small").await;
    let incident = expect_status(
        app.post(
            "/v1/incidents",
            &app.admin_key,
            json!({"severity": "sev2", "title": "Checkout answers are slow", "affected": {"models": ["local/small"]}}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let id = start(
        &app,
        json!({"prompt_id": prompt, "variables": {"team": "support"}, "subject": "user-1",
               "context": {"kind": "incident", "id": incident["id"]}}),
    )
    .await;
    let first = expect_status(
        say(&app, &id, json!({"content": "What is broken?"})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(first["reply"]["content"], "echo: What is broken?");
    assert_eq!(first["reply"]["model"], "local/small");
    assert_eq!(first["reply"]["prompt_version"], 1);
    let second = expect_status(
        say(&app, &id, json!({"content": "And since when?"})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(second["reply"]["content"], "echo: And since when?");
    let sent = fake.requests_for("small");
    assert_eq!(sent.len(), 2);
    let messages = sent[1].body["messages"].as_array().expect("messages").clone();
    assert_eq!(
        roles(&sent[1].body["messages"]),
        ["system", "user", "assistant", "user"]
    );
    let system = messages[0]["content"].as_str().expect("system");
    assert!(system.starts_with("You help the support team."), "{system}");
    assert!(
        system.contains("Checkout answers are slow"),
        "the incident's state is given: {system}"
    );
    assert_eq!(messages[2]["content"], "echo: What is broken?");
    // Tools offered: the quick actions.
    let tools: Vec<&str> = sent[1].body["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert!(
        tools.contains(&"tag_prompt") && tools.contains(&"open_incident"),
        "{tools:?}"
    );
    // The transcript, and one usage record per call, named by the reply.
    let transcript = expect_status(
        app.get(&format!("/v1/conversations/{id}"), &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        roles(&transcript["messages"]),
        ["user", "assistant", "user", "assistant"]
    );
    let records = usage_records(&app).await;
    assert_eq!(records.len(), 2);
    assert!(records.iter().any(|r| r["id"] == second["reply"]["run_id"]));
    assert!(records.iter().all(|r| r["subject"] == "user-1"));
    let history = expect_status(
        app.get(&format!("/v1/conversations/{id}/history"), &app.admin_key)
            .await,
        StatusCode::OK,
    )
    .await;
    let types: Vec<&str> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert_eq!(
        types,
        [
            "ConversationStarted",
            "UserMessageAdded",
            "AssistantReplied",
            "UserMessageAdded",
            "AssistantReplied"
        ]
    );
}

#[tokio::test]
async fn a_streamed_reply_arrives_as_it_comes_and_is_recorded_in_the_transcript() {
    let Fixture {
        app,
        fake,
        prompt,
        _secret,
    } = fixture("local/small").await;
    let id = start(&app, json!({"prompt_id": prompt, "variables": {"team": "ops"}})).await;
    let events =
        crate::gateway::sse_events(say(&app, &id, json!({"content": "Tell me more", "stream": true})).await)
            .await;
    assert_eq!(events[0].0, "message");
    let deltas: String = events
        .iter()
        .filter(|(name, _)| name == "delta")
        .filter_map(|(_, data)| data["text"].as_str())
        .collect();
    assert_eq!(deltas, "echo: Tell me more");
    let (last, done) = events.last().expect("events");
    assert_eq!(last, "done", "{events:?}");
    assert_eq!(done["reply"]["content"], deltas);
    assert_eq!(done["reply"]["usage"]["output_tokens"], 4);
    let transcript = expect_status(
        app.get(&format!("/v1/conversations/{id}"), &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(transcript["messages"][1]["content"], deltas);
    assert_eq!(transcript["messages"][1]["run_id"], done["reply"]["run_id"]);
    assert_eq!(usage_records(&app).await.len(), 1);
    assert_eq!(fake.requests().len(), 1);
    // A streamed reply cannot be replayed under an Idempotency-Key.
    let refused = app
        .request(
            Method::POST,
            &format!("/v1/conversations/{id}/messages"),
            &app.admin_key,
        )
        .header("Idempotency-Key", "stream-once")
        .json(&json!({"content": "again", "stream": true}))
        .send()
        .await
        .expect("send");
    expect_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
}

#[tokio::test]
async fn the_history_sent_is_trimmed_to_the_models_context_window_oldest_turns_first() {
    let Fixture {
        app,
        fake,
        prompt: _,
        _secret,
    } = fixture("local/small").await;
    // A model whose window holds the system message and about two turns of these sizes.
    expect_status(
        app.post(
            "/v1/models",
            &app.admin_key,
            json!({"provider": "local", "model_id": "tiny", "context_window": 300}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let prompt = prompt_for(
        &app,
        "tiny",
        "Be brief.",
        "local/tiny",
        json!({"max_tokens": 100}),
    )
    .await;
    let id = start(&app, json!({"prompt_id": prompt})).await;
    let words = "word ".repeat(40); // 200 bytes: 50 estimated tokens, and as much again echoed
    for turn in 1..=5 {
        expect_status(
            say(&app, &id, json!({"content": format!("turn {turn} {words}")})).await,
            StatusCode::OK,
        )
        .await;
    }
    let sent = fake.requests_for("tiny");
    let last = &sent[4].body["messages"];
    // 300 - 100 reserved - the system message leaves room for the newest turn and one before
    // it (a user message and its reply estimate at about 114 tokens): turns 4 and 5, whole.
    assert_eq!(roles(last), ["system", "user", "assistant", "user"]);
    assert!(
        last[1]["content"]
            .as_str()
            .is_some_and(|t| t.starts_with("turn 4 ")),
        "{last}"
    );
    assert!(
        last[3]["content"]
            .as_str()
            .is_some_and(|t| t.starts_with("turn 5 ")),
        "{last}"
    );
    // The transcript keeps every turn.
    let transcript = expect_status(
        app.get(&format!("/v1/conversations/{id}"), &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(transcript["messages"].as_array().map(Vec::len), Some(10));
}

#[tokio::test]
async fn the_rendered_prompt_is_checked_when_the_conversation_starts() {
    let Fixture {
        app,
        fake,
        prompt,
        _secret,
    } = fixture("local/small").await;
    let refused = expect_problem(
        app.post(
            "/v1/conversations",
            &app.admin_key,
            json!({"prompt_id": prompt, "variables": {}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    assert_eq!(refused["errors"][0]["field"], "variables");
    let refused = expect_problem(
        app.post(
            "/v1/conversations",
            &app.admin_key,
            json!({"prompt_id": prompt, "variables": {"team": "x"}, "context": {"kind": "incident", "id": uuid::Uuid::new_v4()}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    assert_eq!(refused["errors"][0]["field"], "context.id");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn images_need_a_vision_model_and_only_their_digest_is_recorded() {
    let Fixture {
        app,
        fake,
        prompt,
        _secret,
    } = fixture("local/small").await;
    let id = start(
        &app,
        json!({"prompt_id": prompt, "variables": {"team": "design"}}),
    )
    .await;
    let png =
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
    let refused = expect_problem(
        say(
            &app,
            &id,
            json!({"content": "What is this?", "images": [{"data": png, "media_type": "image/png"}]}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    assert_eq!(refused["errors"][0]["field"], "images");
    assert!(fake.requests().is_empty(), "refused before any call");

    let vision = prompt_for(
        &app,
        "vision",
        "You describe images for {{team}}.",
        "claude/haiku",
        json!(null),
    )
    .await;
    let id = start(
        &app,
        json!({"prompt_id": vision, "variables": {"team": "design"}}),
    )
    .await;
    expect_status(
        say(
            &app,
            &id,
            json!({"content": "What is this?", "images": [{"data": png, "media_type": "image/png"}]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let sent = fake.requests_for("haiku");
    let content = sent[0].body["messages"][0]["content"]
        .as_array()
        .expect("content")
        .clone();
    assert_eq!(content[1]["type"], "image");
    assert_eq!(content[1]["source"]["data"], png);
    let bytes = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(png)
            .expect("base64")
    };
    let history = expect_status(
        app.get(&format!("/v1/conversations/{id}/history"), &app.admin_key)
            .await,
        StatusCode::OK,
    )
    .await;
    let added = &history["items"][1]["data"];
    let image = &added.get("UserMessageAdded").unwrap_or(added)["images"][0];
    assert_eq!(image["size_bytes"], bytes.len());
    assert_eq!(
        image["sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))
    );
    assert!(
        !history.to_string().contains(png),
        "the bytes are never in an event"
    );
    // A later turn sends the image as a note, not again.
    expect_status(say(&app, &id, json!({"content": "Thanks"})).await, StatusCode::OK).await;
    let later = &fake.requests_for("haiku")[1].body["messages"][0]["content"];
    assert!(later.to_string().contains("omitted"), "{later}");
}

#[tokio::test]
async fn proposed_actions_run_only_when_a_key_that_may_confirms_them() {
    let Fixture {
        app,
        fake,
        prompt,
        _secret,
    } = fixture("local/small").await;
    let id = start(&app, json!({"prompt_id": prompt, "variables": {"team": "ops"}})).await;
    fake.script(
        "small",
        vec![Reply::ToolCalls {
            text: "I can do that.".into(),
            calls: vec![
                (
                    "tag_prompt".into(),
                    json!({"prompt_id": prompt, "tags": ["reviewed"]}),
                ),
                (
                    "move_prompt_label".into(),
                    json!({"prompt_id": prompt, "label": "staging", "version": 1}),
                ),
                (
                    "tag_prompt".into(),
                    json!({"prompt_id": prompt, "tags": ["Not A Slug"]}),
                ),
            ],
        }],
    );
    let answer = expect_status(
        say(&app, &id, json!({"content": "Tag it and stage it"})).await,
        StatusCode::OK,
    )
    .await;
    let reply = &answer["reply"];
    assert_eq!(reply["content"], "I can do that.");
    let actions = reply["actions"].as_array().expect("actions").clone();
    assert_eq!(actions.len(), 2);
    assert_eq!(reply["refused_calls"].as_array().map(Vec::len), Some(1));
    assert!(actions.iter().all(|a| a["status"] == "proposed"));
    assert_eq!(actions[0]["preview"]["tags_after"], json!(["reviewed"]));
    assert_eq!(actions[1]["preview"]["version_after"], 1);
    // Nothing applied yet.
    let before = expect_status(
        app.get(&format!("/v1/prompts/{prompt}"), &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(before["tags"], json!([]));
    let tag = actions[0]["id"].as_str().expect("id");
    let confirm = |key: String, action: String| {
        let app = &app;
        let id = id.clone();
        async move {
            app.request(
                Method::POST,
                &format!("/v1/conversations/{id}/actions/{action}/confirm"),
                &key,
            )
            .send()
            .await
            .expect("confirm")
        }
    };
    // A key whose role may not change prompts is refused, and nothing changes.
    let ingest = app.key("acme", "ingest").await;
    expect_problem(
        confirm(ingest, tag.to_string()).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let editor = app.key("acme", "editor").await;
    let confirmed = expect_status(confirm(editor.clone(), tag.to_string()).await, StatusCode::OK).await;
    assert_eq!(confirmed["action"]["status"], "confirmed");
    assert!(confirmed["action"]["outcome"]["version"].as_u64().is_some());
    let after = expect_status(
        app.get(&format!("/v1/prompts/{prompt}"), &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(after["tags"], json!(["reviewed"]));
    // The change is the confirming key's, caused by the conversation.
    let prompt_history = expect_status(
        app.get(&format!("/v1/prompts/{prompt}/history"), &app.admin_key)
            .await,
        StatusCode::OK,
    )
    .await;
    let tagged = prompt_history["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|e| e["event_type"] == "PromptTagged")
        .cloned()
        .expect("tagged");
    assert_eq!(tagged["actor"]["name"], "acme-editor");
    expect_problem(
        confirm(editor.clone(), tag.to_string()).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    // The other is declined, and cannot be confirmed after.
    let label = actions[1]["id"].as_str().expect("id");
    let declined = expect_status(
        app.request(
            Method::POST,
            &format!("/v1/conversations/{id}/actions/{label}/decline"),
            &app.admin_key,
        )
        .send()
        .await
        .expect("decline"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(declined["action"]["status"], "declined");
    expect_problem(
        confirm(editor.clone(), label.to_string()).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    expect_problem(
        confirm(editor, "no-such-action".into()).await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    // The next turn tells the model what became of its proposals.
    expect_status(say(&app, &id, json!({"content": "Done?"})).await, StatusCode::OK).await;
    let sent = fake.requests_for("small");
    let assistant = sent[1].body["messages"][2]["content"]
        .as_str()
        .expect("assistant text")
        .to_string();
    assert!(
        assistant.contains("confirmed") && assistant.contains("declined"),
        "{assistant}"
    );
}

#[tokio::test]
async fn a_confirmed_move_of_a_protected_label_waits_for_another_keys_approval() {
    let Fixture {
        app,
        fake,
        prompt,
        _secret,
    } = fixture("local/small").await;
    expect_status(
        app.put(
            &format!("/v1/protections/prompt:{prompt}:production"),
            &app.admin_key,
            json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    crate::gateway::publish_version(
        &app,
        &prompt,
        "You help the {{team}} team, briefly.",
        "local/small",
        json!(null),
    )
    .await;
    let id = start(&app, json!({"prompt_id": prompt, "variables": {"team": "ops"}})).await;
    fake.script(
        "small",
        vec![Reply::ToolCalls {
            text: String::new(),
            calls: vec![(
                "move_prompt_label".into(),
                json!({"prompt_id": prompt, "label": "production", "version": 2}),
            )],
        }],
    );
    let answer = expect_status(
        say(&app, &id, json!({"content": "Ship version 2"})).await,
        StatusCode::OK,
    )
    .await;
    let action = &answer["reply"]["actions"][0];
    assert_eq!(action["preview"]["needs_approval"], true);
    assert_eq!(action["preview"]["version_before"], 1);
    let confirmed = expect_status(
        app.request(
            Method::POST,
            &format!(
                "/v1/conversations/{id}/actions/{}/confirm",
                action["id"].as_str().expect("id")
            ),
            &app.admin_key,
        )
        .send()
        .await
        .expect("confirm"),
        StatusCode::OK,
    )
    .await;
    let outcome = &confirmed["action"]["outcome"];
    assert_eq!(outcome["status"], "awaiting_approval");
    let request = outcome["change_request"].as_str().expect("change request");
    let pending = expect_status(
        app.get(&format!("/v1/change-requests/{request}"), &app.admin_key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(pending["state"], "proposed");
    // The label did not move.
    let after = expect_status(
        app.get(&format!("/v1/prompts/{prompt}"), &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(after["labels"]["production"], 1);
}

#[tokio::test]
async fn a_call_no_model_answers_leaves_the_message_unanswered_and_the_conversation_going() {
    let Fixture {
        app,
        fake,
        prompt,
        _secret,
    } = fixture("local/small").await;
    let id = start(&app, json!({"prompt_id": prompt, "variables": {"team": "ops"}})).await;
    fake.script(
        "small",
        vec![Reply::Status {
            status: 400,
            retry_after: None,
        }],
    );
    fake.script(
        "haiku",
        vec![Reply::Status {
            status: 400,
            retry_after: None,
        }],
    );
    expect_problem(
        say(&app, &id, json!({"content": "Hello?"})).await,
        StatusCode::BAD_GATEWAY,
        "provider-failed",
    )
    .await;
    let answered = expect_status(
        say(&app, &id, json!({"content": "Hello again"})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(answered["reply"]["content"], "echo: Hello again");
    let sent = fake.requests_for("small");
    assert_eq!(
        roles(&sent[1].body["messages"]),
        ["system", "user"],
        "the unanswered message is left out"
    );
    let transcript = expect_status(
        app.get(&format!("/v1/conversations/{id}"), &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        roles(&transcript["messages"]),
        ["user", "failed", "user", "assistant"]
    );
    assert_eq!(usage_records(&app).await.len(), 2);
}

#[tokio::test]
async fn conversations_belong_to_their_tenant() {
    let Fixture {
        app,
        prompt,
        fake: _fake,
        _secret,
    } = fixture("local/small").await;
    let id = start(&app, json!({"prompt_id": prompt, "variables": {"team": "ops"}})).await;
    let other = app.key("globex", "admin").await;
    expect_each_not_found(
        &app,
        &other,
        vec![
            (Method::GET, format!("/v1/conversations/{id}"), None),
            (Method::GET, format!("/v1/conversations/{id}/history"), None),
            (
                Method::POST,
                format!("/v1/conversations/{id}/messages"),
                Some(json!({"content": "hi"})),
            ),
            (
                Method::POST,
                format!("/v1/conversations/{id}/actions/action-1/confirm"),
                None,
            ),
            (
                Method::POST,
                format!("/v1/conversations/{id}/actions/action-1/decline"),
                None,
            ),
        ],
        &id,
    )
    .await;
    expect_problem(
        app.post(
            "/v1/conversations",
            &other,
            json!({"prompt_id": prompt, "variables": {"team": "x"}}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
}
