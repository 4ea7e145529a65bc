//! HTTPS: certificates chosen by SNI, HTTP/1.1 and HTTP/2 over TLS, old TLS versions refused,
//! certificates swapped by a reload under open connections, every bad certificate refused, the
//! redirect of plain requests, and the expiry metric. Certificates are made by the `openssl`
//! command in each test's directory; the client is the `openssl` crate over a blocking socket,
//! and `curl` where the HTTP/2 side matters.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion};

use common::backends::Backend;
use common::lb_conf::{fields, quoted, Fields, LbConf};
use common::lb_process::{lb_binary, Lb, TempDir};
use common::ports::unique_addr;
use common::wait::port_accepts;

/// A self-signed certificate and its key, made by the `openssl` command: `names` become its
/// subjectAltName DNS entries (its common name is `cn`), valid for `days`.
fn make_cert(dir: &Path, file: &str, cn: &str, names: &[&str], days: u32) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{file}.pem"));
    let key = dir.join(format!("{file}.key"));
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days"])
        .arg(days.to_string())
        .arg("-subj")
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert);
    if !names.is_empty() {
        let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        cmd.arg("-addext")
            .arg(format!("subjectAltName={}", san.join(",")));
    }
    let out = cmd.output().expect("the openssl command runs");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// One `lb.tls.certificates` entry.
fn cert_entry((cert, key): &(PathBuf, PathBuf)) -> Fields {
    fields()
        .set("cert", quoted(cert.display()))
        .set("key", quoted(key.display()))
}

/// `lb.tls` listening on `addr` with `certs`.
fn tls_section(addr: SocketAddr, certs: &[&(PathBuf, PathBuf)]) -> Fields {
    let list: Vec<String> = certs.iter().map(|c| cert_entry(c).to_string()).collect();
    fields()
        .set("listen", format!("[{}]", quoted(addr)))
        .set("certificates", format!("[{}]", list.join(", ")))
}

/// Starts lb with `config` and waits until its HTTPS listener accepts connections too.
fn start(dir: TempDir, config: LbConf, tls: SocketAddr) -> Lb {
    let lb = Lb::start_in(dir, config);
    assert!(
        port_accepts(tls, Duration::from_secs(10)),
        "no HTTPS listener on {tls}: {}",
        lb.log()
    );
    lb
}

/// The usual set-up: backend `b1`, and lb serving it with one certificate for `site.test` on an
/// HTTPS listener; `with` completes the config, given the `lb.tls` section to add.
struct Site {
    backend: Backend,
    lb: Lb,
    tls: SocketAddr,
}

fn site(with: impl FnOnce(LbConf, Fields) -> LbConf) -> Site {
    let backend = Backend::start("b1");
    let dir = TempDir::new();
    let cert = make_cert(&dir.0, "site", "site", &["site.test"], 30);
    let tls = unique_addr();
    let config = with(LbConf::new().upstream(&backend), tls_section(tls, &[&cert]));
    let lb = start(dir, config, tls);
    Site { backend, lb, tls }
}

/// A TLS client of the given versions (and any cipher: the server is what is tested).
fn client(
    addr: SocketAddr,
    sni: Option<&str>,
    versions: (SslVersion, SslVersion),
) -> Result<SslStream<TcpStream>, String> {
    client_alpn(addr, sni, versions, b"\x08http/1.1")
}

