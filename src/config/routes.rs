//! Validation of `lb.routes`: each route's conditions and its one action, the pools they name,
//! and routes that can never match because an earlier one covers them.

use std::collections::HashMap;

use http::{HeaderName, HeaderValue, Method};

use super::raw::{OrderedMap, RawRedirect, RawRespond, RawRoute};
use super::types::*;
use super::ConfigError;

/// The routes of `raw` over `pools`. Without `routes:`, a single pool gets a catch-all route.
pub(crate) fn validate_routes(
    raw: Option<Vec<RawRoute>>,
    pools: &[PoolConfig],
) -> Result<Vec<RouteConfig>, ConfigError> {
    let Some(raw) = raw else {
        return match pools {
            [only] => Ok(vec![RouteConfig::catch_all(&only.name, 0)]),
            _ => Err(ConfigError::invalid(
                "lb.routes",
                "missing: with several pools, routes say which requests go to which pool",
            )),
        };
    };
    if raw.is_empty() {
        return Err(ConfigError::invalid(
            "lb.routes",
            "empty: give at least one route, e.g. - { pool: web }",
        ));
    }
    let mut routes = Vec::with_capacity(raw.len());
    for (i, route) in raw.into_iter().enumerate() {
        routes.push(validate_route(&format!("lb.routes[{i}]"), i, route, pools)?);
    }
    for (p, pool) in pools.iter().enumerate() {
        if !routes.iter().any(|r| r.action == RouteAction::Pool(p)) {
            return Err(ConfigError::invalid(
                format!("lb.pools.{}", pool.name),
                "no route sends requests to this pool: add a route or remove the pool",
            ));
        }
    }
    check_reachable(&routes)?;
    Ok(routes)
}

fn validate_route(
    key: &str,
    index: usize,
    raw: RawRoute,
    pools: &[PoolConfig],
) -> Result<RouteConfig, ConfigError> {
    let name = match raw.name {
        Some(name)
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) =>
        {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                format!("`{name}`: a route name may hold only letters, digits, `_`, `-` and `.`"),
            ))
        }
        Some(name) => name,
        None => format!("routes[{index}]"),
    };
    let host = match raw.host {
        None => HostMatch::Any,
        Some(text) => {
            parse_host(&text).map_err(|r| ConfigError::invalid(format!("{key}.host"), r))?
        }
    };
    let path = match raw.path {
        None => PathMatch::Any,
        Some(text) => {
            parse_path(&text).map_err(|r| ConfigError::invalid(format!("{key}.path"), r))?
        }
    };
    let strip_prefix = raw.strip_prefix.unwrap_or(false);
    if strip_prefix && !matches!(path, PathMatch::Prefix(_)) {
        return Err(ConfigError::invalid(
            format!("{key}.strip_prefix"),
            "only a prefix path (e.g. path: /static/) has a prefix to strip",
        ));
    }
    let methods = match raw.methods {
        None => Vec::new(),
        Some(list) if list.is_empty() => {
            return Err(ConfigError::invalid(
                format!("{key}.methods"),
                "empty: list methods such as [GET, HEAD], or leave the key out for any method",
            ))
        }
        Some(list) => {
            let mut methods = Vec::with_capacity(list.len());
            for (i, text) in list.iter().enumerate() {
                let upper = text.trim().to_ascii_uppercase();
                let method = Method::from_bytes(upper.as_bytes())
                    .ok()
                    .filter(|_| !upper.is_empty())
                    .ok_or_else(|| {
                        ConfigError::invalid(
                            format!("{key}.methods[{i}]"),
                            format!("`{text}` is not an HTTP method"),
                        )
                    })?;
                methods.push(method);
            }
            methods
        }
    };
    let headers = header_pairs(&format!("{key}.headers"), raw.headers)?;
    let action = match (raw.pool, raw.redirect, raw.respond) {
        (Some(pool), None, None) => match pools.iter().position(|p| p.name == pool) {
            Some(index) => RouteAction::Pool(index),
            None => {
                let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
                return Err(ConfigError::invalid(
                    format!("{key}.pool"),
                    format!("no pool named \"{pool}\"; pools are {}", names.join(", ")),
                ));
            }
        },
        (None, Some(redirect), None) => validate_redirect(&format!("{key}.redirect"), redirect)?,
        (None, None, Some(respond)) => validate_respond(&format!("{key}.respond"), respond)?,
        (None, None, None) => {
            return Err(ConfigError::invalid(
                key,
                "no action: give one of pool, redirect or respond",
            ))
        }
        _ => {
            return Err(ConfigError::invalid(
                key,
                "more than one action: give only one of pool, redirect or respond",
            ))
        }
    };
    Ok(RouteConfig {
        name,
        host,
        path,
        strip_prefix,
        methods,
        headers,
        action,
        set_request_headers: header_pairs(
            &format!("{key}.set_request_headers"),
            raw.set_request_headers,
        )?,
        remove_request_headers: header_names(
            &format!("{key}.remove_request_headers"),
            raw.remove_request_headers,
        )?,
        set_response_headers: header_pairs(
            &format!("{key}.set_response_headers"),
            raw.set_response_headers,
        )?,
        remove_response_headers: header_names(
            &format!("{key}.remove_response_headers"),
            raw.remove_response_headers,
        )?,
    })
}

