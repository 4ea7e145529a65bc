//! The route table: which route takes a request, precompiled at load.
//!
//! Routes are looked up by host first: an exact-host table, then wildcard suffixes from the
//! longest, then the routes for any host. Each of those keys holds, precomputed, the indexes of
//! every route that can match such a host, in the order written, so a lookup is one or a few
//! hash probes and a walk over the host's own routes; the first whose path, methods and headers
//! match wins. No regex runs unless the route has one, and a hit allocates nothing (a host
//! with upper-case letters is lowered into a copy).

use std::collections::HashMap;

use http::{HeaderMap, Method};
use regex::Regex;

use crate::config::{HostMatch, PathMatch, RouteConfig};

/// One route with its path expression compiled.
pub struct Route {
    pub(crate) config: RouteConfig,
    regex: Option<Regex>,
}

impl Route {
    fn matches(&self, path: &str, method: &Method, headers: &HeaderMap) -> bool {
        let path_ok = match &self.config.path {
            PathMatch::Any => true,
            PathMatch::Prefix(prefix) => PathMatch::prefix_matches(prefix, path),
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Regex(_) => self.regex.as_ref().is_some_and(|r| r.is_match(path)),
        };
        path_ok
            && (self.config.methods.is_empty() || self.config.methods.contains(method))
            && self
                .config
                .headers
                .iter()
                .all(|(name, value)| headers.get(name) == Some(value))
    }

    /// The path to send upstream: with `strip_prefix`, `/static/a.css` under `/static/`
    /// becomes `/a.css` (and `/static` itself `/`).
    pub(crate) fn upstream_path<'a>(&self, path: &'a str) -> Option<&'a str> {
        let PathMatch::Prefix(prefix) = &self.config.path else {
            return None;
        };
        if !self.config.strip_prefix {
            return None;
        }
        let keep = prefix.trim_end_matches('/').len();
        Some(path.get(keep..).unwrap_or(""))
    }
}

/// Every route, indexed by host.
pub struct RouteTable {
    routes: Vec<Route>,
    exact: HashMap<Box<str>, Box<[u32]>>,
    wildcard: HashMap<Box<str>, Box<[u32]>>,
    any: Box<[u32]>,
}

impl RouteTable {
    pub fn new(configs: &[RouteConfig]) -> Self {
        let routes: Vec<Route> = configs
            .iter()
            .map(|config| Route {
                regex: match &config.path {
                    // Checked when the config was loaded; a failure here leaves the route
                    // matching nothing rather than everything.
                    PathMatch::Regex(pattern) => Regex::new(pattern).ok(),
                    _ => None,
                },
                config: config.clone(),
            })
            .collect();
        let indexes_where = |keep: &dyn Fn(&HostMatch) -> bool| -> Box<[u32]> {
            routes
                .iter()
                .enumerate()
                .filter(|(_, r)| keep(&r.config.host))
                .map(|(i, _)| i as u32)
                .collect()
        };
        let any = indexes_where(&|h| *h == HostMatch::Any);
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for route in &routes {
            match &route.config.host {
                HostMatch::Any => {}
                HostMatch::Exact(host) => {
                    exact.entry(host.as_str().into()).or_insert_with(|| {
                        indexes_where(&|h| *h == HostMatch::Any || h.matches(host))
                    });
                }
                HostMatch::Wildcard(suffix) => {
                    // A name under `*.suffix` also falls under every wildcard of a shorter
                    // suffix of it.
                    let probe = format!("x.{suffix}");
                    wildcard.entry(suffix.as_str().into()).or_insert_with(|| {
                        indexes_where(&|h| {
                            *h == HostMatch::Any
                                || (matches!(h, HostMatch::Wildcard(_)) && h.matches(&probe))
                        })
                    });
                }
            }
        }
        RouteTable {
            routes,
            exact,
            wildcard,
            any,
        }
    }

    /// The first route matching a request for `host` (as sent: any case, maybe with a port).
    pub fn find(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<(usize, &Route)> {
        let candidates = match host.map(host_name) {
            Some(name) if name.bytes().any(|b| b.is_ascii_uppercase()) => {
                self.candidates(&name.to_ascii_lowercase())
            }
            Some(name) => self.candidates(name),
            None => &self.any,
        };
        candidates
            .iter()
            .map(|&i| (i as usize, &self.routes[i as usize]))
            .find(|(_, route)| route.matches(path, method, headers))
    }

    fn candidates(&self, host: &str) -> &[u32] {
        if let Some(list) = self.exact.get(host) {
            return list;
        }
        if !self.wildcard.is_empty() {
            let mut rest = host;
            while let Some((_, tail)) = rest.split_once('.') {
                if let Some(list) = self.wildcard.get(tail) {
                    return list;
                }
                rest = tail;
            }
        }
        &self.any
    }

    pub(crate) fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }
}

