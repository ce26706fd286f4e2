//! What a wasm attempt records so that a replay can run it again exactly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The layout of [`WasmFacts`]; bump it when a field changes meaning.
pub const FACTS_VERSION: u32 = 1;

/// The facts of one wasm attempt, kept in the record's `details` (as flat keys, so that a
/// record stays readable by people and by older tools) and read back by replay as a whole,
/// with its version checked — never key by key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasmFacts {
    /// [`FACTS_VERSION`] when written (records from before it was written are version 1).
    #[serde(default = "first_version")]
    pub facts_version: u32,
    /// The component's digest.
    pub component: String,
    /// Fuel the attempt used.
    pub fuel_used: u64,
    /// The fuel budget it ran with.
    pub fuel_limit: u64,
    /// The memory limit it ran with, in bytes.
    pub memory_limit_bytes: u64,
    /// The most memory it had, in bytes.
    pub memory_peak_bytes: u64,
    /// The seed of its random sources (hex).
    pub seed: String,
    /// Where its virtual wall clock started, in nanoseconds since the Unix epoch.
    pub clock_wall_start_ns: u64,
    /// Where its virtual monotonic clock started.
    pub clock_monotonic_start_ns: u64,
    /// How far either clock moves per read.
    pub clock_tick_ns: u64,
}

fn first_version() -> u32 {
    1
}

impl WasmFacts {
    /// The facts as record details.
    pub fn to_details(&self) -> BTreeMap<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map.into_iter().collect(),
            _ => unreachable!("facts serialise to an object"),
        }
    }

    /// Reads the facts a record's details hold: `Ok(None)` when there are none (a run, not a
    /// replay), an error when they are unreadable or of a newer layout than this kiln's.
    pub fn from_details(
        details: &BTreeMap<String, serde_json::Value>,
    ) -> Result<Option<Self>, String> {
        if details.is_empty() {
            return Ok(None);
        }
        let object: serde_json::Map<String, serde_json::Value> = details
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let facts: WasmFacts = serde_json::from_value(serde_json::Value::Object(object))
            .map_err(|e| format!("the recorded wasm facts cannot be read: {e}"))?;
        if facts.facts_version > FACTS_VERSION {
            return Err(format!(
                "the recorded wasm facts are of layout {}, newer than this kiln's ({FACTS_VERSION}); replay with a newer kiln",
                facts.facts_version
            ));
        }
        Ok(Some(facts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> WasmFacts {
        WasmFacts {
            facts_version: FACTS_VERSION,
            component: "blake3:00".into(),
            fuel_used: 1,
            fuel_limit: 2,
            memory_limit_bytes: 3,
            memory_peak_bytes: 4,
            seed: "ab".into(),
            clock_wall_start_ns: 5,
            clock_monotonic_start_ns: 6,
            clock_tick_ns: 7,
        }
    }

    #[test]
    fn facts_round_trip_through_details() {
        let details = facts().to_details();
        assert_eq!(details["fuel_limit"], 2);
        assert_eq!(WasmFacts::from_details(&details).unwrap(), Some(facts()));
        assert_eq!(WasmFacts::from_details(&BTreeMap::new()).unwrap(), None);
    }

    #[test]
    fn records_without_a_version_are_version_one_and_newer_ones_are_refused() {
        let mut details = facts().to_details();
        details.remove("facts_version");
        assert_eq!(
            WasmFacts::from_details(&details)
                .unwrap()
                .unwrap()
                .facts_version,
            1
        );
        details.insert("facts_version".into(), 99.into());
        assert!(
            WasmFacts::from_details(&details)
                .unwrap_err()
                .contains("newer")
        );
        details.remove("fuel_limit");
        assert!(WasmFacts::from_details(&details).is_err());
    }
}