/// [`client`] offering the ALPN protocols `alpn` (wire format).
fn client_alpn(
    addr: SocketAddr,
    sni: Option<&str>,
    versions: (SslVersion, SslVersion),
    alpn: &[u8],
) -> Result<SslStream<TcpStream>, String> {
    let mut builder = SslConnector::builder(SslMethod::tls()).map_err(|e| e.to_string())?;
    builder.set_verify(SslVerifyMode::NONE);
    builder
        .set_min_proto_version(Some(versions.0))
        .map_err(|e| e.to_string())?;
    builder
        .set_max_proto_version(Some(versions.1))
        .map_err(|e| e.to_string())?;
    // Let this client offer old versions and ciphers; only the server may refuse them.
    builder
        .set_cipher_list("ALL:@SECLEVEL=0")
        .map_err(|e| e.to_string())?;
    builder.set_alpn_protos(alpn).map_err(|e| e.to_string())?;
    let mut config = builder
        .build()
        .configure()
        .map_err(|e| e.to_string())?
        .verify_hostname(false)
        .use_server_name_indication(sni.is_some());
    config.set_verify(SslVerifyMode::NONE);
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    config
        .connect(sni.unwrap_or("unused"), tcp)
        .map_err(|e| e.to_string())
}

/// A TLS 1.2-1.3 client.
fn connect(addr: SocketAddr, sni: Option<&str>) -> SslStream<TcpStream> {
    client(addr, sni, (SslVersion::TLS1_2, SslVersion::TLS1_3))
        .unwrap_or_else(|e| panic!("TLS handshake with {addr} failed: {e}"))
}

