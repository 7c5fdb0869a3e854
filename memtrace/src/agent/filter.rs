//! `--include` / `--exclude`: which processes the agent traces.
//!
//! A filter is `FIELD=PATTERN`, or a bare `PATTERN` meaning `exe=PATTERN`. Patterns are globs
//! where `*` matches any run of characters (including `/` and nothing) and `?` one character;
//! everything else is literal. A filter on a field the process does not have (say, `namespace=`
//! for a process outside any pod) does not match it.

use std::fmt;
use std::str::FromStr;

use crate::agent::container::Placement;

const VALID_FIELDS: &str = "exe, container, pod-uid, namespace, pod";
/// The short container id `docker ps` and `crictl ps` show.
const SHORT_CONTAINER_ID_LEN: usize = 12;

/// What a filter looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// The executable: its file name or its full path.
    Exe,
    /// The container id; a pattern without wildcards may be a prefix of 12 or more characters.
    Container,
    PodUid,
    Namespace,
    /// `NAMESPACE/NAME`.
    Pod,
}

impl Field {
    const ALL: [Field; 5] = [
        Field::Exe,
        Field::Container,
        Field::PodUid,
        Field::Namespace,
        Field::Pod,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Exe => "exe",
            Field::Container => "container",
            Field::PodUid => "pod-uid",
            Field::Namespace => "namespace",
            Field::Pod => "pod",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("unknown field `{field}` in filter `{filter}` (valid fields: {VALID_FIELDS})")]
    UnknownField { filter: String, field: String },
    #[error("empty pattern in filter `{0}` (expected FIELD=PATTERN or PATTERN; valid fields: {VALID_FIELDS})")]
    EmptyPattern(String),
}

/// One `--include` or `--exclude` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    field: Field,
    pattern: String,
}

impl Filter {
    pub fn field(&self) -> Field {
        self.field
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Whether the candidate has the field and its value matches the pattern.
    pub fn matches(&self, candidate: &Candidate) -> bool {
        let placement = candidate.placement;
        match self.field {
            Field::Exe => {
                let path = candidate.exe_path;
                let file_name = path.rsplit('/').next().unwrap_or(path);
                !path.is_empty()
                    && (glob_matches(&self.pattern, file_name) || glob_matches(&self.pattern, path))
            }
            Field::Container => placement
                .container_id
                .as_deref()
                .is_some_and(|id| self.matches_container_id(id)),
            Field::PodUid => self.matches_optional(placement.pod_uid.as_deref()),
            Field::Namespace => self.matches_optional(placement.namespace.as_deref()),
            Field::Pod => match (&placement.namespace, &placement.pod_name) {
                (Some(namespace), Some(name)) => {
                    glob_matches(&self.pattern, &format!("{namespace}/{name}"))
                }
                _ => false,
            },
        }
    }

    fn matches_optional(&self, value: Option<&str>) -> bool {
        value.is_some_and(|value| glob_matches(&self.pattern, value))
    }

    fn matches_container_id(&self, id: &str) -> bool {
        if self.pattern.contains(['*', '?']) {
            glob_matches(&self.pattern, id)
        } else {
            id == self.pattern
                || (self.pattern.len() >= SHORT_CONTAINER_ID_LEN && id.starts_with(&self.pattern))
        }
    }
}

impl FromStr for Filter {
    type Err = FilterError;

    fn from_str(text: &str) -> Result<Filter, FilterError> {
        // Any '=' makes the text FIELD=PATTERN: a typo in the field name must be an error, not a
        // pattern for executables named "namespce=shop".
        let (field, pattern) = match text.split_once('=') {
            Some((name, pattern)) => {
                let field = Field::ALL
                    .into_iter()
                    .find(|field| field.name() == name)
                    .ok_or_else(|| FilterError::UnknownField {
                        filter: text.to_string(),
                        field: name.to_string(),
                    })?;
                (field, pattern)
            }
            None => (Field::Exe, text),
        };
        if pattern.is_empty() {
            return Err(FilterError::EmptyPattern(text.to_string()));
        }
        Ok(Filter {
            field,
            pattern: pattern.to_string(),
        })
    }
}

impl fmt::Display for Filter {
    /// Always `FIELD=PATTERN`, also for a filter parsed from a bare pattern.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.field.name(), self.pattern)
    }
}

