//! A chat with a model, whatever protocol carries it: the messages sent, the tools offered,
//! and what the model answered. The gateway (`api::gateway`) writes these as OpenAI chat
//! completions or Anthropic messages and reads the answers back into them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// Where an image's bytes are: a URL the provider fetches, or the bytes themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageSource {
    Url(String),
    /// Base64 of the bytes, with their media type (`image/png`).
    Base64 {
        media_type: String,
        data: String,
    },
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Text(String),
    Image(ImageSource),
}

/// A tool the model may call, with the JSON Schema of its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

/// A call of a tool the model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id of the call.
    pub id: String,
    pub name: String,
    /// The arguments as the model gave them (an object when it gave valid JSON).
    pub arguments: Value,
}

/// One message of a chat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: Vec<Part>,
    /// Tools an assistant message called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

impl ChatMessage {
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: vec![Part::Text(text.into())],
            tool_calls: Vec::new(),
        }
    }

    /// The message's text parts, joined.
    pub fn joined_text(&self) -> String {
        self.content
            .iter()
            .filter_map(|part| match part {
                Part::Text(text) => Some(text.as_str()),
                Part::Image(_) => None,
            })
            .collect::<Vec<_>>()
            .join("")
    }

    pub fn has_images(&self) -> bool {
        self.content.iter().any(|part| matches!(part, Part::Image(_)))
    }
}

/// Tokens of a call, as the provider counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Every input token, the cached ones included.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The part of `input_tokens` read from the provider's cache.
    pub cached_input_tokens: u64,
}

/// What the model answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatAnswer {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: TokenUsage,
    /// Why it stopped (`stop`, `length`, `tool_calls`, `end_turn`, …) as the provider said.
    pub finish_reason: Option<String>,
}

/// Tokens a text counts for when nothing better is known: one per four bytes, rounded up
/// (the rule of thumb of the common tokenizers for English; an estimate, stated as such
/// wherever it is used).
pub fn estimated_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// Tokens an image counts for in [`estimated_tokens`]' reckoning: a fixed share of the
/// context, as providers bill a detailed image at roughly a thousand tokens.
pub const ESTIMATED_IMAGE_TOKENS: u64 = 1_000;

/// The estimated tokens of a message: its text, its images and its tool calls.
pub fn estimated_message_tokens(message: &ChatMessage) -> u64 {
    let parts: u64 = message
        .content
        .iter()
        .map(|part| match part {
            Part::Text(text) => estimated_tokens(text),
            Part::Image(_) => ESTIMATED_IMAGE_TOKENS,
        })
        .sum();
    let calls: u64 = message
        .tool_calls
        .iter()
        .map(|call| estimated_tokens(&call.name) + estimated_tokens(&call.arguments.to_string()))
        .sum();
    // A few tokens of framing per message (role, separators).
    parts + calls + 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_round_up_and_count_images_and_framing() {
        assert_eq!(estimated_tokens(""), 0);
        assert_eq!(estimated_tokens("abcd"), 1);
        assert_eq!(estimated_tokens("abcde"), 2);
        let mut message = ChatMessage::text(Role::User, "abcdefgh");
        assert_eq!(estimated_message_tokens(&message), 2 + 4);
        message
            .content
            .push(Part::Image(ImageSource::Url("https://example.com/a.png".into())));
        assert_eq!(estimated_message_tokens(&message), 2 + ESTIMATED_IMAGE_TOKENS + 4);
        assert!(message.has_images());
        assert_eq!(message.joined_text(), "abcdefgh");
    }
}