/// The DNS names of the certificate the server presented.
fn served_names(stream: &SslStream<TcpStream>) -> Vec<String> {
    let cert = stream
        .ssl()
        .peer_certificate()
        .expect("a server certificate");
    cert.subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.dnsname().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The DER of the certificate the server presented.
fn served_der(stream: &SslStream<TcpStream>) -> Vec<u8> {
    let cert = stream
        .ssl()
        .peer_certificate()
        .expect("a server certificate");
    cert.to_der().expect("DER")
}

/// Sends `GET path` on a kept-alive connection and reads the response (with Content-Length);
/// returns (status, body).
fn get(stream: &mut impl ReadWrite, host: &str, path: &str) -> (u16, String) {
    try_get(stream, host, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// [`get`], with the failure returned.
fn try_get(stream: &mut impl ReadWrite, host: &str, path: &str) -> Result<(u16, String), String> {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => return Err("closed".to_string()),
            Err(e) => return Err(e.to_string()),
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok((status, String::from_utf8_lossy(&body).to_string()))
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Runs curl against `url` resolved to `addr`; returns (http_version, body).
fn curl(args: &[&str], url: &str, addr: SocketAddr) -> (String, String) {
    let host = url
        .trim_start_matches("https://")
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    let out = Command::new("curl")
        .args(["-sSk", "--max-time", "10", "-w", "\n%{http_version}"])
        .arg("--resolve")
        .arg(format!("{host}:{}:{}", addr.port(), addr.ip()))
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl {url} failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, version) = text.rsplit_once('\n').unwrap_or(("", ""));
    (version.to_string(), body.to_string())
}

#[test]
fn sni_picks_exact_then_wildcard_then_default() {
    let backend = Backend::start("b1");
    let dir = TempDir::new();
    let two = make_cert(
        &dir.0,
        "two",
        "two",
        &["a.example.com", "b.example.com"],
        30,
    );
    let wild = make_cert(&dir.0, "wild", "wild", &["*.example.net"], 30);
    let fallback = make_cert(&dir.0, "fallback", "fallback", &["default.test"], 30);
    let tls = unique_addr();
    let config = LbConf::new().upstream(&backend).key(
        "tls",
        tls_section(tls, &[&two, &wild, &fallback]).set("default_certificate", 2),
    );
    let _lb = start(dir, config, tls);

    for (sni, expected) in [
        (Some("a.example.com"), "a.example.com"),
        (Some("b.example.com"), "a.example.com"),
        (Some("B.Example.COM"), "a.example.com"),
        (Some("www.example.net"), "*.example.net"),
        // A wildcard covers one label only.
        (Some("deep.www.example.net"), "default.test"),
        (Some("example.net"), "default.test"),
        (Some("unknown.test"), "default.test"),
        (None, "default.test"),
    ] {
        let mut stream = connect(tls, sni);
        assert_eq!(
            served_names(&stream)[0],
            expected,
            "certificate served for SNI {sni:?}"
        );
        let (status, body) = get(&mut stream, sni.unwrap_or("x"), "/sni");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("backend=b1"), "{body}");
        assert!(
            body.contains("header:x-forwarded-proto=https"),
            "X-Forwarded-Proto on a TLS listener: {body}"
        );
    }
}

#[test]
fn curl_speaks_http2_and_http1_over_tls() {
    let Site {
        lb,
        tls,
        backend: _backend,
    } = site(|c, tls| c.key("tls", tls));
    let url = format!("https://site.test:{}/proto?x=1", tls.port());

    let (version, body) = curl(&["--http2"], &url, tls);
    assert_eq!(version, "2", "{body}");
    assert!(body.contains("backend=b1"), "{body}");
    assert!(body.contains("header:x-forwarded-proto=https"), "{body}");
    let (version, body) = curl(&["--http1.1"], &url, tls);
    assert_eq!(version, "1.1", "{body}");
    assert!(body.contains("target=/proto?x=1"), "{body}");
    assert!(body.contains("header:x-forwarded-proto=https"), "{body}");
    // The plain listener still says http.
    let plain = common::client::get(lb.addr, "/plain");
    assert_eq!(
        plain.echo("header:x-forwarded-proto").as_deref(),
        Some("http")
    );
}

#[test]
fn http2_off_offers_http1_only() {
    let Site {
        tls,
        lb: _lb,
        backend: _backend,
    } = site(|c, tls| c.key("tls", tls.set("http2", false)));
    let url = format!("https://site.test:{}/", tls.port());
    let (version, body) = curl(&["--http2"], &url, tls);
    assert_eq!(version, "1.1", "{body}");
    assert!(body.contains("backend=b1"), "{body}");
}

#[test]
fn tls_1_1_and_below_are_refused_and_min_version_1_3_refuses_1_2() {
    let backend = Backend::start("b1");
    let dir = TempDir::new();
    let cert = make_cert(&dir.0, "site", "site", &["site.test"], 30);
    let (tls, tls13) = (unique_addr(), unique_addr());
    let config = LbConf::new()
        .upstream(&backend)
        .key("tls", tls_section(tls, &[&cert]));
    let lb = start(dir, config, tls);
    let sni = Some("site.test");
    for old in [SslVersion::TLS1, SslVersion::TLS1_1] {
        assert!(
            client(tls, sni, (old, old)).is_err(),
            "{old:?} must be refused"
        );
    }
    for ok in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
        let mut stream = client(tls, sni, (ok, ok)).expect("accepted");
        assert_eq!(get(&mut stream, "site.test", "/").0, 200);
    }
    // A refused handshake is the client's business: not an error line in lb's log.
    assert!(!lb.log().contains("ERROR"), "{}", lb.log());

    let dir = TempDir::new();
    let cert = make_cert(&dir.0, "site", "site", &["site.test"], 30);
    let config = LbConf::new().upstream(&backend).key(
        "tls",
        tls_section(tls13, &[&cert]).set("min_version", "\"1.3\""),
    );
    let _lb13 = start(dir, config, tls13);
    let v12 = SslVersion::TLS1_2;
    assert!(client(tls13, sni, (v12, v12)).is_err(), "TLS 1.2 refused");
    let v13 = SslVersion::TLS1_3;
    let mut stream = client(tls13, sni, (v13, v13)).expect("TLS 1.3 accepted");
    assert_eq!(get(&mut stream, "site.test", "/").0, 200);
}

#[test]
fn reload_swaps_certificates_and_open_connections_go_on() {
    let backend = Backend::start("b1");
    let dir = TempDir::new();
    let first = make_cert(&dir.0, "first", "site", &["site.test"], 30);
    let tls = unique_addr();
    let config = LbConf::new()
        .upstream(&backend)
        .key("tls", tls_section(tls, &[&first]));
    let mut lb = start(dir, config.clone(), tls);

    let mut old = connect(tls, Some("site.test"));
    let old_der = served_der(&old);
    assert_eq!(get(&mut old, "site.test", "/before").0, 200);

    // A new certificate and key in the same files: the reload reads them again.
    let second = make_cert(&lb.dir.0, "second", "site", &["site.test", "new.test"], 30);
    std::fs::copy(&second.0, &first.0).unwrap();
    std::fs::copy(&second.1, &first.1).unwrap();
    let out = lb.reload(config.clone());
    assert!(out.contains("TLS certificates replaced"), "{out}");

    // The connection opened before goes on; a new one sees the new certificate.
    assert_eq!(get(&mut old, "site.test", "/after").0, 200);
    let mut new = connect(tls, Some("site.test"));
    assert_ne!(served_der(&new), old_der, "the new certificate is served");
    assert!(served_names(&new).contains(&"new.test".to_string()));
    assert_eq!(get(&mut new, "site.test", "/new").0, 200);

    // A key that does not match: the reload is refused and the running certificate serves on.
    let other = make_cert(&lb.dir.0, "other", "other", &["other.test"], 30);
    std::fs::copy(&other.1, &first.1).unwrap();
    let (ok, out) = lb.command("reload");
    assert!(!ok, "a mismatched key must be refused: {out}");
    assert!(
        out.contains("lb.tls.certificates[0].key: does not match the certificate"),
        "{out}"
    );
    let mut after = connect(tls, Some("site.test"));
    assert!(served_names(&after).contains(&"new.test".to_string()));
    assert_eq!(get(&mut after, "site.test", "/still").0, 200);
    assert_eq!(get(&mut old, "site.test", "/still-old").0, 200);

    // What the listeners fix needs an upgrade: the reload says so and changes nothing.
    std::fs::copy(&second.1, &first.1).unwrap();
    for (key, value, named) in [
        ("min_version", "\"1.3\"", "lb.tls.min_version"),
        ("http2", "false", "lb.tls.http2"),
        (
            "listen",
            &format!("[{}]", quoted(unique_addr())),
            "lb.tls.listen",
        ),
    ] {
        lb.write_config(
            config
                .clone()
                .key("tls", tls_section(tls, &[&first]).set(key, value)),
        );
        let (ok, out) = lb.command("reload");
        assert!(!ok, "{out}");
        assert!(
            out.contains(&format!("{named} changed: that needs `lb upgrade`")),
            "{out}"
        );
    }
    let v12 = SslVersion::TLS1_2;
    let mut still = client(tls, Some("site.test"), (v12, v12)).expect("TLS 1.2 still accepted");
    assert_eq!(get(&mut still, "site.test", "/v12").0, 200);
}

/// Runs `lb -t` on `yaml`; returns (success, output).
fn check(dir: &Path, yaml: &str) -> (bool, String) {
    let path = dir.join("check.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(lb_binary())
        .args(["-t", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn every_bad_certificate_or_tls_key_is_refused_by_lb_t() {
    let dir = TempDir::new();
    let d = &dir.0;
    let good = make_cert(d, "good", "good", &["good.test"], 30);
    let other = make_cert(d, "other", "other", &["other.test"], 30);
    let not_pem = d.join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let missing = d.join("missing.pem");
    let plain = unique_addr();
    let tls = unique_addr();
    let yaml = |tls_body: &str, extra: &str| {
        format!(
            "lb:\n  listen: [\"{plain}\"]\n  upstreams: [\"127.0.0.1:9\"]\n{extra}  tls: {tls_body}\n"
        )
    };
    let entry = |cert: &Path, key: &Path| {
        format!(
            "{{ cert: \"{}\", key: \"{}\" }}",
            cert.display(),
            key.display()
        )
    };
    let good_entry = entry(&good.0, &good.1);
    let ok = yaml(
        &format!("{{ listen: [\"{tls}\"], certificates: [{good_entry}] }}"),
        "",
    );
    let (valid, out) = check(d, &ok);
    assert!(valid, "{out}");

    let cases: Vec<(String, &str)> = vec![
        (
            format!(
                "{{ listen: [\"{tls}\"], certificates: [{good_entry}, {}] }}",
                entry(&good.0, &other.1)
            ),
            "lb.tls.certificates[1].key: does not match the certificate",
        ),
        (
            format!(
                "{{ listen: [\"{tls}\"], certificates: [{}] }}",
                entry(&missing, &good.1)
            ),
            "lb.tls.certificates[0].cert: cannot read",
        ),
        (
            format!(
                "{{ listen: [\"{tls}\"], certificates: [{}] }}",
                entry(&not_pem, &good.1)
            ),
            "lb.tls.certificates[0].cert:",
        ),
        (
            format!(
                "{{ listen: [\"{tls}\"], certificates: [{}] }}",
                entry(&good.0, &not_pem)
            ),
            "lb.tls.certificates[0].key:",
        ),
        (
            format!(
                "{{ listen: [\"{tls}\"], certificates: [{}] }}",
                entry(&good.0, &missing)
            ),
            "lb.tls.certificates[0].key: cannot read",
        ),
        (
            format!("{{ listen: [\"{tls}\"], certificates: [] }}"),
            "lb.tls.certificates: empty",
        ),
        (
            format!("{{ listen: [\"{tls}\"] }}"),
            "lb.tls.certificates: missing",
        ),
        (
            format!(
                "{{ listen: [\"{tls}\"], certificates: [{good_entry}], default_certificate: 1 }}"
            ),
            "lb.tls.default_certificate: 1 is out of range",
        ),
        (
            format!(
                "{{ listen: [\"{tls}\"], certificates: [{good_entry}], min_version: \"1.1\" }}"
            ),
            "lb.tls.min_version",
        ),
        (
            format!("{{ listen: [\"{plain}\"], certificates: [{good_entry}] }}"),
            "lb.tls.listen[0]",
        ),
        (
            format!("{{ listen: [\"{tls}\"], certificates: [{good_entry}], http_2: true }}"),
            "http_2",
        ),
        (
            format!(
                "{{ listen: [\"{tls}\"], certificates: [{{ cert: \"{}\", kee: \"x\" }}] }}",
                good.0.display()
            ),
            "kee",
        ),
    ];
    for (tls_body, expected) in cases {
        let (valid, out) = check(d, &yaml(&tls_body, ""));
        assert!(!valid, "accepted: {tls_body}");
        assert!(out.contains(expected), "{expected:?} not in: {out}");
    }
    // The key whose path names the files in the reason: the key file and the certificate.
    let (_, out) = check(
        d,
        &yaml(
            &format!(
                "{{ listen: [\"{tls}\"], certificates: [{}] }}",
                entry(&good.0, &other.1)
            ),
            "",
        ),
    );
    assert!(out.contains(&good.0.display().to_string()), "{out}");
    // redirect_to_https needs lb.tls.
    let no_tls = format!(
        "lb:\n  listen: [\"{plain}\"]\n  upstreams: [\"127.0.0.1:9\"]\n  redirect_to_https: true\n"
    );
    let (valid, out) = check(d, &no_tls);
    assert!(!valid);
    assert!(out.contains("lb.redirect_to_https: needs lb.tls"), "{out}");
}

#[test]
fn plain_requests_are_redirected_to_https() {
    let Site { lb, tls, backend } = site(|c, tls| c.key("redirect_to_https", true).key("tls", tls));
    let mut plain = TcpStream::connect(lb.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut response = String::new();
    write!(
        plain,
        "GET /a/b?c=d HTTP/1.1\r\nHost: site.test:{}\r\nConnection: close\r\n\r\n",
        lb.addr.port()
    )
    .unwrap();
    plain.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 308"), "{response}");
    let location = format!("https://site.test:{}/a/b?c=d", tls.port());
    assert!(
        response
            .to_ascii_lowercase()
            .contains(&format!("location: {location}")),
        "{response}"
    );
    assert_eq!(backend.requests(), 0);
    // Over TLS the request is served.
    let mut stream = connect(tls, Some("site.test"));
    assert_eq!(get(&mut stream, "site.test", "/a/b?c=d").0, 200);
    assert_eq!(backend.requests(), 1);
}

#[test]
fn expiry_is_logged_and_exported() {
    let backend = Backend::start("b1");
    let dir = TempDir::new();
    let soon = make_cert(&dir.0, "soon", "soon", &["soon.test", "also.test"], 3);
    let later = make_cert(&dir.0, "later", "later", &["later.test"], 300);
    let tls = unique_addr();
    let admin = unique_addr();
    let config = LbConf::new()
        .upstream(&backend)
        .admin(admin, None)
        .key("tls", tls_section(tls, &[&soon, &later]));
    let lb = start(dir, config, tls);
    lb.expect_log("lb.tls.certificates[0].cert");
    lb.expect_log("(soon.test,also.test) expires in ");
    // `lb -t` says so too, and the file is still valid.
    let (valid, out) = lb.command("-t");
    assert!(valid, "{out}");
    assert!(
        out.contains("lb: warning: lb.tls.certificates[0].cert:") && out.contains("renew it"),
        "{out}"
    );
    assert!(!lb.log().contains("later.test) expires"), "{}", lb.log());

    let metrics = common::client::get(admin, "/metrics").text();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "lb_tls_certificate_expiry_timestamp_seconds{names=\"soon.test,also.test\"}",
            )
        })
        .unwrap_or_else(|| panic!("no expiry metric: {metrics}"));
    let expires: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let days = (expires - now) / 86_400.0;
    assert!((2.0..=3.0).contains(&days), "{days} days left");
    assert!(metrics.contains("names=\"later.test\""), "{metrics}");

    let status = common::client::get(admin, "/api/upstreams").text();
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let certs = status["certificates"].as_array().expect("certificates");
    assert_eq!(
        certs[0]["names"],
        serde_json::json!(["soon.test", "also.test"])
    );
    let days_left = certs[0]["days_left"].as_i64().expect("days_left");
    assert!((2..=3).contains(&days_left), "{status}");
    assert_eq!(certs[0]["default"], true);
    assert_eq!(certs[1]["names"], serde_json::json!(["later.test"]));
}

#[test]
fn upgrade_hands_over_the_https_listener_and_loses_no_handshake() {
    let admin = unique_addr();
    let Site {
        lb,
        tls,
        backend: _backend,
    } = site(|c, tls| c.admin(admin, None).key("tls", tls));
    let old = lb.pid();
    let mut kept = connect(tls, Some("site.test"));
    assert_eq!(get(&mut kept, "site.test", "/before").0, 200);

    // New TLS connections, one request each, all through the upgrade (bounded in count).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            for _ in 0..5000 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                match client(
                    tls,
                    Some("site.test"),
                    (SslVersion::TLS1_2, SslVersion::TLS1_3),
                ) {
                    Ok(mut s) => match get(&mut s, "site.test", "/during").0 {
                        200 => ok += 1,
                        status => failed.push(format!("status {status}")),
                    },
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        })
    };
    let (ok, out) = lb.command("upgrade");
    assert!(ok, "{out}\n{}", lb.log());
    let new = common::lb_process::read_pid(&lb.pid_file()).unwrap_or_default();
    assert_ne!(new, old);
    let served_by = || -> i64 {
        let text = common::client::get(admin, "/api/upstreams").text();
        serde_json::from_str::<serde_json::Value>(&text).expect("JSON")["pid"]
            .as_i64()
            .unwrap_or_default()
    };
    assert!(
        common::wait::wait_until(Duration::from_secs(10), || served_by() == i64::from(new)),
        "{}",
        lb.log()
    );
    // The connection kept from before is still served (by the old process, draining).
    assert_eq!(get(&mut kept, "site.test", "/kept").0, 200);
    assert!(
        common::wait::wait_until(Duration::from_secs(30), || !common::lb_process::pid_alive(
            old
        )),
        "the old process did not finish: {}",
        lb.log()
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 10, "too few handshakes: {ok}");
    let mut after = connect(tls, Some("site.test"));
    assert_eq!(get(&mut after, "site.test", "/after").0, 200);
}

