//! Prompt templates: text with `{{variable}}` placeholders.

use serde_json::{Map, Value};

use crate::fields::Invalid;
use crate::text::InvalidText;

/// Returns the distinct variable names of `template` in order of first appearance.
///
/// A placeholder is `{{ name }}` where `name` is a letter or `_` followed by letters,
/// digits, `_` or `.`. Single braces are ordinary text (templates often contain JSON);
/// an unclosed `{{`, a stray `}}` or an invalid name is an error naming the byte offset.
pub fn extract_variables(template: &str) -> Result<Vec<String>, InvalidText> {
    let mut variables: Vec<String> = Vec::new();
    let mut rest = template;
    let mut offset = 0;
    loop {
        let next_open = rest.find("{{");
        let next_close = rest.find("}}");
        match (next_open, next_close) {
            (None, None) => return Ok(variables),
            (None, Some(close)) => return Err(stray_close(offset + close)),
            (Some(open), Some(close)) if close < open => return Err(stray_close(offset + close)),
            (Some(open), _) => {
                let after_open = &rest[open + 2..];
                let Some(len) = after_open.find("}}") else {
                    return Err(InvalidText::new(
                        "template",
                        format!("unclosed '{{{{' at byte {}", offset + open),
                    ));
                };
                let name = after_open[..len].trim();
                if !is_variable_name(name) {
                    return Err(InvalidText::new(
                        "template",
                        format!("invalid variable name {:?} at byte {}", name, offset + open),
                    ));
                }
                if !variables.iter().any(|v| v == name) {
                    variables.push(name.to_string());
                }
                let consumed = open + 2 + len + 2;
                rest = &rest[consumed..];
                offset += consumed;
            }
        }
    }
}

/// Fills `template`'s placeholders with `variables`: a string as it is, any other JSON value
/// as its JSON text. Every placeholder without a value, and every value no placeholder
/// takes (a misspelt name), is reported at once, on the field `variables`.
pub fn render(template: &str, variables: &Map<String, Value>) -> Result<String, Invalid> {
    let names = extract_variables(template).map_err(Invalid::from)?;
    let mut errors = Invalid::default();
    for name in &names {
        if !variables.contains_key(name) {
            errors.push(InvalidText::new(
                "variables",
                format!("{name:?} is missing: the template uses it"),
            ));
        }
    }
    for name in variables.keys() {
        if !names.iter().any(|n| n == name) {
            errors.push(InvalidText::new(
                "variables",
                format!("{name:?} is not a variable of the template"),
            ));
        }
    }
    errors.into_result()?;
    let mut rendered = String::with_capacity(template.len());
    let mut rest = template;
    // The template parsed above, so every `{{` has its `}}` and a valid name.
    while let Some(open) = rest.find("{{") {
        rendered.push_str(&rest[..open]);
        let after_open = &rest[open + 2..];
        let Some(len) = after_open.find("}}") else { break };
        let name = after_open[..len].trim();
        match variables.get(name) {
            Some(Value::String(text)) => rendered.push_str(text),
            Some(other) => rendered.push_str(&other.to_string()),
            None => {}
        }
        rest = &after_open[len + 2..];
    }
    rendered.push_str(rest);
    Ok(rendered)
}

fn stray_close(at: usize) -> InvalidText {
    InvalidText::new(
        "template",
        format!("'}}}}' without a matching '{{{{' at byte {at}"),
    )
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else { return false };
    (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{extract_variables, render};

    #[test]
    fn rendering_fills_every_placeholder_and_reports_every_missing_or_unknown_name() {
        let variables = json!({"name": "Ada", "count": 3, "topic": {"a": 1}});
        let rendered = render(
            "Hi {{name}}, {{ count }} items on {{topic}}; {\"json\": 1} {{name}}",
            variables.as_object().unwrap(),
        )
        .unwrap();
        assert_eq!(rendered, "Hi Ada, 3 items on {\"a\":1}; {\"json\": 1} Ada");
        let errors = render("{{a}} {{b}}", json!({"b": "x", "c": "y"}).as_object().unwrap())
            .unwrap_err()
            .into_errors();
        let reasons: Vec<String> = errors.iter().map(|e| e.reason.clone()).collect();
        assert_eq!(
            reasons,
            vec![
                "\"a\" is missing: the template uses it".to_string(),
                "\"c\" is not a variable of the template".to_string()
            ]
        );
        assert!(errors.iter().all(|e| e.field == "variables"));
    }

    #[test]
    fn variables_are_listed_once_in_order_of_appearance() {
        let vars = extract_variables("Hi {{name}}, {{ topic }} is {{name}}'s {\"json\": 1}").unwrap();
        assert_eq!(vars, vec!["name", "topic"]);
    }

    #[test]
    fn unbalanced_braces_and_bad_names_are_rejected() {
        assert!(extract_variables("Hi {{name").is_err());
        assert!(extract_variables("Hi name}}").is_err());
        assert!(extract_variables("Hi }} {{name}}").is_err());
        assert!(extract_variables("Hi {{}}").is_err());
        assert!(extract_variables("Hi {{1abc}}").is_err());
        assert!(extract_variables("Hi {{a b}}").is_err());
    }

    #[test]
    fn a_template_without_placeholders_has_no_variables() {
        assert_eq!(extract_variables("plain { text }").unwrap(), Vec::<String>::new());
    }
}
