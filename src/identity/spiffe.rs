//! SPIFFE IDs, validated as the SPIFFE ID and X.509-SVID specifications say.
//!
//! `spiffe://<trust-domain>/<path>`: the trust domain is lowercase letters,
//! digits, `.`, `-` and `_`; path segments are non-empty, never `.` or `..`,
//! and use letters, digits, `.`, `-` and `_`; no query, fragment, port or
//! user info; at most 2048 bytes.

use std::fmt;

/// Longest SPIFFE ID accepted (the spec's limit for URI SANs in SVIDs).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

const SCHEME: &str = "spiffe://";

/// A syntactically valid SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    id: String,
    trust_domain_len: usize,
}

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// Does not start with `spiffe://`.
    #[error("does not start with `spiffe://`")]
    WrongScheme,
    /// Longer than 2048 bytes.
    #[error("longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    /// The trust domain is missing.
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain has a character outside `[a-z0-9._-]`.
    #[error("trust domain has invalid character {0:?} (allowed: a-z 0-9 . - _)")]
    BadTrustDomainChar(char),
    /// A path segment is empty (`//` or a trailing `/`).
    #[error("path has an empty segment or a trailing slash")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("path has a `.` or `..` segment")]
    DotSegment,
    /// A path segment has a character outside `[A-Za-z0-9._-]`.
    #[error("path has invalid character {0:?} (allowed: A-Z a-z 0-9 . - _)")]
    BadPathChar(char),
}

impl SpiffeId {
    /// Parse and validate a SPIFFE ID.
    pub fn parse(input: &str) -> Result<SpiffeId, SpiffeIdError> {
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or(SpiffeIdError::WrongScheme)?;
        let (trust_domain, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        if trust_domain.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if let Some(bad) = trust_domain
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(*c)))
        {
            return Err(SpiffeIdError::BadTrustDomainChar(bad));
        }
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                validate_segment(segment)?;
            }
        }
        Ok(SpiffeId {
            id: input.to_string(),
            trust_domain_len: trust_domain.len(),
        })
    }

    /// The whole ID, `spiffe://...`.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..SCHEME.len() + self.trust_domain_len]
    }

    /// The path, e.g. `/ns/web/sa/frontend` (empty for a trust domain ID).
    pub fn path(&self) -> &str {
        &self.id[SCHEME.len() + self.trust_domain_len..]
    }
}

fn validate_segment(segment: &str) -> Result<(), SpiffeIdError> {
    if segment.is_empty() {
        return Err(SpiffeIdError::EmptySegment);
    }
    if segment == "." || segment == ".." {
        return Err(SpiffeIdError::DotSegment);
    }
    match segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
    {
        Some(bad) => Err(SpiffeIdError::BadPathChar(bad)),
        None => Ok(()),
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        let id = SpiffeId::parse("spiffe://example.org/ns/web/sa/frontend").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/web/sa/frontend");
        let td = SpiffeId::parse("spiffe://my-td_1.example").unwrap();
        assert_eq!(td.path(), "");
    }

    #[test]
    fn rejects_invalid_ids() {
        use SpiffeIdError::*;
        let cases = [
            ("http://example.org/a", WrongScheme),
            ("SPIFFE://example.org/a", WrongScheme),
            ("spiffe:///a", EmptyTrustDomain),
            ("spiffe://Example.org/a", BadTrustDomainChar('E')),
            ("spiffe://example.org:8443/a", BadTrustDomainChar(':')),
            ("spiffe://user@example.org/a", BadTrustDomainChar('@')),
            ("spiffe://example.org/", EmptySegment),
            ("spiffe://example.org/a//b", EmptySegment),
            ("spiffe://example.org/a/", EmptySegment),
            ("spiffe://example.org/a/../b", DotSegment),
            ("spiffe://example.org/./b", DotSegment),
            ("spiffe://example.org/a?x=1", BadPathChar('?')),
            ("spiffe://example.org/a#f", BadPathChar('#')),
            ("spiffe://example.org/a%20b", BadPathChar('%')),
        ];
        for (input, expected) in cases {
            assert_eq!(SpiffeId::parse(input), Err(expected), "{input}");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert_eq!(SpiffeId::parse(&long), Err(TooLong));
    }
}
