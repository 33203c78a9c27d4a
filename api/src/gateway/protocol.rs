//! The two wire protocols the gateway speaks: OpenAI's chat completions (also what Azure
//! OpenAI, vLLM, Ollama, LM Studio and llama.cpp servers serve) and Anthropic's messages.
//! Each turns a [`ChatRequest`] into a request body and reads an answer, whole or streamed,
//! back into a [`ChatAnswer`].

use std::collections::BTreeMap;

use domain::chat::{ChatAnswer, ChatMessage, ImageSource, Part, Role, TokenUsage, ToolCall, ToolDefinition};
use domain::provider::ProviderKind;
use serde_json::{json, Map, Value};

use super::sse::SseEvent;

/// The version of Anthropic's API the requests are written for.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Azure OpenAI's API version the requests are written for.
pub const AZURE_API_VERSION: &str = "2024-10-21";
/// Anthropic requires `max_tokens`; this is sent when neither the model's defaults nor the
/// version's parameters set it.
pub const DEFAULT_ANTHROPIC_MAX_TOKENS: u64 = 1024;
/// Parameters the gateway sets itself; a model's or version's value for them is ignored.
const RESERVED_PARAMS: [&str; 6] = ["model", "messages", "stream", "stream_options", "tools", "system"];

/// What to ask a model: the messages (system ones first), the parameters (a model's
/// defaults overlaid with the version's), and the tools it may call.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub params: Map<String, Value>,
    pub tools: Vec<ToolDefinition>,
}

/// How a provider is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    OpenAi,
    AzureOpenAi,
    Anthropic,
}

impl Protocol {
    /// The protocol of a provider kind; `None` for `custom`, which the gateway cannot call.
    pub fn of(kind: ProviderKind) -> Option<Self> {
        match kind {
            ProviderKind::Openai => Some(Self::OpenAi),
            ProviderKind::AzureOpenai => Some(Self::AzureOpenAi),
            ProviderKind::Anthropic => Some(Self::Anthropic),
            ProviderKind::Custom => None,
        }
    }

    /// Where a chat goes, given the provider's base URL and the provider's model id.
    pub fn url(self, base_url: &str, model_id: &str) -> String {
        let base = base_url.trim_end_matches('/');
        match self {
            Self::OpenAi => format!("{base}/chat/completions"),
            Self::AzureOpenAi => {
                format!(
                    "{base}/openai/deployments/{model_id}/chat/completions?api-version={AZURE_API_VERSION}"
                )
            }
            Self::Anthropic => format!("{base}/v1/messages"),
        }
    }

    /// The headers carrying `secret`, and the protocol's own.
    pub fn headers(self, secret: &str) -> Vec<(&'static str, String)> {
        match self {
            Self::OpenAi => vec![("authorization", format!("Bearer {secret}"))],
            Self::AzureOpenAi => vec![("api-key", secret.to_string())],
            Self::Anthropic => vec![
                ("x-api-key", secret.to_string()),
                ("anthropic-version", ANTHROPIC_VERSION.to_string()),
            ],
        }
    }

    pub fn body(self, model_id: &str, request: &ChatRequest, stream: bool) -> Value {
        match self {
            Self::OpenAi | Self::AzureOpenAi => openai_body(model_id, request, stream),
            Self::Anthropic => anthropic_body(model_id, request, stream),
        }
    }

    /// Reads a whole (not streamed) answer.
    pub fn read_answer(self, body: &Value) -> Result<ChatAnswer, String> {
        match self {
            Self::OpenAi | Self::AzureOpenAi => read_openai_answer(body),
            Self::Anthropic => read_anthropic_answer(body),
        }
    }

    pub fn stream_decoder(self) -> StreamDecoder {
        StreamDecoder {
            protocol: self,
            answer: ChatAnswer::default(),
            tools: BTreeMap::new(),
            done: false,
        }
    }
}

fn params_without_reserved(params: &Map<String, Value>) -> impl Iterator<Item = (&String, &Value)> {
    params
        .iter()
        .filter(|(key, _)| !RESERVED_PARAMS.contains(&key.as_str()))
}

