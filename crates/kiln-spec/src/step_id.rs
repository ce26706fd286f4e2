//! The id of a planned step, as opposed to the name a pipeline gives a step.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

/// The id of one schedulable unit of a plan: the step's name for a plain step, `name[i]` for
/// instance `i` of a fan-out step.
///
/// A step name says what the author wrote; a step id says which unit ran. Records, events,
/// cache explanations and the scheduler speak in ids; tables show a readable label built from
/// the id and the fan-out item. Ids compare, hash and borrow as `str`, so maps keyed by them
/// can be looked up with a plain `&str`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StepId(String);

/// What separates the id of a sub-pipeline step from the ids of the steps it inlines.
pub const SEPARATOR: char = '/';

impl StepId {
    /// The id of a plain step: its name.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id of instance `index` of fan-out step `step`.
    pub fn instance(step: &str, index: usize) -> Self {
        Self(format!("{step}[{index}]"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of a step inlined from a sub-pipeline: `train-small/fit` for step `fit` of the
    /// sub-pipeline that step `train-small` includes.
    pub fn nested(parent: &str, child: &str) -> Self {
        Self(format!("{parent}{SEPARATOR}{child}"))
    }

    /// The step name part: `train` for `train[2]`, `train[0]/fit` for `train[0]/fit[2]`.
    pub fn step_name(&self) -> &str {
        let start = self.0.rfind(SEPARATOR).map_or(0, |i| i + 1);
        match self.0[start..].find('[') {
            Some(i) => &self.0[..start + i],
            None => &self.0,
        }
    }

    /// The fan-out index part: `Some(2)` for `train[2]` and `train[0]/fit[2]`.
    pub fn index(&self) -> Option<usize> {
        let start = self.0.rfind(SEPARATOR).map_or(0, |i| i + 1);
        let (_, rest) = self.0[start..].split_once('[')?;
        rest.strip_suffix(']')?.parse().ok()
    }

    /// The id as one file name (for logs and scratch folders): `/` between the ids of a
    /// sub-pipeline step and its steps becomes `~`, which no step name contains.
    pub fn file_stem(&self) -> String {
        self.0.replace(SEPARATOR, "~")
    }
}

impl Deref for StepId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for StepId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for StepId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for StepId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl From<&str> for StepId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

impl From<StepId> for String {
    fn from(id: StepId) -> Self {
        id.0
    }
}

impl PartialEq<str> for StepId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for StepId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for StepId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl PartialEq<StepId> for str {
    fn eq(&self, other: &StepId) -> bool {
        self == other.0
    }
}

impl PartialEq<StepId> for &str {
    fn eq(&self, other: &StepId) -> bool {
        *self == other.0
    }
}

impl PartialEq<StepId> for String {
    fn eq(&self, other: &StepId) -> bool {
        *self == other.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn ids_split_into_name_and_index() {
        let id = StepId::instance("train", 12);
        assert_eq!(id, "train[12]");
        assert_eq!(id.step_name(), "train");
        assert_eq!(id.index(), Some(12));
        let id = StepId::nested("train[0]", "fit[2]");
        assert_eq!(id, "train[0]/fit[2]");
        assert_eq!(id.step_name(), "train[0]/fit");
        assert_eq!(id.index(), Some(2));
        assert_eq!(id.file_stem(), "train[0]~fit[2]");
        assert_eq!(StepId::new("a/b").index(), None);
        let plain = StepId::new("prep");
        assert_eq!(plain.step_name(), "prep");
        assert_eq!(plain.index(), None);
    }

    #[test]
    fn maps_keyed_by_ids_are_looked_up_by_str() {
        let mut m = BTreeMap::new();
        m.insert(StepId::new("a"), 1);
        assert_eq!(m.get("a"), Some(&1));
        assert_eq!(
            serde_json::to_string(&StepId::new("a[0]")).unwrap(),
            "\"a[0]\""
        );
    }
}
