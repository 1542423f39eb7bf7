//! Identity templates of provisioners: how a verified token's claims become
//! a SPIFFE ID, e.g. `spiffe://{trust_domain}/ns/{namespace}/sa/{serviceaccount}`.
//!
//! Placeholders: `{sub}` (the `sub` claim), `{trust_domain}` (the CA's),
//! and for Kubernetes service-account tokens `{namespace}` and
//! `{serviceaccount}` (from the `kubernetes.io` claim). A template that is
//! exactly `{sub}` takes the whole `sub` claim as the SPIFFE ID; anywhere
//! else, a claim value must be one path segment (no `/`), so a claim can
//! never add path segments of its own. The result is always validated as a
//! SPIFFE ID by the caller.

use std::fmt;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Sub,
    TrustDomain,
    Namespace,
    ServiceAccount,
}

/// A parsed identity template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityTemplate {
    source: String,
    pieces: Vec<Piece>,
}

/// Why a template is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// An unknown `{name}`.
    #[error("unknown placeholder {{{0}}} (known: {{sub}}, {{trust_domain}}, {{namespace}}, {{serviceaccount}})")]
    Unknown(String),
    /// A `{` without `}` or a stray `}`.
    #[error("unbalanced braces")]
    Unbalanced,
    /// Empty.
    #[error("is empty")]
    Empty,
}

/// The values a template is rendered with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Values<'a> {
    /// The `sub` claim.
    pub sub: Option<&'a str>,
    /// The CA's trust domain.
    pub trust_domain: &'a str,
    /// `kubernetes.io.namespace`.
    pub namespace: Option<&'a str>,
    /// `kubernetes.io.serviceaccount.name`.
    pub serviceaccount: Option<&'a str>,
}

/// Why a template cannot be rendered for a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The token lacks a claim the template needs.
    #[error("the token has no {0} claim, which the provisioner's identity template needs")]
    Missing(&'static str),
    /// A claim value is not a single path segment.
    #[error("the {0} claim is not a single SPIFFE path segment")]
    NotASegment(&'static str),
}

impl IdentityTemplate {
    /// Parse a template.
    pub fn parse(source: &str) -> Result<IdentityTemplate, TemplateError> {
        if source.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut pieces = Vec::new();
        let mut rest = source;
        while !rest.is_empty() {
            match (rest.find('{'), rest.find('}')) {
                (Some(open), close) if close.is_none_or(|c| c > open) => {
                    if open > 0 {
                        pieces.push(Piece::Literal(rest[..open].to_string()));
                    }
                    let after = &rest[open + 1..];
                    let end = after.find('}').ok_or(TemplateError::Unbalanced)?;
                    let name = &after[..end];
                    if name.contains('{') {
                        return Err(TemplateError::Unbalanced);
                    }
                    pieces.push(match name {
                        "sub" => Piece::Sub,
                        "trust_domain" => Piece::TrustDomain,
                        "namespace" => Piece::Namespace,
                        "serviceaccount" => Piece::ServiceAccount,
                        other => return Err(TemplateError::Unknown(other.to_string())),
                    });
                    rest = &after[end + 1..];
                }
                (None, None) => {
                    pieces.push(Piece::Literal(rest.to_string()));
                    rest = "";
                }
                _ => return Err(TemplateError::Unbalanced),
            }
        }
        Ok(IdentityTemplate {
            source: source.to_string(),
            pieces,
        })
    }

    /// Render with the values of one token.
    pub fn render(&self, values: &Values<'_>) -> Result<String, RenderError> {
        let whole_sub = self.pieces == [Piece::Sub];
        let segment = |name: &'static str, value: Option<&str>| -> Result<String, RenderError> {
            let value = value.ok_or(RenderError::Missing(name))?;
            if !whole_sub && (value.is_empty() || value.contains('/')) {
                return Err(RenderError::NotASegment(name));
            }
            Ok(value.to_string())
        };
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Sub => out.push_str(&segment("sub", values.sub)?),
                Piece::TrustDomain => out.push_str(values.trust_domain),
                Piece::Namespace => {
                    out.push_str(&segment("kubernetes.io namespace", values.namespace)?)
                }
                Piece::ServiceAccount => out.push_str(&segment(
                    "kubernetes.io serviceaccount name",
                    values.serviceaccount,
                )?),
            }
        }
        Ok(out)
    }
}

impl fmt::Display for IdentityTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_template_renders() {
        let t =
            IdentityTemplate::parse("spiffe://{trust_domain}/ns/{namespace}/sa/{serviceaccount}")
                .unwrap();
        let values = Values {
            sub: Some("system:serviceaccount:web:frontend"),
            trust_domain: "example.org",
            namespace: Some("web"),
            serviceaccount: Some("frontend"),
        };
        assert_eq!(
            t.render(&values).unwrap(),
            "spiffe://example.org/ns/web/sa/frontend"
        );
        let sneaky = Values {
            namespace: Some("web/sa/admin"),
            ..values
        };
        assert!(matches!(
            t.render(&sneaky),
            Err(RenderError::NotASegment(_))
        ));
        let missing = Values {
            namespace: None,
            ..values
        };
        assert!(matches!(t.render(&missing), Err(RenderError::Missing(_))));
    }

    #[test]
    fn whole_sub_template_takes_the_whole_claim() {
        let t = IdentityTemplate::parse("{sub}").unwrap();
        let values = Values {
            sub: Some("spiffe://example.org/a/b"),
            trust_domain: "example.org",
            ..Values::default()
        };
        assert_eq!(t.render(&values).unwrap(), "spiffe://example.org/a/b");
    }

    #[test]
    fn bad_templates_are_refused() {
        assert_eq!(
            IdentityTemplate::parse("spiffe://{td}/x"),
            Err(TemplateError::Unknown("td".into()))
        );
        assert_eq!(
            IdentityTemplate::parse("spiffe://{sub"),
            Err(TemplateError::Unbalanced)
        );
        assert_eq!(
            IdentityTemplate::parse("spiffe://x}"),
            Err(TemplateError::Unbalanced)
        );
        assert_eq!(IdentityTemplate::parse(""), Err(TemplateError::Empty));
    }
}
