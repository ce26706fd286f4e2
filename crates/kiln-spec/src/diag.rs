//! Diagnostics: errors and warnings that point into the pipeline file.

use std::fmt;
use std::sync::Arc;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};
use serde::Serialize;

use crate::located::Span;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The pipeline cannot run.
    Error,
    /// The pipeline runs, but something looks wrong.
    Warning,
}

/// One problem found in a pipeline, with where it is and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// A stable code such as `kiln::plan::unknown-step`.
    pub code: &'static str,
    /// What is wrong, lowercase, without a trailing period.
    pub message: String,
    /// Where in the file, when known.
    pub span: Option<Span>,
    /// A short label under the snippet.
    pub label: Option<String>,
    /// What to do about it, when known.
    pub help: Option<String>,
    /// Where the span points when it is not the pipeline being checked; `None` for the
    /// pipeline itself (boxed: most diagnostics have none).
    pub origin: Option<Box<Origin>>,
}

/// A sub-pipeline a diagnostic was found in, and how it was included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The sub-pipeline, named relative to the checked pipeline's folder.
    pub file: Arc<SourceFile>,
    /// Where it was included, innermost first: each a `pipeline:` step of the file that
    /// includes it.
    pub included_from: Vec<Inclusion>,
}

/// A `pipeline:` step that includes a sub-pipeline, as a diagnostic found in the sub-pipeline
/// names it: "included from pipeline.yaml:12:5 (step `train-small`)".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inclusion {
    /// The including file; `None` is the pipeline being checked.
    pub file: Option<Arc<SourceFile>>,
    /// Where the `pipeline:` step is in it.
    pub span: Span,
    /// The including step's name.
    pub step: String,
}

impl Diagnostic {
    /// An error with a code and a message.
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            span: None,
            label: None,
            help: None,
            origin: None,
        }
    }

    /// A warning with a code and a message.
    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, message)
        }
    }

    /// Points the diagnostic at a span (a zero span means "not known").
    pub fn at(mut self, span: Span) -> Self {
        if span != Span::default() {
            self.span = Some(span);
        }
        self
    }

    /// Adds a label shown under the snippet.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Adds advice.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Says that this diagnostic, found in sub-pipeline `file` (named relative to the
    /// including pipeline's folder), was included by `step` at `span` of the including
    /// pipeline.
    pub fn included(mut self, file: &Arc<SourceFile>, span: Span, step: &str) -> Self {
        let mut origin = match self.origin.take() {
            // Already located in a deeper file: names gain the sub-pipeline's folder.
            Some(mut origin) => {
                origin.file = Arc::new(file.nested(&origin.file));
                for inclusion in &mut origin.included_from {
                    inclusion.file = Some(match &inclusion.file {
                        Some(inner) => Arc::new(file.nested(inner)),
                        None => file.clone(),
                    });
                }
                origin
            }
            None => Box::new(Origin {
                file: file.clone(),
                included_from: Vec::new(),
            }),
        };
        origin.included_from.push(Inclusion {
            file: None,
            span,
            step: step.to_owned(),
        });
        self.origin = Some(origin);
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A pipeline file's name and text, used to show diagnostics with line, column and snippet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The name shown to users (the path as they gave it).
    pub name: String,
    /// The whole text.
    pub text: Arc<String>,
}

/// A 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LineCol {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1, counted in characters.
    pub column: usize,
}