#[test]
fn client_limits_apply_over_tls_as_in_the_clear() {
    let admin = unique_addr();
    let Site {
        tls,
        lb: _lb,
        backend,
    } = site(|c, tls| {
        c.admin(admin, None)
            .timeouts(fields().set("client_header", "1s").set("idle", "60s"))
            .key("tls", tls)
    });

    // A kept-alive connection stays open while idle longer than the header timeout: the
    // idle timeout applies between requests, not the header deadline.
    let mut kept = connect(tls, Some("site.test"));
    assert_eq!(get(&mut kept, "site.test", "/one").0, 200);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(get(&mut kept, "site.test", "/two").0, 200);

    // A header that trickles in is cut at the header deadline, as on a plain listener.
    let mut slow = connect(tls, Some("site.test"));
    write!(slow, "GET /slow HTTP/1.1\r\nHost: site.test\r\n").unwrap();
    let mut rest = Vec::new();
    // Returns when lb closes the connection (the read timeout is 10 s).
    let closed = slow.read_to_end(&mut rest);
    assert!(closed.is_ok() || rest.is_empty(), "{closed:?}");
    let metrics = common::client::get(admin, "/metrics").text();
    assert!(
        metrics.contains("lb_client_rejected_total{reason=\"header_timeout\"} 1"),
        "{metrics}"
    );
    assert!(!backend.has_seen("/slow"));
}

