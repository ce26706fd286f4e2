//! Templates in strings: `{{params.epochs}}`, `{{inputs.data}}`, `{{outputs.model}}`, `{{item}}`.

use std::fmt;

/// What a template refers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TemplateRef {
    /// `{{params.NAME}}`: a pipeline param.
    Param(String),
    /// `{{inputs.NAME}}`: the path of one of the step's inputs.
    Input(String),
    /// `{{outputs.NAME}}`: the path of one of the step's outputs.
    Output(String),
    /// `{{item}}`: the current fan-out item.
    Item,
    /// `{{item.NAME}}`: a field of the current item, when the items are objects (a list a
    /// step wrote at run time).
    ItemField(String),
    /// `{{steps.STEP.OUTPUT}}`: an output a step writes, read when the run gets there (a
    /// fan-out over a list a step produced).
    StepOutput {
        /// The step.
        step: String,
        /// Its output.
        output: String,
    },
    /// `{{steps.fast.score ?? steps.slow.score ?? 0}}`: the first of these outputs whose step
    /// ran (a join after conditional branches), else the default, read when the run gets there.
    FirstOf {
        /// The outputs to try, in order: `(step, output)`.
        outputs: Vec<(String, String)>,
        /// The value when none of their steps ran, as JSON text (`0`, `"none"`, `true`).
        default: Option<String>,
    },
}

