//! "Did you mean" suggestions.

/// The closest candidate to `wrong`, if one is close enough to be a likely typo.
pub fn closest<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(wrong, c), c))
        .filter(|(d, c)| *d <= 2.max(wrong.len().min(c.len()) / 3) && *d < wrong.len().max(1))
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)))
        .map(|(_, c)| c)
}

/// ` (did you mean `x`?)` or nothing.
pub fn did_you_mean<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(wrong, candidates)
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_names_only() {
        assert_eq!(closest("tain", ["train", "eval"]), Some("train"));
        assert_eq!(closest("prepp", ["prep", "train"]), Some("prep"));
        assert_eq!(closest("zzz", ["train", "eval"]), None);
        assert_eq!(closest("a", ["b"]), None);
    }
}
