//! Per-route authorization of an HTTP listener: `[[inbound.route]]` entries
//! with a path glob, optional methods and their own allow rules. The first
//! route that matches a request decides; a request no route matches is
//! decided by the listener's own rules. Every route runs in the listener's
//! `authz_mode`, with the same policy engine as the handshake.

use std::sync::Arc;

use hyper::Method;

use crate::identity::glob::Glob;
use crate::identity::Authorizer;

/// The `route` label of requests no route matched.
pub const DEFAULT_ROUTE: &str = "default";

/// One route.
#[derive(Debug)]
pub struct Route {
    /// The path pattern as written, used as the `route` label.
    pub label: Arc<str>,
    path: Glob,
    methods: Vec<Method>,
    authz: Arc<Authorizer>,
}

impl Route {
    /// A route for paths matching `path` (a glob with `/` as separator),
    /// for `methods` (empty: every method), decided by `authz`.
    pub fn new(path: Glob, methods: Vec<Method>, authz: Arc<Authorizer>) -> Route {
        Route {
            label: path.as_str().into(),
            path,
            methods,
            authz,
        }
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method)) && self.path.matches(path)
    }
}

/// A listener's routes and its own rules.
#[derive(Debug)]
pub struct Routes {
    routes: Vec<Route>,
    listener: Arc<Authorizer>,
    default_label: Arc<str>,
}

impl Routes {
    /// `routes` in order, falling back to `listener`.
    pub fn new(routes: Vec<Route>, listener: Arc<Authorizer>) -> Routes {
        Routes {
            routes,
            listener,
            default_label: DEFAULT_ROUTE.into(),
        }
    }

    /// The listener's own rules (requests no route matches).
    pub fn listener(&self) -> &Arc<Authorizer> {
        &self.listener
    }

    /// How many routes there are.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when there is no route.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route label and the authorizer that decide a request.
    pub fn decide(&self, method: &Method, path: &str) -> (&Arc<str>, &Authorizer) {
        match self.routes.iter().find(|r| r.matches(method, path)) {
            Some(route) => (&route.label, &route.authz),
            None => (&self.default_label, &self.listener),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::policy::{Policy, RuleSpec};
    use crate::identity::{Mode, PeerIdentity, SpiffeId};

    fn only(path: &str) -> Arc<Authorizer> {
        let spec = RuleSpec {
            spiffe_id: Some(format!("spiffe://example.org/{path}")),
            ..RuleSpec::default()
        };
        Arc::new(Authorizer::new(
            Policy::compile(&[spec], false).unwrap(),
            Mode::Enforce,
            None,
        ))
    }

    fn peer(path: &str) -> PeerIdentity {
        PeerIdentity {
            spiffe_id: SpiffeId::parse(&format!("spiffe://example.org/{path}")).ok(),
            ..PeerIdentity::default()
        }
    }

    #[test]
    fn the_first_matching_route_decides_and_the_listener_rules_are_the_fallback() {
        let routes = Routes::new(
            vec![
                Route::new(
                    Glob::new("/admin/**", Some('/'), false).unwrap(),
                    vec![Method::POST],
                    only("ops"),
                ),
                Route::new(
                    Glob::new("/admin/**", Some('/'), false).unwrap(),
                    vec![],
                    only("viewer"),
                ),
            ],
            only("web"),
        );
        let admitted = |method: Method, path: &str, who: &str| {
            let (label, authz) = routes.decide(&method, path);
            (label.to_string(), authz.authorize(&peer(who)).admitted())
        };
        assert_eq!(
            admitted(Method::POST, "/admin/users/1", "ops"),
            ("/admin/**".into(), true)
        );
        assert_eq!(
            admitted(Method::POST, "/admin/users/1", "viewer"),
            ("/admin/**".into(), false)
        );
        assert_eq!(
            admitted(Method::GET, "/admin/users", "viewer"),
            ("/admin/**".into(), true)
        );
        assert_eq!(
            admitted(Method::GET, "/admin/users", "ops"),
            ("/admin/**".into(), false)
        );
        assert_eq!(
            admitted(Method::GET, "/api/x", "web"),
            (DEFAULT_ROUTE.into(), true)
        );
        assert_eq!(
            admitted(Method::GET, "/api/x", "ops"),
            (DEFAULT_ROUTE.into(), false)
        );
    }
}