/// Whether `path` has a `.` or `..` segment (also percent-encoded). Such a path would be matched
/// as written but resolved by the upstream, so `/public/../admin/` could reach what a route on
/// `/admin/` guards: lb refuses it rather than guess how the upstream resolves it. Browsers
/// resolve dot segments before sending, so real clients never send one.
pub(crate) fn has_dot_segment(path: &str) -> bool {
    if !path.contains("/.") && !path.contains("%2") {
        return false;
    }
    path.split('/').any(|segment| {
        let decoded = segment.replace("%2e", ".").replace("%2E", ".");
        decoded == "." || decoded == ".."
    })
}

/// The host of a Host header or authority: without port, without a trailing dot.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.strip_suffix('.').unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RouteAction, RouteConfig};

    fn route(host: HostMatch, path: PathMatch, pool: usize) -> RouteConfig {
        RouteConfig {
            host,
            path,
            ..RouteConfig::catch_all("r", pool)
        }
    }

    fn pool_of(table: &RouteTable, host: Option<&str>, path: &str) -> Option<usize> {
        table
            .find(host, path, &Method::GET, &HeaderMap::new())
            .map(|(_, r)| match r.config.action {
                RouteAction::Pool(p) => p,
                _ => usize::MAX,
            })
    }

    #[test]
    fn hosts_paths_and_order() {
        let table = RouteTable::new(&[
            route(
                HostMatch::Exact("api.example.com".into()),
                PathMatch::Any,
                0,
            ),
            route(
                HostMatch::Wildcard("example.com".into()),
                PathMatch::Prefix("/static/".into()),
                1,
            ),
            route(HostMatch::Any, PathMatch::Exact("/ping".into()), 2),
            route(HostMatch::Any, PathMatch::Regex("^/v[0-9]+/".into()), 3),
            route(
                HostMatch::Wildcard("b.example.com".into()),
                PathMatch::Any,
                4,
            ),
        ]);
        assert_eq!(pool_of(&table, Some("API.example.com:8080"), "/x"), Some(0));
        assert_eq!(
            pool_of(&table, Some("www.example.com"), "/static/a"),
            Some(1)
        );
        assert_eq!(
            pool_of(&table, Some("a.b.example.com"), "/static/a"),
            Some(1)
        );
        assert_eq!(pool_of(&table, Some("a.b.example.com"), "/other"), Some(4));
        assert_eq!(pool_of(&table, Some("www.example.com"), "/ping"), Some(2));
        assert_eq!(pool_of(&table, Some("example.com"), "/static/a"), None);
        assert_eq!(pool_of(&table, None, "/v2/users"), Some(3));
        assert_eq!(pool_of(&table, Some("[::1]:80"), "/ping"), Some(2));
        assert_eq!(pool_of(&table, Some("other.org."), "/nothing"), None);
    }

    #[test]
    fn dot_segments_are_found_and_dotfiles_are_not() {
        assert!(has_dot_segment("/public/../admin/"));
        assert!(has_dot_segment("/a/%2E%2e/b"));
        assert!(has_dot_segment("/a/."));
        assert!(!has_dot_segment("/.well-known/acme-challenge/x"));
        assert!(!has_dot_segment("/a/b.c/..d"));
        assert!(!has_dot_segment("/plain/path"));
    }

    #[test]
    fn prefixes_match_whole_segments_and_strip() {
        let mut config = route(HostMatch::Any, PathMatch::Prefix("/static".into()), 0);
        config.strip_prefix = true;
        let table = RouteTable::new(&[config]);
        assert_eq!(pool_of(&table, None, "/static"), Some(0));
        assert_eq!(pool_of(&table, None, "/static/a.css"), Some(0));
        assert_eq!(pool_of(&table, None, "/staticfoo"), None);
        let route = table.get(0).unwrap();
        assert_eq!(route.upstream_path("/static/a.css"), Some("/a.css"));
        assert_eq!(route.upstream_path("/static"), Some(""));
    }
}
