//! Prompt templates: text with `{{variable}}` placeholders.

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
    use super::extract_variables;

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