impl TemplateRef {
    /// The step outputs this reference reads, in order: `(step, output)`.
    pub fn step_outputs(&self) -> Vec<(&str, &str)> {
        match self {
            TemplateRef::StepOutput { step, output } => vec![(step.as_str(), output.as_str())],
            TemplateRef::FirstOf { outputs, .. } => outputs
                .iter()
                .map(|(s, o)| (s.as_str(), o.as_str()))
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for TemplateRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateRef::Param(n) => write!(f, "params.{n}"),
            TemplateRef::Input(n) => write!(f, "inputs.{n}"),
            TemplateRef::Output(n) => write!(f, "outputs.{n}"),
            TemplateRef::Item => f.write_str("item"),
            TemplateRef::ItemField(n) => write!(f, "item.{n}"),
            TemplateRef::StepOutput { step, output } => write!(f, "steps.{step}.{output}"),
            TemplateRef::FirstOf { outputs, default } => {
                for (k, (step, output)) in outputs.iter().enumerate() {
                    if k > 0 {
                        f.write_str(" ?? ")?;
                    }
                    write!(f, "steps.{step}.{output}")?;
                }
                match default {
                    Some(d) => write!(f, " ?? {d}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// One piece of a templated string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Text copied as it is.
    Text(String),
    /// A `{{...}}` reference; `offset` is where the `{{` starts in the string.
    Ref {
        /// What it refers to.
        target: TemplateRef,
        /// Byte offset of `{{` in the string.
        offset: usize,
    },
}

/// A template that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// What is wrong.
    pub message: String,
    /// Byte offset in the string.
    pub offset: usize,
}

/// Splits `s` into text and references; `{{` with nothing to close it is an error.
///
/// The error is the first one in the string; [`parse_all`] finds every one.
pub fn parse(s: &str) -> Result<Vec<Segment>, TemplateError> {
    let (segments, mut errors) = parse_all(s);
    if errors.is_empty() {
        Ok(segments)
    } else {
        Err(errors.remove(0))
    }
}

/// Splits `s` into text and references, reading past every reference that cannot be parsed:
/// the segments that could be read, and an error for each one that could not, in order.
///
/// A `{{` with nothing to close it ends the reading: what follows it is not a template.
pub fn parse_all(s: &str) -> (Vec<Segment>, Vec<TemplateError>) {
    let mut segments = Vec::new();
    let mut errors = Vec::new();
    let mut rest = s;
    let mut base = 0;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            segments.push(Segment::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            errors.push(TemplateError {
                message: "`{{` is not closed with `}}`".into(),
                offset: base + start,
            });
            return (segments, errors);
        };
        let inner = after[..end].trim();
        match parse_ref(inner) {
            Ok(target) => segments.push(Segment::Ref {
                target,
                offset: base + start,
            }),
            Err(message) => errors.push(TemplateError {
                message,
                offset: base + start,
            }),
        }
        let consumed = start + 2 + end + 2;
        rest = &rest[consumed..];
        base += consumed;
    }
    if !rest.is_empty() {
        segments.push(Segment::Text(rest.to_owned()));
    }
    (segments, errors)
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn parse_ref(inner: &str) -> Result<TemplateRef, String> {
    if inner.is_empty() {
        return Err("empty template `{{}}`: write `{{params.NAME}}`, `{{inputs.NAME}}`, `{{outputs.NAME}}` or `{{item}}`".into());
    }
    if inner == "item" {
        return Ok(TemplateRef::Item);
    }
    if let Some(field) = inner.strip_prefix("item.") {
        if !is_ident(field) {
            return Err(format!(
                "template `{{{{{inner}}}}}` needs a field name after `item.`, like `item.NAME`"
            ));
        }
        return Ok(TemplateRef::ItemField(field.to_owned()));
    }
    if inner.contains("??") {
        return first_of(inner);
    }
    if let Some(rest) = inner.strip_prefix("steps.") {
        return match rest.split_once('.') {
            Some((step, output)) if is_ident(step) && is_ident(output) => {
                Ok(TemplateRef::StepOutput {
                    step: step.to_owned(),
                    output: output.to_owned(),
                })
            }
            _ => Err(format!(
                "template `{{{{{inner}}}}}` names no output: write `steps.STEP.OUTPUT`"
            )),
        };
    }
    let (scope, name) = inner.split_once('.').unwrap_or((inner, ""));
    let known = ["params", "inputs", "outputs"];
    if !known.contains(&scope) {
        let hint = match scope {
            "param" | "parameters" => " (did you mean `params`?)",
            "input" => " (did you mean `inputs`?)",
            "step" => " (did you mean `steps`?)",
            "output" => " (did you mean `outputs`?)",
            "items" => " (did you mean `item`?)",
            _ => "",
        };
        return Err(format!(
            "unknown template `{{{{{inner}}}}}`{hint}: templates are `params.NAME`, `inputs.NAME`, `outputs.NAME`, `item` (or `item.FIELD`) and `steps.STEP.OUTPUT` (a small output another step writes)"
        ));
    }
    if !is_ident(name) {
        return Err(format!(
            "template `{{{{{inner}}}}}` needs a name after `{scope}.`, like `{scope}.NAME`"
        ));
    }
    Ok(match scope {
        "params" => TemplateRef::Param(name.to_owned()),
        "inputs" => TemplateRef::Input(name.to_owned()),
        _ => TemplateRef::Output(name.to_owned()),
    })
}

/// `steps.a.x ?? steps.b.x ?? DEFAULT`: outputs tried in order, then a JSON scalar.
fn first_of(inner: &str) -> Result<TemplateRef, String> {
    let parts: Vec<&str> = inner.split("??").map(str::trim).collect();
    let mut outputs = Vec::new();
    let mut default = None;
    for (k, part) in parts.iter().enumerate() {
        let last = k + 1 == parts.len();
        if let Some(rest) = part.strip_prefix("steps.") {
            match rest.split_once('.') {
                Some((step, output)) if is_ident(step) && is_ident(output) => {
                    outputs.push((step.to_owned(), output.to_owned()));
                    continue;
                }
                _ => {
                    return Err(format!(
                        "template `{{{{{inner}}}}}`: `{part}` names no output: write `steps.STEP.OUTPUT`"
                    ));
                }
            }
        }
        if k == 0 {
            return Err(format!(
                "template `{{{{{inner}}}}}`: `??` gives a step's output a fallback, as in `{{{{steps.STEP.OUTPUT ?? 0}}}}`; `{part}` is not a step's output"
            ));
        }
        if !last {
            return Err(format!(
                "template `{{{{{inner}}}}}`: the default `{part}` must come last; before it, write `steps.STEP.OUTPUT`"
            ));
        }
        default = Some(literal(part).ok_or_else(|| {
            format!(
                "template `{{{{{inner}}}}}`: the default `{part}` is not a value: write a number, `true`, `false` or a quoted string (`\"none\"`)"
            )
        })?);
    }
    Ok(TemplateRef::FirstOf { outputs, default })
}

/// A default written in a template, as JSON text: a number, a boolean, or a string quoted
/// with `"` or `'`.
fn literal(text: &str) -> Option<String> {
    if let Some(quoted) = text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
        return Some(serde_json::Value::String(quoted.to_owned()).to_string());
    }
    match serde_json::from_str::<serde_json::Value>(text).ok()? {
        v @ (serde_json::Value::Number(_)
        | serde_json::Value::Bool(_)
        | serde_json::Value::String(_)) => Some(v.to_string()),
        _ => None,
    }
}

/// If the whole string is one template, what it refers to.
pub fn whole_ref(s: &str) -> Option<TemplateRef> {
    match parse(s.trim()).ok()?.as_slice() {
        [Segment::Ref { target, .. }] => Some(target.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_text_and_refs() {
        let segs = parse("--lr={{ item }} --out {{outputs.model}}").unwrap();
        assert_eq!(
            segs,
            vec![
                Segment::Text("--lr=".into()),
                Segment::Ref {
                    target: TemplateRef::Item,
                    offset: 5
                },
                Segment::Text(" --out ".into()),
                Segment::Ref {
                    target: TemplateRef::Output("model".into()),
                    offset: 22
                },
            ]
        );
    }

    #[test]
    fn errors() {
        assert!(
            parse("{{params.x")
                .unwrap_err()
                .message
                .contains("not closed")
        );
        assert!(
            parse("{{param.x}}")
                .unwrap_err()
                .message
                .contains("did you mean `params`")
        );
        assert!(parse("{{params.}}").is_err());
        assert!(parse("{{}}").is_err());
        assert_eq!(
            whole_ref(" {{params.lr}} "),
            Some(TemplateRef::Param("lr".into()))
        );
        assert_eq!(whole_ref("x{{params.lr}}"), None);
    }

    #[test]
    fn first_of_reads_outputs_in_order_then_a_default() {
        let target = whole_ref("{{ steps.fast.score ?? steps.slow.score ?? 0 }}").unwrap();
        assert_eq!(
            target,
            TemplateRef::FirstOf {
                outputs: vec![
                    ("fast".into(), "score".into()),
                    ("slow".into(), "score".into())
                ],
                default: Some("0".into()),
            }
        );
        assert_eq!(
            target.to_string(),
            "steps.fast.score ?? steps.slow.score ?? 0"
        );
        assert_eq!(
            target.step_outputs(),
            [("fast", "score"), ("slow", "score")]
        );
        let quoted = whole_ref("{{steps.a.x ?? 'none'}}").unwrap();
        assert_eq!(quoted.to_string(), "steps.a.x ?? \"none\"");
        assert_eq!(
            whole_ref(r#"{{steps.a.x ?? "none"}}"#),
            Some(quoted.clone())
        );
        for (bad, says) in [
            ("{{params.x ?? 1}}", "not a step's output"),
            ("{{steps.a.x ?? 1 ?? steps.b.y}}", "must come last"),
            ("{{steps.a.x ?? none}}", "is not a value"),
            ("{{steps.a.x ?? [1]}}", "is not a value"),
            ("{{steps.a ?? 1}}", "names no output"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.message.contains(says), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn every_bad_reference_is_reported() {
        let (segments, errors) = parse_all("{{param.a}} {{params.b}} {{input.c}} {{items}}");
        let offsets: Vec<usize> = errors.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, [0, 25, 37]);
        assert!(errors[0].message.contains("did you mean `params`"));
        assert!(errors[1].message.contains("did you mean `inputs`"));
        assert!(errors[2].message.contains("did you mean `item`"));
        assert!(segments.contains(&Segment::Ref {
            target: TemplateRef::Param("b".into()),
            offset: 12
        }));
        // An unclosed `{{` ends the reading; the errors before it stay.
        let (_, errors) = parse_all("{{nope}} {{params.x");
        assert_eq!(errors.len(), 2);
        assert!(errors[1].message.contains("not closed"));
        assert_eq!(parse("{{nope}} {{params.x").unwrap_err(), errors[0]);
    }
}