/// What a filter is matched against.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// The executable's path; empty when unknown (then no `exe` filter matches).
    pub exe_path: &'a str,
    pub placement: &'a Placement,
}

/// All `--include` and `--exclude` filters.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    pub include: Vec<Filter>,
    pub exclude: Vec<Filter>,
}

impl Selector {
    /// Traced when no include is given or any include matches, and no exclude matches.
    pub fn admits(&self, candidate: &Candidate) -> bool {
        let included =
            self.include.is_empty() || self.include.iter().any(|filter| filter.matches(candidate));
        included && !self.exclude.iter().any(|filter| filter.matches(candidate))
    }
}

/// Whether `text` matches the glob `pattern` (`*`: any run of characters, `?`: one character).
///
/// Iterative: on a mismatch only the last `*` is retried one character further, which is enough
/// because an earlier `*` could only take over characters that the last one can take too. This
/// keeps the work within O(pattern × text), with no exponential backtracking.
fn glob_matches(pattern: &str, text: &str) -> bool {
    // Byte offsets, always on character boundaries.
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last '*': the pattern after it, and the text it stops at.
    let mut last_star: Option<(usize, usize)> = None;
    loop {
        let pattern_char = pattern[p..].chars().next();
        let text_char = text[t..].chars().next();
        match (pattern_char, text_char) {
            (None, None) => return true,
            (Some('*'), _) => {
                p += 1;
                last_star = Some((p, t));
                continue;
            }
            (Some('?'), Some(c)) => {
                p += 1;
                t += c.len_utf8();
                continue;
            }
            (Some(expected), Some(c)) if expected == c => {
                p += c.len_utf8();
                t += c.len_utf8();
                continue;
            }
            _ => {}
        }
        // Mismatch: let the last '*' swallow one more character.
        let Some((star_p, star_t)) = last_star else {
            return false;
        };
        let Some(swallowed) = text[star_t..].chars().next() else {
            return false;
        };
        p = star_p;
        t = star_t + swallowed.len_utf8();
        last_star = Some((p, t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const ID: &str = "3f2a9c0d4b5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
    const UID: &str = "6f1c4b5e-2d3a-4c1b-9e8f-0a1b2c3d4e5f";

    fn filter(text: &str) -> Filter {
        text.parse().unwrap()
    }

    fn in_pod(namespace: Option<&str>, name: Option<&str>) -> Placement {
        Placement {
            container_id: Some(ID.to_string()),
            runtime: Some("containerd"),
            pod_uid: Some(UID.to_string()),
            pod_name: name.map(str::to_string),
            namespace: namespace.map(str::to_string),
            cgroup: String::new(),
        }
    }

    fn matches(filter_text: &str, exe_path: &str, placement: &Placement) -> bool {
        filter(filter_text).matches(&Candidate {
            exe_path,
            placement,
        })
    }

    #[test]
    fn parses_fields_and_bare_patterns() {
        let parsed = filter("namespace=shop");
        assert_eq!(parsed.field(), Field::Namespace);
        assert_eq!(parsed.pattern(), "shop");
        assert_eq!(filter("pod-uid=6f1c*").field(), Field::PodUid);
        assert_eq!(filter("container=3f2a9c0d4b5e").field(), Field::Container);
        assert_eq!(filter("pod=shop/cart-*").pattern(), "shop/cart-*");
        assert_eq!(filter("exe=/usr/bin/*").field(), Field::Exe);
        // Only the first '=' separates.
        assert_eq!(filter("exe=a=b").pattern(), "a=b");

        let bare = filter("cart-server");
        assert_eq!(bare.field(), Field::Exe);
        assert_eq!(bare.pattern(), "cart-server");
        assert_eq!(bare, filter("exe=cart-server"));
        assert_eq!(bare.to_string(), "exe=cart-server");
        assert_eq!(filter("pod=*/cart-*").to_string(), "pod=*/cart-*");
    }

    #[test]
    fn rejects_unknown_fields_and_empty_patterns() {
        let error = "namespce=shop".parse::<Filter>().unwrap_err();
        assert_eq!(
            error,
            FilterError::UnknownField {
                filter: "namespce=shop".to_string(),
                field: "namespce".to_string()
            }
        );
        let message = error.to_string();
        assert!(message.contains("namespce=shop"), "{message}");
        assert!(
            message.contains("exe, container, pod-uid, namespace, pod"),
            "{message}"
        );
        assert!(!message.contains('\n'));

        assert!(matches!(
            "=x".parse::<Filter>(),
            Err(FilterError::UnknownField { .. })
        ));
        assert!(matches!(
            "Exe=x".parse::<Filter>(),
            Err(FilterError::UnknownField { .. })
        ));
        for empty in ["", "exe=", "pod="] {
            let error = empty.parse::<Filter>().unwrap_err();
            assert_eq!(error, FilterError::EmptyPattern(empty.to_string()));
            assert!(error.to_string().contains("valid fields: exe, container"));
        }
    }

    #[test]
    fn glob_edge_cases() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("*", "anything/with/slashes"));
        assert!(glob_matches("**", ""));
        assert!(glob_matches("cart", "cart"));
        assert!(!glob_matches("cart", "cart2"));
        assert!(!glob_matches("cart", "car"));
        assert!(!glob_matches("cart", ""));
        assert!(glob_matches("", ""));
        assert!(!glob_matches("", "x"));
        assert!(glob_matches("?", "x"));
        assert!(glob_matches("?", "é"));
        assert!(!glob_matches("?", ""));
        assert!(!glob_matches("?", "xy"));
        assert!(glob_matches("c?rt", "cart"));
        assert!(glob_matches("cart-*", "cart-"));
        assert!(glob_matches("cart-*", "cart-7d9f"));
        assert!(!glob_matches("cart-*", "xcart-7d9f"));
        assert!(glob_matches("*-server", "cart-server"));
        assert!(!glob_matches("*-server", "cart-server2"));
        assert!(glob_matches("*art*", "cart-server"));
        assert!(glob_matches("a*b*c", "aXbYbZc"));
        assert!(!glob_matches("a*b*c", "aXbYbZ"));
        assert!(glob_matches("*/bin/*", "/usr/local/bin/cart"));
        assert!(glob_matches("é*ü", "éxyzü"));
        // Regex and shell specials are literal.
        assert!(glob_matches("a.b[1]+", "a.b[1]+"));
        assert!(!glob_matches("a.b", "axb"));
    }

    #[test]
    fn pathological_glob_runs_fast() {
        let text = "a".repeat(10_000);
        let pattern = format!("{}b", "a*".repeat(50));
        let start = Instant::now();
        assert!(!glob_matches(&pattern, &text));
        assert!(!glob_matches("*a*a*a*a*a*a*a*a*a*a*b", &text));
        assert!(glob_matches(&format!("{}a", "*a".repeat(50)), &text));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn exe_matches_file_name_or_full_path() {
        let host = Placement::default();
        assert!(matches("cart-server", "/app/cart-server", &host));
        assert!(matches("cart-*", "/app/cart-server", &host));
        assert!(matches("/app/*", "/app/cart-server", &host));
        assert!(matches("*/app/cart-server", "/app/cart-server", &host));
        assert!(!matches("app", "/app/cart-server", &host));
        assert!(!matches("/app", "/app/cart-server", &host));
        assert!(matches("cart", "cart", &host));
        // An unknown executable matches nothing, not even "*".
        assert!(!matches("*", "", &host));
    }

    #[test]
    fn container_short_id_prefix() {
        let pod = in_pod(Some("shop"), Some("cart-1"));
        assert!(matches(&format!("container={ID}"), "", &pod));
        assert!(matches("container=3f2a9c0d4b5e", "", &pod));
        assert!(matches("container=3f2a9c0d4b5e6f70", "", &pod));
        // Shorter than a short id: only an exact match would do.
        assert!(!matches("container=3f2a9c0d4b5", "", &pod));
        assert!(!matches("container=3f2a", "", &pod));
        // Wildcards make it a plain glob.
        assert!(matches("container=3f2a*", "", &pod));
        assert!(!matches("container=3f2a?", "", &pod));
        assert!(!matches("container=aaaaaaaaaaaa", "", &pod));
        assert!(!matches("container=*", "", &Placement::default()));
    }

    #[test]
    fn pod_uid_namespace_and_pod() {
        let pod = in_pod(Some("shop"), Some("cart-7d9f8c6b5-x2k4q"));
        assert!(matches(&format!("pod-uid={UID}"), "", &pod));
        assert!(matches("pod-uid=6f1c4b5e-*", "", &pod));
        assert!(!matches("pod-uid=6f1c4b5e", "", &pod));
        assert!(matches("namespace=shop", "", &pod));
        assert!(matches("namespace=sh*", "", &pod));
        assert!(!matches("namespace=kube-system", "", &pod));
        assert!(matches("pod=shop/cart-*", "", &pod));
        assert!(matches("pod=*/cart-*", "", &pod));
        assert!(matches("pod=shop/*", "", &pod));
        assert!(!matches("pod=cart-*", "", &pod));
        assert!(!matches("pod=kube-system/cart-*", "", &pod));
    }

    #[test]
    fn missing_fields_do_not_match() {
        let host = Placement::default();
        for text in ["namespace=*", "pod=*", "pod-uid=*", "container=*"] {
            assert!(!matches(text, "/usr/bin/cart", &host), "{text}");
        }
        // A pod whose name is unknown (spec.hostname, hostNetwork) or whose namespace is.
        assert!(!matches("pod=*", "", &in_pod(Some("shop"), None)));
        assert!(!matches("pod=*", "", &in_pod(None, Some("cart"))));
        assert!(matches("namespace=shop", "", &in_pod(Some("shop"), None)));
    }

    #[test]
    fn selector_include_and_exclude() {
        let shop_cart = in_pod(Some("shop"), Some("cart-1"));
        let system_dns = in_pod(Some("kube-system"), Some("coredns-1"));
        let host = Placement::default();
        let cart = Candidate {
            exe_path: "/app/cart",
            placement: &shop_cart,
        };
        let dns = Candidate {
            exe_path: "/coredns",
            placement: &system_dns,
        };
        let daemon = Candidate {
            exe_path: "/usr/bin/containerd",
            placement: &host,
        };
        let selector = |include: &[&str], exclude: &[&str]| Selector {
            include: include.iter().map(|text| filter(text)).collect(),
            exclude: exclude.iter().map(|text| filter(text)).collect(),
        };
        let admitted = |selector: &Selector| {
            [cart, dns, daemon]
                .iter()
                .map(|candidate| selector.admits(candidate))
                .collect::<Vec<_>>()
        };

        assert_eq!(admitted(&Selector::default()), [true, true, true]);
        assert_eq!(
            admitted(&selector(&["namespace=shop"], &[])),
            [true, false, false]
        );
        assert_eq!(
            admitted(&selector(&["namespace=shop", "containerd"], &[])),
            [true, false, true]
        );
        // An exclude on a field the host process lacks does not exclude it.
        assert_eq!(
            admitted(&selector(&[], &["namespace=kube-system"])),
            [true, false, true]
        );
        assert_eq!(
            admitted(&selector(&["pod=*/*"], &["pod=*/coredns-*"])),
            [true, false, false]
        );
        // Exclude wins over include.
        assert_eq!(
            admitted(&selector(&["cart"], &["/app/*"])),
            [false, false, false]
        );
        assert_eq!(
            admitted(&selector(&["nothing-matches"], &[])),
            [false, false, false]
        );
    }
}