fn openai_body(model_id: &str, request: &ChatRequest, stream: bool) -> Value {
    let messages: Vec<Value> = request.messages.iter().map(openai_message).collect();
    let mut body = Map::new();
    body.insert("model".into(), json!(model_id));
    body.insert("messages".into(), Value::Array(messages));
    for (key, value) in params_without_reserved(&request.params) {
        body.insert(key.clone(), value.clone());
    }
    if !request.tools.is_empty() {
        let tools = request
            .tools
            .iter()
            .map(|tool| {
                json!({"type": "function", "function": {
                    "name": tool.name, "description": tool.description, "parameters": tool.parameters}})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

fn openai_message(message: &ChatMessage) -> Value {
    let role = match message.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    let content = match message.content.as_slice() {
        [] => Value::Null,
        [Part::Text(text)] => json!(text),
        parts => Value::Array(
            parts
                .iter()
                .map(|part| match part {
                    Part::Text(text) => json!({"type": "text", "text": text}),
                    Part::Image(ImageSource::Url(url)) => json!({"type": "image_url", "image_url": {"url": url}}),
                    Part::Image(ImageSource::Base64 { media_type, data }) => {
                        json!({"type": "image_url", "image_url": {"url": format!("data:{media_type};base64,{data}")}})
                    }
                })
                .collect(),
        ),
    };
    let mut value = json!({"role": role, "content": content});
    if !message.tool_calls.is_empty() {
        value["tool_calls"] = message
            .tool_calls
            .iter()
            .map(|call| {
                json!({"id": call.id, "type": "function",
                       "function": {"name": call.name, "arguments": call.arguments.to_string()}})
            })
            .collect();
    }
    value
}

fn anthropic_body(model_id: &str, request: &ChatRequest, stream: bool) -> Value {
    let system: Vec<String> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(ChatMessage::joined_text)
        .collect();
    let messages: Vec<Value> = request
        .messages
        .iter()
        .filter(|m| m.role != Role::System)
        .map(anthropic_message)
        .collect();
    let mut body = Map::new();
    body.insert("model".into(), json!(model_id));
    body.insert("max_tokens".into(), json!(DEFAULT_ANTHROPIC_MAX_TOKENS));
    for (key, value) in params_without_reserved(&request.params) {
        body.insert(key.clone(), value.clone());
    }
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert("messages".into(), Value::Array(messages));
    if !request.tools.is_empty() {
        let tools = request
            .tools
            .iter()
            .map(|tool| json!({"name": tool.name, "description": tool.description, "input_schema": tool.parameters}))
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Value::Object(body)
}

fn anthropic_message(message: &ChatMessage) -> Value {
    let role = if message.role == Role::Assistant {
        "assistant"
    } else {
        "user"
    };
    let mut content: Vec<Value> = message
        .content
        .iter()
        .map(|part| match part {
            Part::Text(text) => json!({"type": "text", "text": text}),
            Part::Image(ImageSource::Url(url)) => {
                json!({"type": "image", "source": {"type": "url", "url": url}})
            }
            Part::Image(ImageSource::Base64 { media_type, data }) => {
                json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
            }
        })
        .collect();
    content.extend(
        message.tool_calls.iter().map(
            |call| json!({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}),
        ),
    );
    json!({"role": role, "content": content})
}

fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// A tool call's arguments: the object the model wrote, or its text when it is not JSON.
fn arguments_of(text: &str) -> Value {
    if text.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn openai_usage(usage: &Value) -> TokenUsage {
    TokenUsage {
        input_tokens: count(&usage["prompt_tokens"]),
        output_tokens: count(&usage["completion_tokens"]),
        cached_input_tokens: count(&usage["prompt_tokens_details"]["cached_tokens"]),
    }
}

fn read_openai_answer(body: &Value) -> Result<ChatAnswer, String> {
    let choice = body["choices"].get(0).ok_or("the answer has no choices")?;
    let message = &choice["message"];
    let text = message["content"].as_str().unwrap_or_default().to_string();
    let tool_calls = message["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|call| ToolCall {
                    id: call["id"].as_str().unwrap_or_default().to_string(),
                    name: call["function"]["name"].as_str().unwrap_or_default().to_string(),
                    arguments: arguments_of(call["function"]["arguments"].as_str().unwrap_or_default()),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ChatAnswer {
        text,
        tool_calls,
        usage: openai_usage(&body["usage"]),
        finish_reason: choice["finish_reason"].as_str().map(str::to_string),
    })
}

fn anthropic_usage(usage: &Value) -> TokenUsage {
    // Anthropic counts cache reads and writes apart from `input_tokens`; aipm's input tokens
    // include them, as OpenAI's do.
    let cached = count(&usage["cache_read_input_tokens"]);
    TokenUsage {
        input_tokens: count(&usage["input_tokens"]) + cached + count(&usage["cache_creation_input_tokens"]),
        output_tokens: count(&usage["output_tokens"]),
        cached_input_tokens: cached,
    }
}

fn read_anthropic_answer(body: &Value) -> Result<ChatAnswer, String> {
    let blocks = body["content"].as_array().ok_or("the answer has no content")?;
    let mut answer = ChatAnswer {
        usage: anthropic_usage(&body["usage"]),
        finish_reason: body["stop_reason"].as_str().map(str::to_string),
        ..ChatAnswer::default()
    };
    for block in blocks {
        match block["type"].as_str() {
            Some("text") => answer.text.push_str(block["text"].as_str().unwrap_or_default()),
            Some("tool_use") => answer.tool_calls.push(ToolCall {
                id: block["id"].as_str().unwrap_or_default().to_string(),
                name: block["name"].as_str().unwrap_or_default().to_string(),
                arguments: block["input"].clone(),
            }),
            _ => {}
        }
    }
    Ok(answer)
}

/// Reads a streamed answer event by event, handing out the text as it comes and keeping the
/// rest (tool calls, usage, finish reason) for the end.
#[derive(Debug)]
pub struct StreamDecoder {
    protocol: Protocol,
    answer: ChatAnswer,
    /// Tool calls being assembled, by their index in the answer: id, name, argument text.
    tools: BTreeMap<u64, (String, String, String)>,
    done: bool,
}

impl StreamDecoder {
    /// Reads one event; returns the text it adds.
    pub fn read(&mut self, event: &SseEvent) -> Result<Option<String>, String> {
        match self.protocol {
            Protocol::OpenAi | Protocol::AzureOpenAi => self.read_openai(event),
            Protocol::Anthropic => self.read_anthropic(event),
        }
    }

    /// Whether the provider said the answer is complete.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// What has been read so far: the whole answer once [`Self::is_done`].
    pub fn answer(&self) -> ChatAnswer {
        let mut answer = self.answer.clone();
        answer.tool_calls = self
            .tools
            .values()
            .map(|(id, name, arguments)| ToolCall {
                id: id.clone(),
                name: name.clone(),
                arguments: arguments_of(arguments),
            })
            .collect();
        answer
    }

    fn read_openai(&mut self, event: &SseEvent) -> Result<Option<String>, String> {
        if event.data.trim() == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let chunk: Value =
            serde_json::from_str(&event.data).map_err(|e| format!("a chunk is not JSON: {e}"))?;
        if let Some(error) = chunk.get("error") {
            return Err(format!("the provider sent an error mid-stream: {error}"));
        }
        if chunk["usage"].is_object() {
            self.answer.usage = openai_usage(&chunk["usage"]);
        }
        let Some(choice) = chunk["choices"].get(0) else {
            return Ok(None);
        };
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.answer.finish_reason = Some(reason.to_string());
        }
        let delta = &choice["delta"];
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let entry = self.tools.entry(count(&call["index"])).or_default();
            if let Some(id) = call["id"].as_str() {
                entry.0 = id.to_string();
            }
            if let Some(name) = call["function"]["name"].as_str() {
                entry.1.push_str(name);
            }
            if let Some(arguments) = call["function"]["arguments"].as_str() {
                entry.2.push_str(arguments);
            }
        }
        let text = delta["content"]
            .as_str()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if let Some(text) = &text {
            self.answer.text.push_str(text);
        }
        Ok(text)
    }

    fn read_anthropic(&mut self, event: &SseEvent) -> Result<Option<String>, String> {
        let data: Value =
            serde_json::from_str(&event.data).map_err(|e| format!("an event is not JSON: {e}"))?;
        let kind = event
            .event
            .as_deref()
            .or(data["type"].as_str())
            .unwrap_or_default();
        match kind {
            "message_start" => {
                self.answer.usage = anthropic_usage(&data["message"]["usage"]);
                Ok(None)
            }
            "content_block_start" => {
                let block = &data["content_block"];
                if block["type"] == "tool_use" {
                    let name = block["name"].as_str().unwrap_or_default().to_string();
                    let id = block["id"].as_str().unwrap_or_default().to_string();
                    self.tools
                        .insert(count(&data["index"]), (id, name, String::new()));
                }
                Ok(None)
            }
            "content_block_delta" => {
                let delta = &data["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        let text = delta["text"].as_str().unwrap_or_default().to_string();
                        self.answer.text.push_str(&text);
                        Ok(Some(text).filter(|t| !t.is_empty()))
                    }
                    Some("input_json_delta") => {
                        if let Some(entry) = self.tools.get_mut(&count(&data["index"])) {
                            entry
                                .2
                                .push_str(delta["partial_json"].as_str().unwrap_or_default());
                        }
                        Ok(None)
                    }
                    _ => Ok(None),
                }
            }
            "message_delta" => {
                if let Some(reason) = data["delta"]["stop_reason"].as_str() {
                    self.answer.finish_reason = Some(reason.to_string());
                }
                if let Some(output) = data["usage"]["output_tokens"].as_u64() {
                    self.answer.usage.output_tokens = output;
                }
                Ok(None)
            }
            "message_stop" => {
                self.done = true;
                Ok(None)
            }
            "error" => Err(format!(
                "the provider sent an error mid-stream: {}",
                data["error"]
            )),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ChatRequest {
        let mut user = ChatMessage::text(Role::User, "Describe this");
        user.content.push(Part::Image(ImageSource::Base64 {
            media_type: "image/png".into(),
            data: "iVBO".into(),
        }));
        let params = json!({"temperature": 0.2, "model": "ignored", "max_tokens": 50});
        ChatRequest {
            messages: vec![ChatMessage::text(Role::System, "Be brief."), user],
            params: params.as_object().cloned().unwrap_or_default(),
            tools: vec![ToolDefinition {
                name: "tag_prompt".into(),
                description: "Tag a prompt".into(),
                parameters: json!({"type": "object"}),
            }],
        }
    }

    #[test]
    fn openai_bodies_carry_the_system_message_image_parts_tools_and_parameters() {
        let body = Protocol::OpenAi.body("gpt-4o-mini", &request(), true);
        assert_eq!(body["model"], "gpt-4o-mini");
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            body["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,iVBO"
        );
        assert_eq!(body["temperature"], 0.2);
        assert_eq!(body["max_tokens"], 50);
        assert_eq!(body["tools"][0]["function"]["name"], "tag_prompt");
        assert_eq!(body["stream_options"]["include_usage"], true);
    }

    #[test]
    fn anthropic_bodies_lift_the_system_message_and_always_say_max_tokens() {
        let mut plain = request();
        plain.params.remove("max_tokens");
        let body = Protocol::Anthropic.body("claude", &plain, false);
        assert_eq!(body["system"], "Be brief.");
        assert_eq!(body["max_tokens"], DEFAULT_ANTHROPIC_MAX_TOKENS);
        assert_eq!(body["messages"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            body["messages"][0]["content"][1]["source"]["media_type"],
            "image/png"
        );
        assert_eq!(body["tools"][0]["input_schema"], json!({"type": "object"}));
        assert!(body.get("stream").is_none());
        assert_eq!(
            Protocol::Anthropic.body("claude", &request(), false)["max_tokens"],
            50
        );
    }

    #[test]
    fn answers_are_read_with_tool_calls_and_tokens() {
        let openai = json!({"choices": [{"message": {"content": "hi", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "tag_prompt", "arguments": "{\"tags\":[\"a\"]}"}}]},
            "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}});
        let answer = Protocol::OpenAi.read_answer(&openai).unwrap();
        assert_eq!(answer.text, "hi");
        assert_eq!(answer.tool_calls[0].arguments, json!({"tags": ["a"]}));
        assert_eq!(
            answer.usage,
            TokenUsage {
                input_tokens: 12,
                output_tokens: 3,
                cached_input_tokens: 4
            }
        );
        let anthropic = json!({"content": [{"type": "text", "text": "hi"},
            {"type": "tool_use", "id": "t1", "name": "tag_prompt", "input": {"tags": ["a"]}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 2}});
        let answer = Protocol::Anthropic.read_answer(&anthropic).unwrap();
        assert_eq!(answer.tool_calls[0].id, "t1");
        assert_eq!(
            answer.usage,
            TokenUsage {
                input_tokens: 12,
                output_tokens: 3,
                cached_input_tokens: 2
            }
        );
        assert!(Protocol::OpenAi.read_answer(&json!({"choices": []})).is_err());
    }

    fn event(name: Option<&str>, data: Value) -> SseEvent {
        SseEvent {
            event: name.map(str::to_string),
            data: data.to_string(),
        }
    }

    #[test]
    fn openai_streams_assemble_text_tool_calls_and_usage() {
        let mut decoder = Protocol::OpenAi.stream_decoder();
        let chunks = [
            json!({"choices": [{"delta": {"role": "assistant", "content": "Hel"}}]}),
            json!({"choices": [{"delta": {"content": "lo"}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "pause_experiment", "arguments": "{\"rea"}}]}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "son\":\"x\"}"}}]}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}),
        ];
        let texts: Vec<Option<String>> = chunks
            .iter()
            .map(|c| decoder.read(&event(None, c.clone())).unwrap())
            .collect();
        assert_eq!(
            texts,
            vec![Some("Hel".into()), Some("lo".into()), None, None, None]
        );
        assert!(!decoder.is_done());
        decoder
            .read(&SseEvent {
                event: None,
                data: "[DONE]".into(),
            })
            .unwrap();
        assert!(decoder.is_done());
        let answer = decoder.answer();
        assert_eq!(answer.text, "Hello");
        assert_eq!(answer.tool_calls[0].arguments, json!({"reason": "x"}));
        assert_eq!(answer.usage.input_tokens, 7);
        assert_eq!(answer.finish_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn anthropic_streams_assemble_text_tool_calls_and_usage() {
        let mut decoder = Protocol::Anthropic.stream_decoder();
        let events = [
            event(
                Some("message_start"),
                json!({"message": {"usage": {"input_tokens": 9, "output_tokens": 1}}}),
            ),
            event(
                Some("content_block_start"),
                json!({"index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            event(
                Some("content_block_delta"),
                json!({"index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            ),
            event(
                Some("content_block_start"),
                json!({"index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "tag_prompt"}}),
            ),
            event(
                Some("content_block_delta"),
                json!({"index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"tags\":"}}),
            ),
            event(
                Some("content_block_delta"),
                json!({"index": 1, "delta": {"type": "input_json_delta", "partial_json": "[\"a\"]}"}}),
            ),
            event(
                Some("message_delta"),
                json!({"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}}),
            ),
            event(Some("message_stop"), json!({})),
        ];
        let texts: Vec<Option<String>> = events.iter().map(|e| decoder.read(e).unwrap()).collect();
        assert_eq!(texts[2].as_deref(), Some("Hi"));
        assert!(decoder.is_done());
        let answer = decoder.answer();
        assert_eq!(answer.tool_calls[0].arguments, json!({"tags": ["a"]}));
        assert_eq!(
            answer.usage,
            TokenUsage {
                input_tokens: 9,
                output_tokens: 5,
                cached_input_tokens: 0
            }
        );
        assert!(decoder
            .read(&event(
                Some("error"),
                json!({"error": {"type": "overloaded_error"}})
            ))
            .is_err());
    }
}
