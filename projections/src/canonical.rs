//! Canonical JSON: the JSON Canonicalization Scheme of RFC 8785 (JCS).
//!
//! One JSON value has exactly one canonical text, so a hash of it can be recomputed by any
//! implementation of the RFC (Python's `jcs`, JavaScript's `canonicalize`, …):
//! - no whitespace between tokens;
//! - object members sorted by their names compared as UTF-16 code units;
//! - strings escaped only where JSON requires it: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`,
//!   other control characters as `\u00xx` (lower-case hex); everything else, non-ASCII
//!   included, as literal UTF-8;
//! - numbers as ECMAScript writes a double (`Number.prototype.toString`): `4.5`, `0.002`,
//!   `1e+30`, `-0` as `0`, integers without a fraction.

use serde_json::{Number, Value};

/// Largest integer a double holds exactly; larger integers are written as doubles, as the
/// RFC requires.
const MAX_EXACT_INTEGER: u64 = 1 << 53;

/// The canonical text of `value`.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    write(&mut out, value);
    out
}

fn write(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => out.push_str(&write_number(number)),
        Value::String(text) => write_string(out, text),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(out, item);
            }
            out.push(']');
        }
        Value::Object(members) => {
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            sorted.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (name, item)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, name);
                out.push(':');
                write(out, item);
            }
            out.push('}');
        }
    }
}

/// serde_json escapes exactly the characters RFC 8785 escapes, in the same notation.
fn write_string(out: &mut String, text: &str) {
    match serde_json::to_string(text) {
        Ok(escaped) => out.push_str(&escaped),
        // Serialising a `str` cannot fail; keep the output valid JSON regardless.
        Err(_) => out.push_str("\"\""),
    }
}

fn write_number(number: &Number) -> String {
    if let Some(n) = number.as_u64().filter(|n| *n <= MAX_EXACT_INTEGER) {
        return n.to_string();
    }
    if let Some(n) = number.as_i64().filter(|n| n.unsigned_abs() <= MAX_EXACT_INTEGER) {
        return n.to_string();
    }
    // serde_json numbers are always finite.
    ecmascript_number(number.as_f64().unwrap_or(0.0))
}

/// `Number.prototype.toString()` of a finite double (ECMA-262, Number::toString).
fn ecmascript_number(value: f64) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    if value < 0.0 {
        return format!("-{}", ecmascript_number(-value));
    }
    // The shortest digits that round-trip, from ryu: value = 0.<digits> × 10^point.
    let mut buffer = ryu::Buffer::new();
    let (digits, point) = decimal_digits(buffer.format_finite(value));
    let k = digits.len() as i32;
    let n = point;
    if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        format!("{int}.{frac}")
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let exponent = n - 1;
        let sign = if exponent < 0 { '-' } else { '+' };
        let (first, rest) = digits.split_at(1);
        if rest.is_empty() {
            format!("{first}e{sign}{}", exponent.abs())
        } else {
            format!("{first}.{rest}e{sign}{}", exponent.abs())
        }
    }
}

/// Splits a positive decimal such as `123.45`, `1e-7` or `1.5e21` into its significant
/// digits (no leading or trailing zeros) and the position of the decimal point relative
/// to them.
fn decimal_digits(text: &str) -> (String, i32) {
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = format!("{int}{frac}");
    let mut point = int.len() as i32 + exponent;
    let leading = digits.len() - digits.trim_start_matches('0').len();
    digits.drain(..leading);
    point -= leading as i32;
    let significant = digits.trim_end_matches('0').len();
    digits.truncate(significant);
    (digits, point)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_example_of_rfc_8785_canonicalises_as_published() {
        let input = r#"{
            "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
            "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
            "literals": [null, true, false]
        }"#;
        let value: Value = serde_json::from_str(input).unwrap();
        assert_eq!(
            to_string(&value),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn members_sort_by_utf16_code_units() {
        // The RFC's sorting example: U+1F600 is a surrogate pair, which sorts before U+FB33.
        let value: Value = serde_json::from_str(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        let expected = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
            \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
            \"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(to_string(&value), expected);
    }

    #[test]
    fn numbers_are_written_as_ecmascript_writes_doubles() {
        let cases = [
            (json!(0), "0"),
            (json!(-0.0), "0"),
            (json!(1.0), "1"),
            (json!(-1.5), "-1.5"),
            (json!(0.2), "0.2"),
            (json!(1e-7), "1e-7"),
            (json!(0.000001), "0.000001"),
            (json!(1e21), "1e+21"),
            (json!(1e20), "100000000000000000000"),
            (json!(123456789012.5), "123456789012.5"),
            (json!(9007199254740993u64), "9007199254740992"),
            (json!(-42), "-42"),
            (json!(5e-324), "5e-324"),
            (json!(1.7976931348623157e308), "1.7976931348623157e+308"),
        ];
        for (value, expected) in cases {
            assert_eq!(to_string(&value), expected, "{value}");
        }
    }

    #[test]
    fn nested_values_have_no_whitespace() {
        let value = json!({ "b": [1, { "d": null, "c": "x y" }], "a": true });
        assert_eq!(to_string(&value), r#"{"a":true,"b":[1,{"c":"x y","d":null}]}"#);
    }
}
