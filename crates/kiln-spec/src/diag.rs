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
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A pipeline file's name and text, used to show diagnostics with line, column and snippet.
#[derive(Debug, Clone)]
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
        let source = Arc::new(NamedSource::new(self.name.clone(), self.text.clone()));
        let mut out = String::new();
        for diagnostic in diagnostics {
            let report = Report {
                diagnostic,
                name: &self.name,
                source: source.clone(),
            };
            let before = out.len();
            if handler.render_report(&mut out, &report).is_err() {
                // Never lose a diagnostic because its snippet could not be drawn.
                out.truncate(before);
                out.push_str(&format!(
                    "{}: {}: {}\n",
                    self.name, diagnostic.code, diagnostic.message
                ));
            }
        }
        out
    }

    /// The diagnostics as JSON objects with file, line and column, for tools and editors.
    pub fn to_json(&self, diagnostics: &[Diagnostic]) -> Vec<serde_json::Value> {
        diagnostics
            .iter()
            .map(|d| {
                let lc = d.span.map(|s| self.line_col(s.offset));
                serde_json::json!({
                    "file": self.name,
                    "line": lc.map(|l| l.line),
                    "column": lc.map(|l| l.column),
                    "severity": d.severity,
                    "code": d.code,
                    "message": d.message,
                    "help": d.help,
                })
            })
            .collect()
    }
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
