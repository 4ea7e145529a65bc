//! The balancer: which upstream takes a request, and everything it knows about each upstream.
//!
//! - [`routing`]: the immutable [`Routing`] snapshot a request is routed by, swapped whole on
//!   reload; [`routes`]: its route table, precompiled;
//! - [`registry`] and [`upstream`]: each upstream's live state (health verdict, ejection, admin
//!   state, load, latency), kept across reloads;
//! - [`selection`]: the pool and its algorithms, and the queue behind [`Pool::acquire`];
//! - [`peer`]: how lb connects to an upstream (protocol, TLS), for requests and checks alike;
//! - [`passive`]: outlier ejection from the outcomes of live requests;
//! - [`retry_budget`]: the share of requests that may be retried;
//! - [`saved`]: the runtime state (admin actions, admin weights, ejections) handed to the next
//!   process.
//!
//! Depends on: [`crate::config`], [`crate::outcome`], [`crate::clock`], [`crate::observe`]
//! (metrics handles and the access log a routing carries). Not on the proxy, health checks or
//! operations, which all build on it.

pub(crate) mod passive;
pub(crate) mod peer;
pub(crate) mod registry;
pub(crate) mod retry_budget;
pub(crate) mod routes;
pub(crate) mod routing;
pub(crate) mod saved;
pub(crate) mod selection;
pub(crate) mod upstream;

pub(crate) use registry::Registry;
pub(crate) use routing::{Routing, SharedRouting};
pub(crate) use saved::SavedState;
pub(crate) use selection::{Lease, Member};
pub(crate) use upstream::{AdminState, UpstreamState};
