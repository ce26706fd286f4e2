//! "Did you mean" suggestions for names the parser does not know.

/// The closest candidate to `wrong`, if one is close enough to be a likely typo.
pub fn closest<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let len = wrong.chars().count();
    candidates
        .into_iter()
        .filter(|c| c.chars().count().abs_diff(len) <= 2.max(len / 3))
        .map(|c| (distance(wrong, c), c))
        .filter(|(d, c)| {
            *d <= 2.max(wrong.chars().count().min(c.chars().count()) / 3)
                && *d < wrong.chars().count().max(1)
        })
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)))
        .map(|(_, c)| c)
}

/// ` (did you mean `x`?)` or nothing.
pub fn did_you_mean<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(wrong, candidates)
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

/// Edit distance with transpositions (optimal string alignment), case-insensitive.
fn distance(a: &str, b: &str) -> usize {
    strsim::osa_distance(&a.to_lowercase(), &b.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_names_only() {
        assert_eq!(closest("defualt", ["type", "default"]), Some("default"));
        assert_eq!(closest("input", ["inputs", "outputs"]), Some("inputs"));
        assert_eq!(closest("zzz", ["train", "eval"]), None);
        assert_eq!(distance("ab", "ba"), 1);
        assert_eq!(distance("", "abc"), 3);
    }
}
