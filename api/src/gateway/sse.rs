//! Reading a Server-Sent Events body as it arrives: bytes in, whole events out.

/// One event: its `event:` name (if any) and its `data:` lines joined by newlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Splits a byte stream into events. Chunks may end anywhere, even inside a UTF-8
/// character: only whole lines are decoded.
#[derive(Debug, Default)]
pub struct SseParser {
    pending: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

/// Largest line kept while waiting for its end: a provider sending more without a newline is
/// not speaking SSE.
const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

impl SseParser {
    /// Feeds `chunk`; returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + offset;
            let line = &self.pending[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = std::str::from_utf8(line)
                .map_err(|_| "the event stream is not UTF-8".to_string())?
                .to_string();
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
            start = end + 1;
        }
        self.pending.drain(..start);
        if self.pending.len() > MAX_LINE_BYTES {
            return Err("the event stream sent a line over 8 MiB".into());
        }
        Ok(events)
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if self.data.is_empty() {
                self.event = None;
                return None;
            }
            return Some(SseEvent {
                event: self.event.take(),
                data: std::mem::take(&mut self.data).join("\n"),
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => self.data.push(value.to_string()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let body =
            "event: message_start\ndata: {\"a\":1}\n\n: comment\ndata: x\ndata: y\r\n\r\ndata: [DONE]\n\n";
        for split in 0..body.len() {
            let mut parser = SseParser::default();
            let mut events = parser.push(&body.as_bytes()[..split]).unwrap();
            events.extend(parser.push(&body.as_bytes()[split..]).unwrap());
            assert_eq!(
                events,
                vec![
                    SseEvent {
                        event: Some("message_start".into()),
                        data: "{\"a\":1}".into()
                    },
                    SseEvent {
                        event: None,
                        data: "x\ny".into()
                    },
                    SseEvent {
                        event: None,
                        data: "[DONE]".into()
                    },
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn a_character_split_across_chunks_is_decoded_once_whole() {
        let body = "data: héllo\n\n".as_bytes();
        let mut parser = SseParser::default();
        let split = body.iter().position(|&b| b >= 0x80).unwrap() + 1;
        assert!(parser.push(&body[..split]).unwrap().is_empty());
        assert_eq!(parser.push(&body[split..]).unwrap()[0].data, "héllo");
    }
}
