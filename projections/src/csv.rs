//! CSV fields as RFC 4180 and PostgreSQL's `COPY … (format csv)` read them.

/// Appends one field: a present value quoted (inner quotes doubled), an absent one empty,
/// which COPY reads as NULL.
pub fn push_field(out: &mut String, value: Option<&str>) {
    if let Some(value) = value {
        out.push('"');
        for c in value.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    }
}

/// Appends a whole record: the fields separated by commas, then a line break.
pub fn push_record<'a>(out: &mut String, fields: impl IntoIterator<Item = Option<&'a str>>) {
    for (i, field) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_field(out, field);
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_and_absent_ones_empty() {
        let mut out = String::new();
        push_record(
            &mut out,
            [Some("plain"), None, Some("say \"hi\",\nbye"), Some("")],
        );
        assert_eq!(out, "\"plain\",,\"say \"\"hi\"\",\nbye\",\"\"\n");
    }
}
