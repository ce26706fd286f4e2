//! Metrics read from an output: what a container or a command wasm step reports by naming
//! one of its outputs in `metrics:` and writing a flat JSON object of numbers to it.

use std::collections::BTreeMap;

/// The largest metrics file read; metrics are a handful of numbers, not a dataset.
pub const MAX_METRICS_BYTES: u64 = 1 << 20;

/// The most metrics one step may report.
pub const MAX_METRICS: usize = 1000;

/// Parses a metrics output: a JSON object whose values are all finite numbers, such as
/// `{"accuracy": 0.93, "loss": 0.21}`. The error says what is wrong and where.
pub fn parse_metrics(output: &str, bytes: &[u8]) -> Result<BTreeMap<String, f64>, String> {
    let shape = "a flat JSON object of numbers, such as {\"accuracy\": 0.93}";
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("metrics output `{output}` is not JSON ({e}): write {shape}"))?;
    let serde_json::Value::Object(map) = value else {
        return Err(format!(
            "metrics output `{output}` holds {}, not an object: write {shape}",
            kind(&value)
        ));
    };
    if map.len() > MAX_METRICS {
        return Err(format!(
            "metrics output `{output}` has {} metrics; the most is {MAX_METRICS}",
            map.len()
        ));
    }
    let mut metrics = BTreeMap::new();
    for (name, value) in map {
        if name.is_empty() {
            return Err(format!(
                "metrics output `{output}` has a metric with an empty name"
            ));
        }
        match value.as_f64() {
            Some(x) if value.is_number() && x.is_finite() => {
                metrics.insert(name, x);
            }
            _ => {
                return Err(format!(
                    "metric `{name}` in output `{output}` is {}, not a number: write {shape}",
                    kind(&value)
                ));
            }
        }
    }
    Ok(metrics)
}

fn kind(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(b) => format!("`{b}`"),
        serde_json::Value::Number(n) => format!("the number {n}"),
        serde_json::Value::String(s) if s.len() <= 40 => format!("the string {s:?}"),
        serde_json::Value::String(_) => "a string".into(),
        serde_json::Value::Array(_) => "a list".into(),
        serde_json::Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_object_of_numbers_reads_back_exactly() {
        let m = parse_metrics(
            "metrics",
            br#"{"accuracy": 0.9312, "epochs": 30, "loss": -1e-3}"#,
        )
        .unwrap();
        assert_eq!(m["accuracy"].to_bits(), 0.9312f64.to_bits());
        assert_eq!(m["epochs"], 30.0);
        assert_eq!(m["loss"], -1e-3);
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        let err = |text: &str| parse_metrics("scores", text.as_bytes()).unwrap_err();
        assert!(
            err("[1, 2]").contains("holds a list, not an object"),
            "{}",
            err("[1, 2]")
        );
        assert!(
            err("{\"acc\": \"0.9\"}")
                .contains("metric `acc` in output `scores` is the string \"0.9\"")
        );
        assert!(err("{\"acc\": {\"top1\": 0.9}}").contains("is an object, not a number"));
        assert!(err("{\"acc\": NaN}").contains("is not JSON"));
        assert!(err("{\"acc\": null}").contains("is null"));
        assert!(err("{\"\": 1}").contains("empty name"));
    }
}
