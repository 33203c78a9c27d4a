//! What changed between two versions of a prompt: the templates' line diff, the parameters
//! whose values differ, the model and the variables.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

/// One side of a comparison: what a published version holds.
#[derive(Debug, Clone, Copy)]
pub struct VersionContent<'a> {
    pub version: u32,
    pub template: &'a str,
    pub model: Option<&'a str>,
    pub params: Option<&'a Value>,
    pub variables: &'a [String],
}

/// The differences between two versions, as the API shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionDiff {
    pub template: TemplateDiff,
    /// Parameters whose value differs, with both values (`null`: absent).
    pub params: Vec<ParamChange>,
    pub model: ModelChange,
    pub variables: VariablesChange,
}

/// The templates' line diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateDiff {
    pub lines: Vec<DiffLine>,
    /// The same as a unified diff, with headers `v<from>` and `v<to>`.
    pub unified: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffLine {
    pub op: DiffOp,
    /// The line without its line break.
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiffOp {
    Equal,
    Delete,
    Insert,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamChange {
    pub key: String,
    pub from: Option<Value>,
    pub to: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelChange {
    pub from: Option<String>,
    pub to: Option<String>,
    pub changed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VariablesChange {
    pub from: Vec<String>,
    pub to: Vec<String>,
}

impl VersionDiff {
    pub fn between(from: VersionContent<'_>, to: VersionContent<'_>) -> Self {
        let text_diff = similar::TextDiff::from_lines(from.template, to.template);
        let lines = text_diff
            .iter_all_changes()
            .map(|change| DiffLine {
                op: match change.tag() {
                    similar::ChangeTag::Equal => DiffOp::Equal,
                    similar::ChangeTag::Delete => DiffOp::Delete,
                    similar::ChangeTag::Insert => DiffOp::Insert,
                },
                text: change.value().trim_end_matches('\n').to_string(),
            })
            .collect();
        let unified = text_diff
            .unified_diff()
            .context_radius(3)
            .header(&format!("v{}", from.version), &format!("v{}", to.version))
            .to_string();
        Self {
            template: TemplateDiff { lines, unified },
            params: changed_params(from.params, to.params),
            model: ModelChange {
                from: from.model.map(str::to_string),
                to: to.model.map(str::to_string),
                changed: from.model != to.model,
            },
            variables: VariablesChange {
                from: from.variables.to_vec(),
                to: to.variables.to_vec(),
            },
        }
    }
}

/// Keys whose value differs between two parameter objects, with both values, by key.
fn changed_params(from: Option<&Value>, to: Option<&Value>) -> Vec<ParamChange> {
    let as_map = |v: Option<&Value>| -> BTreeMap<String, Value> {
        v.and_then(Value::as_object)
            .map(|o| o.clone().into_iter().collect())
            .unwrap_or_default()
    };
    let (from, to) = (as_map(from), as_map(to));
    let keys: BTreeSet<&String> = from.keys().chain(to.keys()).collect();
    keys.into_iter()
        .filter(|k| from.get(*k) != to.get(*k))
        .map(|k| ParamChange {
            key: k.clone(),
            from: from.get(k).cloned(),
            to: to.get(k).cloned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn content<'a>(version: u32, template: &'a str, params: Option<&'a Value>) -> VersionContent<'a> {
        VersionContent {
            version,
            template,
            model: None,
            params,
            variables: &[],
        }
    }

    #[test]
    fn lines_are_marked_equal_deleted_or_inserted_and_the_unified_diff_names_the_versions() {
        let diff = VersionDiff::between(content(1, "a\nb\n", None), content(2, "a\nc\n", None));
        let ops: Vec<(DiffOp, &str)> = diff
            .template
            .lines
            .iter()
            .map(|l| (l.op, l.text.as_str()))
            .collect();
        assert_eq!(
            ops,
            [(DiffOp::Equal, "a"), (DiffOp::Delete, "b"), (DiffOp::Insert, "c")]
        );
        assert!(
            diff.template.unified.starts_with("--- v1\n+++ v2\n"),
            "{}",
            diff.template.unified
        );
        assert!(diff.template.unified.contains("-b\n+c\n"));
    }

    #[test]
    fn only_parameters_whose_value_differs_are_listed_with_both_values() {
        let from = json!({"temperature": 0.2, "top_p": 1, "stop": ["x"]});
        let to = json!({"temperature": 0.4, "top_p": 1, "seed": 7});
        let diff = VersionDiff::between(content(1, "t", Some(&from)), content(2, "t", Some(&to)));
        let changes: Vec<(&str, Option<&Value>, Option<&Value>)> = diff
            .params
            .iter()
            .map(|c| (c.key.as_str(), c.from.as_ref(), c.to.as_ref()))
            .collect();
        assert_eq!(
            changes,
            [
                ("seed", None, Some(&json!(7))),
                ("stop", Some(&json!(["x"])), None),
                ("temperature", Some(&json!(0.2)), Some(&json!(0.4))),
            ]
        );
    }

    #[test]
    fn a_model_change_is_flagged_and_absent_parameters_compare_as_empty() {
        let mut to = content(2, "t", None);
        to.model = Some("openai/gpt-4o");
        let diff = VersionDiff::between(content(1, "t", None), to);
        assert!(diff.model.changed);
        assert_eq!(diff.model.to.as_deref(), Some("openai/gpt-4o"));
        assert!(diff.params.is_empty());
        assert!(diff.template.lines.iter().all(|l| l.op == DiffOp::Equal));
    }
}
