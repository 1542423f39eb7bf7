//! Simple glob patterns for identity values.
//!
//! A pattern is literal text with `*` wildcards. Fields with a hierarchy
//! (DNS names, URIs, email addresses) have a separator; for them:
//!
//! - `*` inside a pattern matches one non-empty segment (no separator), so
//!   `*.example.org` matches `a.example.org` but not `a.b.example.org`;
//! - `*` as the last character matches the non-empty rest, separators
//!   included, so `spiffe://example.org/ns/web/*` matches every path below
//!   `ns/web/`;
//! - `**` matches any run of characters, separators included.
//!
//! Fields without a separator (CN, O, OU, ...) treat every `*` as "any run".
//! Why not full regexes: an allow list must be obvious to a reviewer.

use std::fmt;

/// One piece of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// Matches one or more characters that are not the separator.
    Segment,
    /// Matches zero or more of any characters.
    Any,
    /// Matches one or more of any characters (a trailing `*`).
    Rest,
}

/// A compiled glob pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    tokens: Vec<Token>,
    separator: Option<char>,
    case_insensitive: bool,
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.source)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// The pattern is empty.
    #[error("pattern is empty")]
    Empty,
    /// Three or more `*` in a row.
    #[error("`***` is not a valid wildcard; use `*` or `**`")]
    TooManyStars,
}

impl Glob {
    /// Compile `pattern` for a field whose segments are split by `separator`
    /// (or none). DNS-like fields compare case-insensitively.
    pub fn new(
        pattern: &str,
        separator: Option<char>,
        case_insensitive: bool,
    ) -> Result<Glob, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        if pattern.contains("***") {
            return Err(GlobError::TooManyStars);
        }
        let normalised = if case_insensitive {
            pattern.to_ascii_lowercase()
        } else {
            pattern.to_string()
        };
        let mut tokens = Vec::new();
        let mut literal = String::new();
        let mut chars = normalised.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '*' {
                literal.push(c);
                continue;
            }
            if !literal.is_empty() {
                tokens.push(Token::Literal(std::mem::take(&mut literal)));
            }
            if chars.peek() == Some(&'*') {
                chars.next();
                tokens.push(Token::Any);
            } else if chars.peek().is_none() || separator.is_none() {
                tokens.push(if separator.is_none() {
                    Token::Any
                } else {
                    Token::Rest
                });
            } else {
                tokens.push(Token::Segment);
            }
        }
        if !literal.is_empty() {
            tokens.push(Token::Literal(literal));
        }
        Ok(Glob {
            source: pattern.to_string(),
            tokens,
            separator,
            case_insensitive,
        })
    }

    /// The pattern as written in the configuration.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when the pattern has no wildcard.
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }

    /// Does `value` match this pattern?
    pub fn matches(&self, value: &str) -> bool {
        if self.case_insensitive {
            self.match_value(&value.to_ascii_lowercase())
        } else {
            self.match_value(value)
        }
    }

    /// Walks the tokens once, tracking every byte offset of `value` that the
    /// pattern so far can end at. Quadratic in the value length at worst, never
    /// exponential, whatever the operator wrote.
    fn match_value(&self, value: &str) -> bool {
        let len = value.len();
        let mut reachable = vec![false; len + 1];
        reachable[0] = true;
        for token in &self.tokens {
            let mut next = vec![false; len + 1];
            for start in (0..=len).filter(|&i| reachable[i]) {
                let rest = &value[start..];
                match token {
                    Token::Literal(text) => {
                        if rest.starts_with(text.as_str()) {
                            next[start + text.len()] = true;
                        }
                    }
                    Token::Segment => {
                        for (offset, c) in rest.char_indices() {
                            if Some(c) == self.separator {
                                break;
                            }
                            next[start + offset + c.len_utf8()] = true;
                        }
                    }
                    Token::Any | Token::Rest => {
                        // Every position after the first reachable start is
                        // reachable too: one pass, then no other start adds anything.
                        if matches!(token, Token::Any) {
                            next[start] = true;
                        }
                        for (offset, c) in rest.char_indices() {
                            next[start + offset + c.len_utf8()] = true;
                        }
                        break;
                    }
                }
            }
            reachable = next;
        }
        reachable[len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(p: &str) -> Glob {
        Glob::new(p, Some('.'), true).unwrap()
    }

    fn uri(p: &str) -> Glob {
        Glob::new(p, Some('/'), false).unwrap()
    }

    fn plain(p: &str) -> Glob {
        Glob::new(p, None, false).unwrap()
    }

    #[test]
    fn literal_matches_exactly() {
        assert!(dns("api.example.org").matches("api.example.org"));
        assert!(dns("api.example.org").matches("API.Example.org"));
        assert!(!dns("api.example.org").matches("api.example.org.evil"));
        assert!(!uri("spiffe://a/b").matches("spiffe://a/B"));
    }

    #[test]
    fn leading_star_is_one_label() {
        let g = dns("*.example.org");
        assert!(g.matches("a.example.org"));
        assert!(!g.matches("a.b.example.org"));
        assert!(!g.matches(".example.org"));
        assert!(!g.matches("example.org"));
    }

    #[test]
    fn trailing_star_is_everything_below() {
        let g = uri("spiffe://example.org/ns/web/*");
        assert!(g.matches("spiffe://example.org/ns/web/sa/frontend"));
        assert!(g.matches("spiffe://example.org/ns/web/x"));
        assert!(!g.matches("spiffe://example.org/ns/web/"));
        assert!(!g.matches("spiffe://example.org/ns/webx/sa"));
        assert!(!g.matches("spiffe://example.org/ns/other/sa/web"));
    }

    #[test]
    fn middle_star_is_one_segment() {
        let g = uri("spiffe://example.org/ns/*/sa/frontend");
        assert!(g.matches("spiffe://example.org/ns/web/sa/frontend"));
        assert!(!g.matches("spiffe://example.org/ns/a/b/sa/frontend"));
        assert!(!g.matches("spiffe://example.org/ns//sa/frontend"));
    }

    #[test]
    fn double_star_crosses_segments() {
        let g = uri("spiffe://example.org/**/frontend");
        assert!(g.matches("spiffe://example.org/ns/a/b/frontend"));
        assert!(!g.matches("spiffe://other.org/ns/frontend"));
    }

    #[test]
    fn plain_star_is_any_run() {
        assert!(plain("team-*").matches("team-a/b.c"));
        assert!(plain("*").matches(""));
        assert!(plain("a*b*c").matches("abc"));
        assert!(!plain("a*b*c").matches("acb"));
    }

    #[test]
    fn rejects_bad_patterns() {
        assert_eq!(Glob::new("", None, false), Err(GlobError::Empty));
        assert_eq!(
            Glob::new("a***", Some('/'), false),
            Err(GlobError::TooManyStars)
        );
    }

    #[test]
    fn long_values_with_many_stars() {
        // The input that took seconds when each `*` scanned from every
        // reachable start (the cost is in benches/micro.rs, not asserted here).
        let pattern = format!("{}b", "*a".repeat(20));
        let g = plain(&pattern);
        let value = "a".repeat(16_000);
        assert!(!g.matches(&value));
        assert!(g.matches(&format!("{value}b")));
        assert!(!g.matches(&format!("{}b", "a".repeat(19))));
        assert!(g.matches(&format!("{}b", "a".repeat(20))));
    }

    #[test]
    fn many_stars_do_not_blow_up() {
        let g = plain("*a*a*a*a*a*a*a*a*b");
        let value = "a".repeat(40);
        assert!(!g.matches(&value));
    }
}
