//! Turns serde-saphyr's errors into diagnostics that say what is wrong in kiln's terms.
//!
//! The error is classified by its variant, never by its text, so a YAML syntax error is always
//! `kiln::spec::syntax` and a value our own types refuse is `kiln::spec::invalid-value`. Where
//! the parser's words are generic ("invalid u32", "expected mapping start"), the message is
//! rebuilt from the source text at the error's position.

use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{Error, MessageFormatter, UserMessageFormatter};

use crate::diag::Diagnostic;
use crate::located::Span;
use crate::suggest::did_you_mean;

/// The limits the parser runs under (see [`crate::parse`]).
pub(crate) const MAX_DEPTH: usize = 32;
pub(crate) const MAX_NODES: usize = 2_000_000;
pub(crate) const MAX_ALIASES: usize = 1_000;

/// A diagnostic for a YAML error in `text`.
pub(crate) fn diagnose(err: &Error, text: &str) -> Diagnostic {
    let err = innermost(err);
    let span = err.location().map(|loc| span_of(&loc, text));
    let mut d = classify(err, text, span);
    // `classify` may point somewhere better (an unclosed bracket) than the parser did.
    if d.span.is_none() {
        d.span = span;
    }
    d
}

fn innermost(err: &Error) -> &Error {
    match err {
        Error::WithSnippet { error, .. } | Error::AliasError { error, .. } => innermost(error),
        other => other,
    }
}

/// The byte span of a parser location; parser errors carry only character offsets.
fn span_of(loc: &serde_saphyr::Location, text: &str) -> Span {
    let span = loc.span();
    let (offset, len) = match span.byte_offset() {
        Some(offset) => (offset as usize, span.byte_len().unwrap_or(1) as usize),
        None => {
            let start = char_to_byte(text, span.offset() as usize);
            let end = char_to_byte(text, (span.offset() + span.len()) as usize);
            (start, end - start)
        }
    };
    let offset = floor_boundary(text, offset.min(text.len()));
    let end = floor_boundary(text, offset.saturating_add(len.max(1)).min(text.len()));
    Span::new(offset, end - offset)
}