/// `api.example.com`, `*.example.com` (case ignored, no port).
fn parse_host(text: &str) -> Result<HostMatch, String> {
    let host = text.trim().to_ascii_lowercase();
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host.as_str()),
    };
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(format!(
            "`{text}` is not a host name: write a name such as api.example.com or *.example.com \
             (no port, no scheme)"
        ));
    }
    Ok(if wildcard {
        HostMatch::Wildcard(name.to_string())
    } else {
        HostMatch::Exact(name.to_string())
    })
}

/// `/prefix/`, `= /exact`, `~ regex`.
fn parse_path(text: &str) -> Result<PathMatch, String> {
    let text = text.trim();
    if let Some(pattern) = text.strip_prefix('~') {
        let pattern = pattern.trim();
        return match regex::Regex::new(pattern) {
            Ok(_) => Ok(PathMatch::Regex(pattern.to_string())),
            // The library's message spans lines (the pattern, a caret, the reason): keep the
            // reason, so the error stays one line.
            Err(e) => Err(format!(
                "invalid regular expression `{pattern}`: {}",
                e.to_string()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim_start_matches("error: ")
            )),
        };
    }
    let (exact, path) = match text.strip_prefix('=') {
        Some(rest) => (true, rest.trim()),
        None => (false, text),
    };
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{text}` is not a path: write /prefix/, \"= /exact\" or \"~ regex\""
        ));
    }
    Ok(if exact {
        PathMatch::Exact(path.to_string())
    } else if path == "/" {
        PathMatch::Any
    } else {
        PathMatch::Prefix(path.to_string())
    })
}

fn validate_redirect(key: &str, raw: RawRedirect) -> Result<RouteAction, ConfigError> {
    let to = raw.to.trim();
    let valid = ["http://", "https://"].iter().any(|scheme| {
        to.len() > scheme.len()
            && to[..scheme.len()].eq_ignore_ascii_case(scheme)
            && http::Uri::try_from(to).is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()))
            && !to.contains(['?', '#'])
    });
    if !valid {
        return Err(ConfigError::invalid(
            format!("{key}.to"),
            format!(
                "`{}` is not an absolute URL: write e.g. https://www.example.com (the request's \
                 path and query are appended)",
                raw.to
            ),
        ));
    }
    let status = raw.status.unwrap_or(308);
    if ![301, 302, 303, 307, 308].contains(&status) {
        return Err(ConfigError::invalid(
            format!("{key}.status"),
            format!("{status} is not a redirect status: use 301, 302, 303, 307 or 308"),
        ));
    }
    Ok(RouteAction::Redirect {
        to: to.trim_end_matches('/').to_string(),
        status,
    })
}

fn validate_respond(key: &str, raw: RawRespond) -> Result<RouteAction, ConfigError> {
    if !(200..=599).contains(&raw.status) {
        return Err(ConfigError::invalid(
            format!("{key}.status"),
            format!("{} must be between 200 and 599", raw.status),
        ));
    }
    let content_type = raw
        .content_type
        .unwrap_or_else(|| "text/plain; charset=utf-8".to_string());
    if HeaderValue::from_str(&content_type).is_err() {
        return Err(ConfigError::invalid(
            format!("{key}.content_type"),
            "not a valid header value",
        ));
    }
    Ok(RouteAction::Respond {
        status: raw.status,
        body: raw.body.unwrap_or_default(),
        content_type,
    })
}

fn header_name(key: &str, text: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(text.trim().as_bytes())
        .map_err(|_| ConfigError::invalid(key, format!("`{text}` is not a valid header name")))
}

fn header_pairs(
    key: &str,
    raw: Option<OrderedMap<String>>,
) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
    let Some(OrderedMap(entries)) = raw else {
        return Ok(Vec::new());
    };
    entries
        .into_iter()
        .map(|(name, value)| {
            let key = format!("{key}.{name}");
            let name = header_name(&key, &name)?;
            let value = HeaderValue::from_str(&value).map_err(|_| {
                ConfigError::invalid(&key, "not a valid header value (control characters?)")
            })?;
            Ok((name, value))
        })
        .collect()
}

fn header_names(key: &str, raw: Option<Vec<String>>) -> Result<Vec<HeaderName>, ConfigError> {
    raw.unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, name)| header_name(&format!("{key}[{i}]"), name))
        .collect()
}

/// Fails on the first route that an earlier one covers: every request the later one would
/// match, the earlier one matches first. Only routes whose hosts can overlap are compared.
fn check_reachable(routes: &[RouteConfig]) -> Result<(), ConfigError> {
    // Earlier routes by host pattern, so that a route is compared with the few that share its
    // host, not with all of them.
    let mut by_host: HashMap<&HostMatch, Vec<usize>> = HashMap::new();
    for (j, later) in routes.iter().enumerate() {
        let mut earlier: Vec<usize> = Vec::new();
        earlier.extend(by_host.get(&HostMatch::Any).into_iter().flatten());
        match &later.host {
            HostMatch::Any => {}
            HostMatch::Exact(host) | HostMatch::Wildcard(host) => {
                earlier.extend(by_host.get(&later.host).into_iter().flatten());
                // Wildcards over any suffix of the name.
                let mut rest = host.as_str();
                while let Some((_, tail)) = rest.split_once('.') {
                    let wildcard = HostMatch::Wildcard(tail.to_string());
                    earlier.extend(by_host.get(&wildcard).into_iter().flatten());
                    rest = tail;
                }
            }
        }
        if let Some(&i) = earlier.iter().filter(|&&i| covers(&routes[i], later)).min() {
            return Err(ConfigError::invalid(
                format!("lb.routes[{j}]"),
                format!(
                    "can never match: every request it would take goes to the earlier route \
                     {} (lb.routes[{i}]); move it above that one or narrow the earlier one",
                    routes[i].name
                ),
            ));
        }
        by_host.entry(&later.host).or_default().push(j);
    }
    Ok(())
}

/// Whether every request `b` matches is matched by `a` (given their hosts may overlap).
fn covers(a: &RouteConfig, b: &RouteConfig) -> bool {
    let host = match (&a.host, &b.host) {
        (HostMatch::Any, _) => true,
        (HostMatch::Exact(x), HostMatch::Exact(y)) => x == y,
        (HostMatch::Wildcard(_), HostMatch::Exact(y)) => a.host.matches(y),
        (HostMatch::Wildcard(x), HostMatch::Wildcard(y)) => {
            x == y || HostMatch::Wildcard(x.clone()).matches(y)
        }
        _ => false,
    };
    let path = match (&a.path, &b.path) {
        (PathMatch::Any, _) => true,
        (PathMatch::Prefix(p), PathMatch::Prefix(q)) => PathMatch::prefix_matches(p, q),
        (PathMatch::Prefix(p), PathMatch::Exact(e)) => PathMatch::prefix_matches(p, e),
        (PathMatch::Exact(x), PathMatch::Exact(y)) => x == y,
        (PathMatch::Regex(x), PathMatch::Regex(y)) => x == y,
        _ => false,
    };
    let methods = a.methods.is_empty()
        || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)));
    let headers = a.headers.iter().all(|h| b.headers.contains(h));
    host && path && methods && headers
}
