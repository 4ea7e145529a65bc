//! Observability: what lb tells operators about the traffic it carries.
//!
//! - [`metrics`]: the Prometheus metrics and each upstream's metric handles;
//! - [`history`]: each upstream's last seconds (req/s, error rate, quantiles) for the API and
//!   the status page;
//! - [`access_log`]: one line per request, written off the request path;
//! - [`logging`]: lb's own log, text or JSON, one line per event.
//!
//! Depends on: [`crate::config`] (access log settings), [`crate::outcome`], [`crate::clock`];
//! nothing above them. The balancer, proxy and admin count into it.

pub(crate) mod access_log;
pub(crate) mod history;
pub(crate) mod logging;
pub(crate) mod metrics;