fn char_to_byte(text: &str, chars: usize) -> usize {
    text.char_indices()
        .nth(chars)
        .map_or(text.len(), |(i, _)| i)
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn classify(err: &Error, text: &str, span: Option<Span>) -> Diagnostic {
    let found = || span.map(|s| scalar_at(text, s.offset)).unwrap_or_default();
    let node = || span.map_or("a value", |s| describe_node(text, s.offset));
    match err {
        Error::Message { msg, .. } => Diagnostic::error("kiln::spec::invalid-value", msg.clone()),
        Error::SerdeUnknownField {
            field, expected, ..
        } => unknown_field(field, expected),
        Error::SerdeUnknownVariant {
            variant, expected, ..
        } => {
            let hint = crate::suggest::did_you_mean(variant, expected.iter().copied());
            let list = expected
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ");
            Diagnostic::error(
                "kiln::spec::invalid-value",
                format!("unknown value `{variant}`{hint}"),
            )
            .help(format!("expected one of: {list}"))
        }
        Error::SerdeMissingField { field, .. } => {
            if matches!(*field, "apiVersion" | "name" | "steps") {
                missing_top_level_field(field, text)
            } else {
                missing_field(field)
            }
        }
        Error::DuplicateMappingKey { key, .. } => {
            let message = match key {
                Some(key) => format!("duplicate key `{key}`"),
                None => "duplicate key".to_owned(),
            };
            Diagnostic::error("kiln::spec::duplicate-key", message)
                .label("written again here")
                .help("each key may appear once in a mapping, and every step needs its own name: rename or remove one")
        }
        Error::InvalidScalar { ty, .. } => invalid_scalar(ty, &found()),
        Error::InvalidBooleanStrict { .. } => Diagnostic::error(
            "kiln::spec::invalid-value",
            format!("expected `true` or `false`, found `{}`", found()),
        )
        .help("kiln reads YAML 1.2: `yes`, `no`, `on` and `off` are strings, not booleans"),
        Error::NullIntoString { .. } => Diagnostic::error(
            "kiln::spec::invalid-value",
            "expected a string, found nothing",
        )
        .help("write a value after the `:`, or remove the key"),
        Error::Unexpected { expected, .. } => {
            let (what, help) = match *expected {
                "string scalar" => ("a string", None),
                "sequence start" => (
                    "a list",
                    Some("write a list as `[a, b]`, or as lines that start with `- `"),
                ),
                "mapping start" | "empty mapping start" => (
                    "a mapping",
                    Some("write a mapping as `key: value` lines indented under its name"),
                ),
                other => (other, None),
            };
            let d = Diagnostic::error(
                "kiln::spec::invalid-value",
                format!("expected {what}, found {}", node()),
            );
            match help {
                Some(help) => d.help(help),
                None => d,
            }
        }
        Error::SerdeInvalidType {
            unexpected,
            expected,
            ..
        }
        | Error::SerdeInvalidValue {
            unexpected,
            expected,
            ..
        } => Diagnostic::error(
            "kiln::spec::invalid-value",
            format!("expected {expected}, found {unexpected}"),
        ),
        Error::SerdeInvalidLength { len, expected, .. } => Diagnostic::error(
            "kiln::spec::invalid-value",
            format!("expected {expected}, found {len} items"),
        ),
        Error::NonFiniteFloat { value, .. } => Diagnostic::error(
            "kiln::spec::invalid-value",
            format!("`{value}` is not a finite number"),
        ),
        Error::Budget { breach, .. } => budget(breach),
        Error::AliasReplayCounterOverflow { .. }
        | Error::AliasReplayLimitExceeded { .. }
        | Error::AliasExpansionLimitExceeded { .. }
        | Error::AliasReplayStackDepthExceeded { .. } => alias_bomb(),
        Error::MultipleDocuments { .. } => multiple_documents(),
        Error::UnknownAnchor { .. } => Diagnostic::error(
            "kiln::spec::syntax",
            "this alias refers to an anchor that is not defined before it",
        )
        .help("define the anchor (`&name`) before its first use (`*name`)"),
        Error::Eof { .. } => Diagnostic::error("kiln::spec::syntax", "unexpected end of file")
            .help(
                "the file ends in the middle of a value: check for an unclosed `[`, `{` or quote",
            ),
        Error::ExternalMessage { msg, .. } => syntax(msg, text, span),
        other => Diagnostic::error(
            "kiln::spec::syntax",
            first_line(&UserMessageFormatter.format_message(other)),
        ),
    }
}

/// Whether the error lies within the part of the document being read (a value of the wrong
/// type, an unknown or missing field, a duplicate key), so that reading can go on past that
/// part. Syntax errors, budget breaches and the like stop the reading.
pub(crate) fn can_read_past(err: &Error) -> bool {
    matches!(
        innermost(err),
        Error::Message { .. }
            | Error::SerdeUnknownField { .. }
            | Error::SerdeUnknownVariant { .. }
            | Error::SerdeMissingField { .. }
            | Error::InvalidScalar { .. }
            | Error::InvalidBooleanStrict { .. }
            | Error::NullIntoString { .. }
            | Error::Unexpected { .. }
            | Error::SerdeInvalidType { .. }
            | Error::SerdeInvalidValue { .. }
            | Error::SerdeInvalidLength { .. }
            | Error::NonFiniteFloat { .. }
            | Error::DuplicateMappingKey { .. }
    )
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim().to_owned()
}

/// Which mapping a field list belongs to, for messages.
fn mapping_of(expected: &[&str]) -> &'static str {
    let has = |f: &str| expected.contains(&f);
    if has("apiVersion") {
        "at the top level"
    } else if has("wasm") {
        "in a step"
    } else if has("image") && has("limits") {
        "in `defaults`"
    } else if has("max_age") {
        "in `cache`"
    } else if has("image") {
        "in `container`"
    } else if has("cpu") {
        "in `resources`"
    } else if has("fuel") {
        "in `limits`"
    } else if has("artifact") {
        "in a `wasm` build"
    } else if has("type") {
        "in a param"
    } else if has("from") && has("to") {
        "in an export"
    } else {
        "here"
    }
}

/// Common names from other pipeline tools, and what kiln calls them.
const FIELD_ALIASES: &[(&str, &str)] = &[
    ("parameters", "params"),
    ("param", "params"),
    ("input", "inputs"),
    ("output", "outputs"),
    ("depends_on", "after"),
    ("depends-on", "after"),
    ("dependencies", "after"),
    ("needs", "after"),
    ("if", "when"),
    ("condition", "when"),
    ("foreach", "for_each"),
    ("for-each", "for_each"),
    ("forEach", "for_each"),
    ("withItems", "for_each"),
    ("matrix", "for_each"),
    ("arguments", "args"),
    ("cmd", "command"),
    ("entrypoint", "command"),
    ("environment", "env"),
    ("gpus", "gpu"),
    ("mem", "memory"),
    ("cpus", "cpu"),
    ("retry", "retries"),
    ("timeout_s", "timeout"),
    ("component", "wasm"),
    ("api_version", "apiVersion"),
    ("apiversion", "apiVersion"),
    ("version", "apiVersion"),
    ("default_value", "default"),
];

