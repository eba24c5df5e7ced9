//! Which events a subscriber wants, by type: the `type` filter of
//! `GET /v1/events` (and of anything else that selects events by type).
//!
//! Every event has a *qualified type* `<aggregate_type>.<type>`, e.g.
//! `vm.created`, `vm.stop_requested`, `host.host_registered`,
//! `tenancy.org_created`, `ssh_key.ssh_key_created`. A filter is a list of
//! patterns; an event matches the filter when it matches any pattern.
//!
//! - A pattern with a `.` is matched against the qualified type, one
//!   without against the bare type: `created` and `vm.created` both select a
//!   VM's `created`; `vm.*` every VM event; `*_requested` every `…_requested`
//!   of any aggregate; `*.*` and `*` everything.
//! - `*` stands for any run of characters, none included, within one part:
//!   it never spans the `.`. Every other character matches itself, exactly.
//! - Patterns are made of `a-z`, `0-9`, `_`, `*` and at most one `.` with a
//!   non-empty part on each side, each part at most [`MAX_PATTERN_LEN`]
//!   characters; at most [`MAX_PATTERNS`] patterns, with spaces allowed
//!   around the commas. Anything else is refused, so a typo is an error
//!   rather than a filter that silently matches nothing. [`list_pattern`]
//!   states the same as a regular expression, for the OpenAPI documents.

use crate::event::Event;

/// At most this many patterns in one filter.
pub const MAX_PATTERNS: usize = 32;
/// At most this many characters in each part of a pattern.
pub const MAX_PATTERN_LEN: usize = 100;

/// What [`TypeFilter::parse`] accepts, as a regular expression (a test
/// checks they agree).
pub fn list_pattern() -> String {
    let one = one_pattern();
    format!("^{one}(,{one}){{0,{}}}$", MAX_PATTERNS - 1)
}

/// What [`TypeFilter::new`] accepts as one of its patterns, as a regular
/// expression.
pub fn item_pattern() -> String {
    format!("^{}$", one_pattern())
}

fn one_pattern() -> String {
    let part = format!("[a-z0-9_*]{{1,{MAX_PATTERN_LEN}}}");
    format!(" *{part}(\\.{part})? *")
}

text_schema! {
    /// The OpenAPI schema of one type pattern in a list of them (see
    /// [`item_pattern`]).
    TypePattern {
        pattern(Some(item_pattern())),
        description(Some("A type pattern: `vm.*`, `created`, `*_requested`, `host.host_registered`.")),
        examples([serde_json::json!("vm.*")]),
    }
}

text_schema! {
    /// The OpenAPI schema of a `type` filter (see [`list_pattern`]).
    TypeFilterText {
        pattern(Some(list_pattern())),
        description(Some("Comma-separated type patterns: `vm.*`, `created`, `*_requested`, `host.host_registered`.")),
        examples([serde_json::json!("vm.*,host.host_registered")]),
    }
}

/// A parsed, valid type filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeFilter {
    patterns: Vec<String>,
}

/// Why a filter is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

impl TypeFilter {
    /// A filter from patterns; empty lists and bad patterns are refused.
    pub fn new<S: AsRef<str>>(patterns: impl IntoIterator<Item = S>) -> Result<Self, FilterError> {
        let patterns: Vec<String> = patterns.into_iter().map(|p| p.as_ref().trim_matches(' ').to_owned()).collect();
        if patterns.is_empty() {
            return Err(FilterError("a type filter needs at least one pattern".into()));
        }
        if patterns.len() > MAX_PATTERNS {
            return Err(FilterError(format!("at most {MAX_PATTERNS} type patterns")));
        }
        for p in &patterns {
            check(p)?;
        }
        Ok(Self { patterns })
    }

    /// A filter from a comma-separated list (`vm.*,host_registered`).
    pub fn parse(list: &str) -> Result<Self, FilterError> {
        Self::new(list.split(','))
    }

