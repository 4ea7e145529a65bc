//! Well-formed HTTP requests, through `ureq`: one connection per request ([`request`], [`get`]),
//! or kept alive across requests ([`KeepAliveClient`]). Redirects are not followed and every
//! status is an answer, not an error: the tests look at what lb sent.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ureq::http;
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{ConnectionDetails, Connector, DefaultConnector};
use ureq::Agent;

pub use ureq::Error;

/// A whole response, read to its end.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The backend that answered (from the echo body).
    pub fn backend(&self) -> Option<String> {
        self.echo("backend")
    }

    /// A `key=value` line of the echo body.
    pub fn echo(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.text()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
    }
}

/// Counts the connections an agent opens: ureq asks its connector only when no pooled
/// connection can be used.
#[derive(Debug)]
struct CountConnections(Arc<AtomicUsize>);

impl Connector for CountConnections {
    type Out = ();

    fn connect(&self, _: &ConnectionDetails, chained: Option<()>) -> Result<Option<()>, Error> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(chained)
    }
}

/// An agent that keeps at most `idle` connections open between requests, and its count of
/// opened connections.
fn agent(idle: usize) -> (Agent, Arc<AtomicUsize>) {
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(20)))
        .max_idle_connections(idle)
        .max_idle_connections_per_host(idle)
        .build();
    let connections = Arc::new(AtomicUsize::new(0));
    let connector = CountConnections(connections.clone()).chain(DefaultConnector::new());
    (
        Agent::with_parts(config, connector, DefaultResolver::default()),
        connections,
    )
}

/// One request, built up and then sent.
#[derive(Clone)]
pub struct Request {
    agent: Agent,
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Request {
    fn new(agent: Agent, method: &str, addr: SocketAddr, path: &str) -> Request {
        Request {
            agent,
            method: method.to_owned(),
            uri: format!("http://{addr}{path}"),
            headers: Vec::new(),
            body: None,
        }
    }

    /// Sets header `name` (replacing an earlier value).
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = Some(body.into());
        self
    }

    pub fn send(self) -> Result<Response, Error> {
        let mut builder = http::Request::builder()
            .method(self.method.as_str())
            .uri(&self.uri);
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        let mut response = match self.body {
            Some(body) => self.agent.run(builder.body(body)?)?,
            None => self.agent.run(builder.body(())?)?,
        };
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// A request on a connection of its own, closed after the response.
pub fn request(method: &str, addr: SocketAddr, path: &str) -> Request {
    static ONE_SHOT: LazyLock<Agent> = LazyLock::new(|| agent(0).0);
    Request::new(ONE_SHOT.clone(), method, addr, path).header("Connection", "close")
}

pub fn try_get(addr: SocketAddr, path: &str) -> Result<Response, Error> {
    request("GET", addr, path).send()
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    try_get(addr, path).unwrap_or_else(|e| panic!("GET {path} on {addr} failed: {e}"))
}

/// A client that keeps one connection open across requests and reconnects when the server has
/// closed it, like every HTTP client.
pub struct KeepAliveClient {
    addr: SocketAddr,
    agent: Agent,
    connections: Arc<AtomicUsize>,
    /// Requests sent again on a new connection because the kept-alive one failed before any
    /// response (the server closed it just as the request went out).
    pub resent: usize,
}

impl KeepAliveClient {
    pub fn new(addr: SocketAddr) -> Self {
        let (agent, connections) = agent(1);
        KeepAliveClient {
            addr,
            agent,
            connections,
            resent: 0,
        }
    }

    /// A request on this client's connection.
    pub fn request(&self, method: &str, path: &str) -> Request {
        Request::new(self.agent.clone(), method, self.addr, path)
    }

    pub fn get(&mut self, path: &str) -> Result<Response, Error> {
        let request = self.request("GET", path);
        let before = self.connections();
        match request.clone().send() {
            // A GET that failed on a kept-alive connection (no new one was opened for it) is
            // sent again once on a new connection, as HTTP clients do for idempotent requests.
            Err(Error::Io(_) | Error::Protocol(_)) if self.connections() == before => {
                self.resent += 1;
                request.send()
            }
            other => other,
        }
    }

    /// How many connections this client has opened so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}