/// An unknown field in the mapping whose fields are `expected`.
pub(crate) fn unknown_field(field: &str, expected: &[&str]) -> Diagnostic {
    let alias = FIELD_ALIASES
        .iter()
        .find(|(from, to)| *from == field && expected.contains(to))
        .map(|(_, to)| format!(" (did you mean `{to}`?)"));
    let hint = alias.unwrap_or_else(|| did_you_mean(field, expected.iter().copied()));
    let mut d = Diagnostic::error(
        "kiln::spec::unknown-field",
        format!("unknown field `{field}` {}{hint}", mapping_of(expected)),
    );
    if !expected.is_empty() {
        d = d.help(format!("expected one of: {}", expected.join(", ")));
    }
    if expected == crate::pipeline::DEFAULT_FIELDS
        && crate::pipeline::STEP_ONLY_FIELDS.contains(&field)
    {
        d = d.help(format!(
            "`{field}` belongs to each step and cannot be a default; `defaults` may set {}",
            expected.join(", ")
        ));
    } else if expected.contains(&"image") && ["with", "inputs", "outputs"].contains(&field) {
        d = d.help(format!(
            "`{field}` belongs to the step, not to its `container`: indent it like `container`"
        ));
    }
    d
}

/// A missing `apiVersion`, `name` or `steps`, pointed at the start of the pipeline.
pub(crate) fn missing_top_level_field(field: &str, text: &str) -> Diagnostic {
    // The parser notices at the end of the document; the fix goes at its start.
    missing_field(field)
        .at(first_content(text))
        .label("the pipeline starts here")
}

fn missing_field(field: &str) -> Diagnostic {
    let (message, help) = match field {
        "apiVersion" => (
            "the pipeline has no `apiVersion`".to_owned(),
            format!("add `apiVersion: {}` as the first line", crate::API_VERSION),
        ),
        "name" => (
            "the pipeline has no `name`".to_owned(),
            "add `name: NAME` (lowercase letters, digits, `_` and `-`)".to_owned(),
        ),
        "steps" => (
            "the pipeline has no `steps`".to_owned(),
            "add `steps:` with at least one step under it".to_owned(),
        ),
        "type" => (
            "a param has no `type`".to_owned(),
            format!("give it one of: {}", crate::PARAM_TYPES.join(", ")),
        ),
        "description" => (
            "a param has no `description`".to_owned(),
            "say in a few words what the param means: `description: ...`".to_owned(),
        ),
        "image" => (
            "a container has no `image`".to_owned(),
            "name the image to run, like `image: python:3.12-slim`".to_owned(),
        ),
        "source" | "command" | "artifact" => (
            format!("a `wasm` build has no `{field}`"),
            "a build needs `source` (the folder), `command` (how to build it) and `artifact` (the `.wasm` it writes)".to_owned(),
        ),
        other => (
            format!("missing field `{other}`"),
            format!("add `{other}`"),
        ),
    };
    Diagnostic::error("kiln::spec::missing-field", message).help(help)
}

fn invalid_scalar(ty: &str, found: &str) -> Diagnostic {
    let found_text = if found.is_empty() {
        "nothing".to_owned()
    } else {
        format!("`{found}`")
    };
    let unsigned = matches!(ty, "u8" | "u16" | "u32" | "u64" | "u128" | "usize");
    let signed = matches!(ty, "i8" | "i16" | "i32" | "i64" | "i128" | "isize");
    let message = if (unsigned || signed)
        && found.parse::<i128>().is_ok()
        && !(unsigned && found.starts_with('-'))
    {
        format!("{found_text} is too large here")
    } else if unsigned {
        format!("expected a whole number, 0 or more, found {found_text}")
    } else if signed {
        format!("expected a whole number, found {found_text}")
    } else if matches!(ty, "f32" | "f64") {
        format!("expected a number, found {found_text}")
    } else if ty == "bool" {
        format!("expected `true` or `false`, found {found_text}")
    } else {
        // "an int", "an object": the article goes by the sound of the type's name.
        let article = if ty.starts_with(['a', 'e', 'i', 'o']) {
            "an"
        } else {
            "a"
        };
        format!("expected {article} {ty}, found {found_text}")
    };
    Diagnostic::error("kiln::spec::invalid-value", message)
}