    /// The patterns, as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether an event of `aggregate_type` and `type_name` matches.
    pub fn matches_names(&self, aggregate_type: &str, type_name: &str) -> bool {
        self.patterns.iter().any(|p| match p.split_once('.') {
            Some((agg, ty)) => glob(agg, aggregate_type) && glob(ty, type_name),
            None => glob(p, type_name),
        })
    }

    /// Whether `event` matches.
    pub fn matches(&self, event: &Event) -> bool {
        self.matches_names(event.aggregate_type(), event.type_name())
    }
}

fn check(p: &str) -> Result<(), FilterError> {
    let bad = |why: &str| Err(FilterError(format!("bad type pattern `{}`: {why}", p.chars().take(MAX_PATTERN_LEN).collect::<String>())));
    if p.is_empty() {
        return bad("empty");
    }
    if p.split('.').any(|part| part.len() > MAX_PATTERN_LEN) {
        return bad("too long");
    }
    if !p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '*' | '.')) {
        return bad("only a-z, 0-9, `_`, `*` and `.` are allowed");
    }
    let parts: Vec<&str> = p.split('.').collect();
    if parts.len() > 2 || parts.iter().any(|s| s.is_empty()) {
        return bad("at most one `.`, between an aggregate type and a type");
    }
    Ok(())
}

/// `*` = any run of characters (none included); everything else literal.
fn glob(pattern: &str, name: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else { return false };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else { return rest.is_empty() };
    for piece in middle {
        match rest.find(piece) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(filter: &str, agg: &str, ty: &str) -> bool {
        TypeFilter::parse(filter).unwrap().matches_names(agg, ty)
    }

    #[test]
    fn bare_patterns_match_the_type_and_dotted_ones_the_qualified_type() {
        assert!(m("created", "vm", "created"));
        assert!(!m("created", "vm", "stop_requested"));
        assert!(m("vm.*", "vm", "stop_requested"));
        assert!(!m("vm.*", "host", "host_registered"));
        assert!(m("*_requested", "vm", "stop_requested"));
        assert!(!m("*_requested", "vm", "requested_x"));
        assert!(m("*.host_registered", "host", "host_registered"));
        assert!(m("vm.created,host.*", "host", "host_down"));
        assert!(m("*", "tenancy", "org_created") && m("*.*", "ssh_key", "ssh_key_created"));
        assert!(m("s*_*ed", "vm", "stop_requested") && !m("s*_*ed", "vm", "started_x"));
        assert!(m("vm*.*", "vm", "ready") && !m("vm", "vm", "ready"));
        // `*` does not span the dot: `vm*` is a bare pattern over the type only.
        assert!(!m("vm*", "vm", "ready"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", ",", "vm.", ".x", "a.b.c", "VM.*", "vm.>", "vm created", &"a".repeat(101)] {
            assert!(TypeFilter::parse(bad).is_err(), "{bad:?}");
        }
        assert!(TypeFilter::parse(&vec!["vm.*"; 33].join(",")).is_err());
        assert_eq!(TypeFilter::parse(" vm.* , created").unwrap().patterns(), ["vm.*", "created"]);
        assert!(TypeFilter::parse("\tvm.*").is_err(), "spaces only around a pattern");
    }

    proptest::proptest! {
        /// The documented pattern accepts exactly what the parser does.
        #[test]
        fn the_schema_pattern_is_the_parser(s in "[a-z*_. ,\tA]{0,12}|[a-z]{95,105}(\\.[a-z]{95,105})?|(vm\\.\\*,){30,33}vm") {
            let schema = <TypeFilterText as utoipa::PartialSchema>::schema();
            proptest::prop_assert_eq!(crate::schema_check::accepts(schema, &s), TypeFilter::parse(&s).is_ok(), "{:?}", s);
        }

        /// One documented pattern of a list is what the filter takes as one.
        #[test]
        fn the_item_schema_is_the_rule(s in "[a-z*_. ,\tA]{0,12}|[a-z]{95,105}(\\.[a-z]{95,105})?") {
            let schema = <TypePattern as utoipa::PartialSchema>::schema();
            proptest::prop_assert_eq!(crate::schema_check::accepts(schema, &s), TypeFilter::new([&s]).is_ok(), "{:?}", s);
        }
    }
}