#[test]
fn http2_connections_count_against_the_limit_and_close_when_idle() {
    let Site {
        tls,
        lb: _lb,
        backend: _backend,
    } = site(|c, tls| {
        c.timeouts(fields().set("idle", "1s"))
            .key("limits", fields().set("max_client_connections", 1))
            .key("tls", tls)
    });

    // An HTTP/2 connection (ALPN h2): the client preface and an empty SETTINGS frame, then
    // lb's SETTINGS come back.
    let versions = (SslVersion::TLS1_2, SslVersion::TLS1_3);
    let mut h2 = client_alpn(tls, Some("site.test"), versions, b"\x02h2").expect("h2 handshake");
    assert_eq!(h2.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let mut frame = [0u8; 9];
    h2.read_exact(&mut frame).expect("lb's SETTINGS");
    assert_eq!(frame[3], 4, "a SETTINGS frame: {frame:?}");

    // It is the one connection allowed: another is closed at once.
    let mut second = connect(tls, Some("site.test"));
    let answer = try_get(&mut second, "site.test", "/second");
    assert!(
        answer.is_err(),
        "a second connection was served: {answer:?}"
    );

    // Idle for `lb.timeouts.idle`: lb closes it (GOAWAY, then the end of the stream; the
    // client's read timeout is 10 s).
    let mut rest = Vec::new();
    match h2.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the idle HTTP/2 connection was not closed: {e}"
        ),
    }
    // Its place is free again (once lb has counted the close).
    let served = common::wait::wait_until(Duration::from_secs(10), || {
        client(tls, Some("site.test"), versions)
            .and_then(|mut s| try_get(&mut s, "site.test", "/third"))
            .is_ok_and(|(status, _)| status == 200)
    });
    assert!(served, "no connection served after the h2 one closed");
}
