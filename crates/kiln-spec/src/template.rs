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
            "unknown template `{{{{{inner}}}}}`{hint}: templates are `params.NAME`, `inputs.NAME`, `outputs.NAME`, `item` (or `item.FIELD`) and, in `for_each`, `steps.STEP.OUTPUT`"
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