fn budget(breach: &BudgetBreach) -> Diagnostic {
    match breach {
        BudgetBreach::Depth { .. } => Diagnostic::error(
            "kiln::spec::budget",
            format!("the YAML is nested more than {MAX_DEPTH} levels deep"),
        )
        .help(
            "kiln refuses deeply nested YAML to protect itself; a pipeline needs only a few levels",
        ),
        BudgetBreach::Documents { .. } => multiple_documents(),
        BudgetBreach::Aliases { .. }
        | BudgetBreach::Anchors { .. }
        | BudgetBreach::AliasAnchorRatio { .. }
        | BudgetBreach::RecordedAnchorEvents { .. }
        | BudgetBreach::RecordedAnchorBytes { .. }
        | BudgetBreach::MergeKeys { .. } => alias_bomb(),
        BudgetBreach::Nodes { .. }
        | BudgetBreach::Events { .. }
        | BudgetBreach::ScalarBytes { .. }
        | BudgetBreach::InputBytes { .. } => Diagnostic::error(
            "kiln::spec::budget",
            format!("the YAML document is too large: kiln reads at most {MAX_NODES} values"),
        )
        .help("large values belong in input files, not in the pipeline"),
        other => Diagnostic::error(
            "kiln::spec::budget",
            format!("the YAML document is too complex ({other:?})"),
        )
        .help("kiln refuses YAML that would cost too much to read"),
    }
}

fn alias_bomb() -> Diagnostic {
    Diagnostic::error(
        "kiln::spec::budget",
        "the YAML expands its aliases (`*name`) too far, like a \"billion laughs\" bomb",
    )
    .help(format!(
        "kiln refuses alias-heavy YAML to protect itself: write the values out, or use fewer \
         anchors and aliases (at most {MAX_ALIASES})"
    ))
}

fn multiple_documents() -> Diagnostic {
    Diagnostic::error(
        "kiln::spec::multiple-documents",
        "the file holds more than one YAML document (`---`); a pipeline file holds exactly one",
    )
    .help("put each pipeline in its own file, or remove the `---` line")
}

/// A YAML syntax error; where the cause is an unclosed bracket earlier in the file, point there.
fn syntax(msg: &str, text: &str, span: Option<Span>) -> Diagnostic {
    let message = first_line(msg);
    let flow_problem = message.contains("indicator")
        || message.contains("bracket")
        || message.contains("flow")
        || message.contains("did not find expected");
    if flow_problem
        && let Some((offset, bracket)) = span.and_then(|s| unclosed_bracket(text, s.offset))
    {
        let close = if bracket == '[' { ']' } else { '}' };
        let what = if bracket == '[' { "list" } else { "mapping" };
        return Diagnostic::error(
            "kiln::spec::syntax",
            format!("this `{bracket}` is never closed"),
        )
        .at(Span::new(offset, 1))
        .label(format!("the {what} starts here"))
        .help(format!(
            "end the {what} with `{close}` on the same line, or write it as indented lines"
        ));
    }
    let help = if message.contains("tab") {
        Some("indent with spaces: YAML does not allow tabs in indentation")
    } else if message.contains("unclosed quote") || message.contains("quoted scalar") {
        Some("end the string with the same quote it starts with")
    } else if message.contains("mapping values are not allowed") {
        Some(
            "a value that contains `: ` needs quotes, like `description: \"Note: ...\"`; otherwise check the indentation",
        )
    } else if message.contains("did not find expected key") || message.contains("indentation") {
        Some(
            "check the indentation: the keys of one mapping must line up, and a value goes after `: `",
        )
    } else if flow_problem {
        Some("check for a `[` or `{` that is not closed, or a `:` inside a value that needs quotes")
    } else {
        None
    };
    // The parser's words for the commonest mistakes, said the way a user sees them.
    let message = if message.contains("did not find expected key") {
        "this line is not indented like the keys above it".to_owned()
    } else if message.starts_with("tabs disallowed") {
        "a tab is used for indentation".to_owned()
    } else if message == "unclosed quote" {
        "this quoted string is never closed".to_owned()
    } else if message.contains("mapping values are not allowed") {
        "a `key: value` is not allowed here".to_owned()
    } else {
        message
    };
    let mut d = Diagnostic::error("kiln::spec::syntax", message);
    if help.is_some_and(|h| h.contains("tabs"))
        && let Some(span) = span
    {
        // Point at the tab itself, not at what follows it.
        let line_start = text[..span.offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[line_start..]
            .find('\n')
            .map_or(text.len(), |i| line_start + i);
        if let Some(tab) = text[line_start..line_end].find('\t') {
            d = d.at(Span::new(line_start + tab, 1)).label("this tab");
        }
    }
    match help {
        Some(help) => d.help(help),
        None => d,
    }
}

/// The last `[` or `{` before `end` that no bracket closes, skipping quotes and comments.
fn unclosed_bracket(text: &str, end: usize) -> Option<(usize, char)> {
    let mut open = Vec::new();
    let mut quote = None;
    let mut previous = '\n';
    let mut chars = text[..floor_boundary(text, end.min(text.len()))].char_indices();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                } else if c == '\\' && q == '"' {
                    chars.next();
                }
            }
            None => match c {
                '"' | '\'' if open.is_empty() || matches!(previous, ' ' | '[' | '{' | ',') => {
                    quote = Some(c);
                }
                '#' if previous.is_whitespace() => {
                    // A comment runs to the end of the line.
                    for (_, c) in chars.by_ref() {
                        if c == '\n' {
                            break;
                        }
                    }
                    previous = '\n';
                    continue;
                }
                '[' | '{' => open.push((i, c)),
                ']' | '}' => {
                    open.pop();
                }
                _ => {}
            },
        }
        previous = c;
    }
    open.pop()
}

