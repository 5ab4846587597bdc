//! Statement parameters, read one way by every layer: `$n` names the n-th bound value (`$1` is the
//! first), and `?` placeholders (ADBC's DB-API paramstyle) are numbered `$1, $2, ...` by
//! `query::rewrite` before anything else sees them.

/// The index (from 0) of the value a placeholder `$n` names; `None` for anything else (`$0`,
/// `$name`, `?`).
pub fn index(placeholder: &str) -> Option<usize> {
    placeholder
        .strip_prefix('$')?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::index;

    #[test]
    fn dollar_numbers_from_one() {
        assert_eq!(index("$1"), Some(0));
        assert_eq!(index("$12"), Some(11));
        for other in ["$0", "$", "$x", "?", "1", "$-1", ""] {
            assert_eq!(index(other), None, "{other}");
        }
    }
}
