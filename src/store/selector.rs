//! Label selectors for stores that match labels themselves (the file backend). The Kubernetes backend
//! hands the selector to the API server as it is, which understands the whole syntax; here only the
//! equality-based part of it: `key=value` (or `key==value`), `key!=value`, `key`, `!key`, comma-separated,
//! all of which must hold. As on the API server, `key!=value` and `!key` also match objects without the
//! label.

use std::collections::BTreeMap;

use crate::error::Error;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// Parse `text`; anything beyond the equality-based syntax (`in`, `notin`, `>`, `<`) is a usage error that
/// says what is understood.
pub fn parse(text: &str) -> Result<Vec<Requirement>, Error> {
    let refuse = |term: &str| {
        let what = if term == text.trim() { String::new() } else { format!(": {term:?}") };
        Error::Usage(format!(
            "--selector {text:?} cannot be used with --backend file{what}; it understands key=value, key!=value, \
             key and !key, comma-separated"
        ))
    };
    let mut requirements = Vec::new();
    for term in text.split(',').map(str::trim) {
        if term.is_empty() && text.trim().is_empty() {
            continue;
        }
        let requirement = if let Some((key, value)) = term.split_once("!=") {
            Requirement::NotEquals(key.trim().to_string(), value.trim().to_string())
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Requirement::Equals(key.trim().to_string(), value.trim().to_string())
        } else if let Some(key) = term.strip_prefix('!') {
            Requirement::NotExists(key.trim().to_string())
        } else {
            Requirement::Exists(term.to_string())
        };
        let (key, value) = match &requirement {
            Requirement::Equals(key, value) | Requirement::NotEquals(key, value) => (key, Some(value)),
            Requirement::Exists(key) | Requirement::NotExists(key) => (key, None),
        };
        if !is_label_key(key) || !value.is_none_or(|value| is_label_value(value)) {
            return Err(refuse(term));
        }
        requirements.push(requirement);
    }
    Ok(requirements)
}

/// Whether `labels` satisfy every requirement.
pub fn matches(requirements: &[Requirement], labels: Option<&BTreeMap<String, String>>) -> bool {
    let label = |key: &String| labels.and_then(|labels| labels.get(key));
    requirements.iter().all(|requirement| match requirement {
        Requirement::Equals(key, value) => label(key) == Some(value),
        Requirement::NotEquals(key, value) => label(key) != Some(value),
        Requirement::Exists(key) => label(key).is_some(),
        Requirement::NotExists(key) => label(key).is_none(),
    })
}

/// `[prefix/]name`: a DNS subdomain prefix, and a name of at most 63 letters, digits, `-`, `_`, `.`
/// beginning and ending with a letter or digit.
fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(crate::validate::is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

/// At most 63 letters, digits, `-`, `_`, `.`, beginning and ending with a letter or digit; may be empty.
fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    let inner = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    bytes.len() <= 63
        && bytes.iter().all(inner)
        && bytes.first().is_none_or(u8::is_ascii_alphanumeric)
        && bytes.last().is_none_or(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn equality_based_requirements_match_as_on_the_api_server() {
        let team = labels(&[("team", "infra"), ("example.com/tier", "gold")]);
        let select = |text: &str, labels: Option<&BTreeMap<String, String>>| matches(&parse(text).unwrap(), labels);
        assert!(select("team=infra", Some(&team)));
        assert!(select("team==infra,example.com/tier=gold", Some(&team)));
        assert!(!select("team=web", Some(&team)));
        assert!(select("team!=web", Some(&team)));
        assert!(select("team!=web", None), "!= matches objects without the label");
        assert!(select("team", Some(&team)));
        assert!(!select("team", None));
        assert!(select("!owner", Some(&team)));
        assert!(!select("!team", Some(&team)));
        assert!(select(" team = infra , !owner ", Some(&team)));
        assert!(select("", None), "an empty selector selects everything");
    }

    #[test]
    fn set_based_and_malformed_selectors_are_usage_errors() {
        for text in ["team in (a,b)", "team notin (a)", "count>1", "a=b,", ",a", "bad key", "a=b c", "-a", "a=-b"] {
            let err = parse(text).expect_err(text);
            assert!(matches!(err, Error::Usage(_)), "{text}: {err:?}");
            assert!(err.to_string().contains("key=value, key!=value, key and !key"), "{text}: {err}");
            assert_eq!(err.to_string().lines().count(), 1, "{text}: {err}");
        }
    }
}