/// The first line that is not blank or a comment, as a span.
fn first_content(text: &str) -> Span {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if !trimmed.is_empty() && !trimmed.starts_with('#') {
            let start = offset + (line.len() - trimmed.len());
            let len = trimmed.trim_end().len().max(1);
            return Span::new(start, len);
        }
        offset += line.len();
    }
    Span::new(0, 0)
}

/// The scalar written at `offset`, as the user wrote it (for "found `...`").
fn scalar_at(text: &str, offset: usize) -> String {
    let rest = &text[floor_boundary(text, offset.min(text.len()))..];
    let line = rest.lines().next().unwrap_or("");
    if let Some(q) = line.chars().next().filter(|c| *c == '"' || *c == '\'')
        && let Some(end) = line[1..].find(q)
    {
        return line[..end + 2].to_owned();
    }
    let end = line
        .find(" #")
        .into_iter()
        .chain(line.find([',', ']', '}']))
        .min()
        .unwrap_or(line.len());
    let found = line[..end].trim();
    let mut short: String = found.chars().take(40).collect();
    if short.len() < found.len() {
        short.push_str("...");
    }
    short
}

/// What kind of node starts at `offset`, for "found ...".
fn describe_node(text: &str, offset: usize) -> &'static str {
    let rest = &text[floor_boundary(text, offset.min(text.len()))..];
    let line = rest.lines().next().unwrap_or("");
    let mut chars = line.chars();
    match chars.next() {
        None => "nothing",
        Some('[') => "a list",
        Some('{') => "a mapping",
        Some('-') if chars.next().is_none_or(char::is_whitespace) => "a list",
        Some('|' | '>') => "a block of text",
        Some('"' | '\'') => "a string",
        Some(_) if line.trim_end().ends_with(':') || line.contains(": ") => "a mapping",
        Some(_) => "a single value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unclosed_bracket() {
        let text = "a: [1, 2\nb: {x: \"[\"}\nc: 3\n";
        assert_eq!(unclosed_bracket(text, text.len()), Some((3, '[')));
        assert_eq!(unclosed_bracket("a: [1] # [\n", 11), None);
        assert_eq!(unclosed_bracket("a: 'it''s [' \n", 13), None);
    }

    #[test]
    fn reads_the_scalar_back() {
        assert_eq!(scalar_at("n: -1 # no\n", 3), "-1");
        assert_eq!(scalar_at("n: [two, 3]\n", 4), "two");
        assert_eq!(scalar_at("n: \"a, b\"\n", 3), "\"a, b\"");
        assert_eq!(describe_node("- a\n", 0), "a list");
        assert_eq!(describe_node("a: b\n", 0), "a mapping");
        assert_eq!(describe_node("abc\n", 0), "a single value");
    }
}