impl SourceFile {
    /// A source with a display name.
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            text: Arc::new(text.into()),
        }
    }

    /// The line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> LineCol {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(&self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        LineCol { line, column }
    }

    /// Renders diagnostics the way the CLI prints them: code, message, `file:line:column`,
    /// snippet and help.
    pub fn render(&self, diagnostics: &[Diagnostic], color: bool) -> String {
        let theme = if color {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::none()
        };
        let handler = GraphicalReportHandler::new_themed(theme)
            .with_width(100)
            .with_links(false);
        let own = Arc::new(NamedSource::new(self.name.clone(), self.text.clone()));
        let mut out = String::new();
        for diagnostic in diagnostics {
            let (name, source) = match &diagnostic.origin {
                None => (self.name.clone(), own.clone()),
                Some(origin) => {
                    let name = self.beside(&origin.file.name);
                    let source = Arc::new(NamedSource::new(name.clone(), origin.file.text.clone()));
                    (name, source)
                }
            };
            let report = Report {
                diagnostic,
                name: &name,
                source,
            };
            let before = out.len();
            if handler.render_report(&mut out, &report).is_err() {
                // Never lose a diagnostic because its snippet could not be drawn.
                out.truncate(before);
                out.push_str(&format!(
                    "{}: {}: {}\n",
                    name, diagnostic.code, diagnostic.message
                ));
            }
            for note in self.inclusion_notes(diagnostic) {
                out.push_str(&format!("  note: {note}\n"));
            }
        }
        out
    }

    /// `included from pipeline.yaml:12:5 (step `train-small`)`, innermost first.
    fn inclusion_notes(&self, diagnostic: &Diagnostic) -> Vec<String> {
        let Some(origin) = &diagnostic.origin else {
            return Vec::new();
        };
        origin
            .included_from
            .iter()
            .map(|inclusion| {
                let (name, lc) = match &inclusion.file {
                    None => (self.name.clone(), self.line_col(inclusion.span.offset)),
                    Some(file) => (
                        self.beside(&file.name),
                        file.line_col(inclusion.span.offset),
                    ),
                };
                format!(
                    "included from {name}:{}:{} (step `{}`)",
                    lc.line, lc.column, inclusion.step
                )
            })
            .collect()
    }

    /// The name of a file given relative to this file's folder, as this file's name shows it.
    fn beside(&self, relative: &str) -> String {
        match std::path::Path::new(&self.name).parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(relative).display().to_string(),
            _ => relative.to_owned(),
        }
    }

    /// `inner`, named relative to this file's folder instead of its own including file's.
    fn nested(&self, inner: &SourceFile) -> SourceFile {
        SourceFile {
            name: normalise_name(&self.beside(&inner.name)),
            text: inner.text.clone(),
        }
    }

    /// The diagnostics as JSON objects with file, line and column, for tools and editors.
    pub fn to_json(&self, diagnostics: &[Diagnostic]) -> Vec<serde_json::Value> {
        diagnostics
            .iter()
            .map(|d| {
                let (name, lc) = match &d.origin {
                    None => (self.name.clone(), d.span.map(|s| self.line_col(s.offset))),
                    Some(origin) => (
                        self.beside(&origin.file.name),
                        d.span.map(|s| origin.file.line_col(s.offset)),
                    ),
                };
                let notes = self.inclusion_notes(d);
                let mut json = serde_json::json!({
                    "file": name,
                    "line": lc.map(|l| l.line),
                    "column": lc.map(|l| l.column),
                    "severity": d.severity,
                    "code": d.code,
                    "message": d.message,
                    "help": d.help,
                });
                if !notes.is_empty() {
                    json["included_from"] = notes.into();
                }
                json
            })
            .collect()
    }
}

/// `a/./b/../c.yaml` as `a/c.yaml` (names only; nothing is read).
fn normalise_name(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "." | "" => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    parts.join("/")
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A diagnostic joined to its source, in the shape miette renders.
struct Report<'a> {
    diagnostic: &'a Diagnostic,
    name: &'a str,
    source: Arc<NamedSource<Arc<String>>>,
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.diagnostic.fmt(f)
    }
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Without a snippet, the file name would be lost: say it in the message.
        match self.diagnostic.span {
            Some(_) => f.write_str(&self.diagnostic.message),
            None => write!(f, "{}: {}", self.name, self.diagnostic.message),
        }
    }
}

impl std::error::Error for Report<'_> {}

impl miette::Diagnostic for Report<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(self.diagnostic.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diagnostic.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.diagnostic
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.diagnostic
            .span
            .map(|_| &*self.source as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.diagnostic.span?;
        // A span past the end of the text (or inside a character) would make the report fail to
        // render; clamp it so a diagnostic is always shown.
        let text: &str = self.source.inner();
        let offset = floor_char_boundary(text, span.offset.min(text.len()));
        let end = floor_char_boundary(text, span.offset.saturating_add(span.len).min(text.len()));
        let label = LabeledSpan::new_with_span(
            self.diagnostic.label.clone(),
            SourceSpan::new(offset.into(), end.saturating_sub(offset)),
        );
        Some(Box::new(std::iter::once(label)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let src = SourceFile::new("p.yaml", "a: 1\nbé: 2\n");
        assert_eq!(src.line_col(0), LineCol { line: 1, column: 1 });
        assert_eq!(src.line_col(5), LineCol { line: 2, column: 1 });
        assert_eq!(src.line_col(9), LineCol { line: 2, column: 4 });
    }
}
