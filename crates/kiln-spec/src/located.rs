//! Values that remember where they were written.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A byte range in the pipeline source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span {
    /// Byte offset of the first byte.
    pub offset: usize,
    /// Length in bytes (at least one for anything that was written).
    pub len: usize,
}

impl Span {
    /// A span covering `len` bytes from `offset`.
    pub const fn new(offset: usize, len: usize) -> Self {
        Self { offset, len }
    }

    /// The span of a serde-saphyr location, if the parser could give byte offsets.
    pub(crate) fn from_location(loc: &serde_saphyr::Location) -> Option<Self> {
        let span = loc.span();
        let offset = span.byte_offset()?;
        let len = span.byte_len().unwrap_or(1).max(1);
        Some(Self::new(offset as usize, len as usize))
    }
}

/// A value together with the span of the YAML node it came from.
///
/// Equality, ordering and hashing look at the value only, so a `Located` key in a map
/// behaves like the bare value.
#[derive(Clone)]
pub struct Located<T> {
    /// The parsed value.
    pub value: T,
    /// Where it was written (zero when built in code).
    pub span: Span,
}

impl<T> Located<T> {
    /// A value with a span.
    pub const fn new(value: T, span: Span) -> Self {
        Self { value, span }
    }

    /// Wraps a value that was not written in a file.
    pub fn synthetic(value: T) -> Self {
        Self::new(value, Span::default())
    }
}

impl<T> Deref for Located<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Located<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl<T: fmt::Display> fmt::Display for Located<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl<T: PartialEq> PartialEq for Located<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: Eq> Eq for Located<T> {}

impl<T: Hash> Hash for Located<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.value.hash(state);
    }
}

impl<T: PartialOrd> PartialOrd for Located<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.value.partial_cmp(&other.value)
    }
}

impl<T: Ord> Ord for Located<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.value.cmp(&other.value)
    }
}

impl<T> Borrow<T> for Located<T> {
    fn borrow(&self) -> &T {
        &self.value
    }
}

impl Borrow<str> for Located<crate::StepName> {
    fn borrow(&self) -> &str {
        self.value.as_str()
    }
}

impl Borrow<str> for Located<crate::ParamName> {
    fn borrow(&self) -> &str {
        self.value.as_str()
    }
}

impl Borrow<str> for Located<crate::ArtifactName> {
    fn borrow(&self) -> &str {
        self.value.as_str()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = serde_saphyr::Spanned::<T>::deserialize(deserializer)?;
        let span = Span::from_location(&spanned.referenced).unwrap_or_default();
        Ok(Self::new(spanned.value, span))
    }
}

impl<T: Serialize> Serialize for Located<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(serializer)
    }
}

impl<T: JsonSchema> JsonSchema for Located<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}
