//! A small WebDriver client for Debian's `chromium` and `chromium-driver`: enough to load a
//! page in a real headless browser, run JavaScript in it and take a screenshot.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const DRIVERS: [&str; 2] = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];
const BROWSERS: [&str; 2] = ["/usr/bin/chromium", "/usr/lib/chromium/chromium"];

/// A headless chromium driven through chromedriver; both end when this is dropped.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

impl Browser {
    pub fn start() -> Result<Browser, String> {
        let driver_path = DRIVERS
            .iter()
            .find(|p| Path::new(p).exists())
            .ok_or("chromedriver is not installed (apt-get install chromium-driver)")?;
        let browser_path = BROWSERS
            .iter()
            .find(|p| Path::new(p).exists())
            .ok_or("chromium is not installed (apt-get install chromium)")?;
        let port = super::free_port();
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {driver_path}: {e}"))?;
        let addr: SocketAddr = format!("127.0.0.1:{port}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
        };
        let ready = super::wait_until(Duration::from_secs(20), || {
            browser
                .request("GET", "/status", None)
                .is_ok_and(|v| v["value"]["ready"] == true)
        });
        if !ready {
            return Err("chromedriver did not become ready".to_string());
        }
        let created = browser.request(
            "POST",
            "/session",
            Some(json!({
                "capabilities": { "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": browser_path,
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--window-size=1680,600"],
                    }
                }}
            })),
        )?;
        browser.session = created["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no session: {created}"))?
            .to_string();
        Ok(browser)
    }

    pub fn goto(&self, url: &str) -> Result<(), String> {
        self.command("url", json!({ "url": url })).map(|_| ())
    }

    /// Runs `script` (which `return`s a value) in the page.
    pub fn eval(&self, script: &str) -> Result<Value, String> {
        self.command("execute/sync", json!({ "script": script, "args": [] }))
    }

    /// Polls `script` until it returns true, for at most `limit`.
    pub fn wait_for(&self, limit: Duration, script: &str) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.eval(script).is_ok_and(|v| v == true) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Resizes the window so that the page's viewport is `width` × `height` CSS pixels.
    pub fn set_viewport(&self, width: u32, height: u32) -> Result<(), String> {
        let (mut w, mut h) = (width, height);
        for _ in 0..3 {
            self.command("window/rect", json!({ "width": w, "height": h }))?;
            let inner = self.eval("return [window.innerWidth, window.innerHeight];")?;
            let (iw, ih) = (
                inner[0].as_u64().unwrap_or(0) as u32,
                inner[1].as_u64().unwrap_or(0) as u32,
            );
            if iw == width && ih == height {
                return Ok(());
            }
            // Whatever the window's frame takes, the viewport gets the rest.
            w = (w + width).saturating_sub(iw);
            h = (h + height).saturating_sub(ih);
        }
        Err(format!("could not size the viewport to {width}×{height}"))
    }

    pub fn screenshot_png(&self, path: &Path) -> Result<(), String> {
        let value = self.request(
            "GET",
            &format!("/session/{}/screenshot", self.session),
            None,
        )?;
        let encoded = value["value"].as_str().ok_or("no screenshot data")?;
        let png = base64_decode(encoded)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn command(&self, what: &str, body: Value) -> Result<Value, String> {
        let value = self.request(
            "POST",
            &format!("/session/{}/{what}", self.session),
            Some(body),
        )?;
        if let Some(error) = value["value"]["error"].as_str() {
            return Err(format!("{what}: {error}: {}", value["value"]["message"]));
        }
        Ok(value["value"].clone())
    }

    /// One WebDriver call over its own connection.
    fn request(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream);
        let mut length = None;
        let mut chunked = false;
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        loop {
            line.clear();
            reader.read_line(&mut line).map_err(|e| e.to_string())?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse::<usize>().ok(),
                    "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                    _ => {}
                }
            }
        }
        let mut data = Vec::new();
        if chunked {
            loop {
                line.clear();
                reader.read_line(&mut line).map_err(|e| e.to_string())?;
                let size = usize::from_str_radix(line.trim(), 16).map_err(|e| e.to_string())?;
                if size == 0 {
                    break;
                }
                let mut chunk = vec![0; size + 2];
                reader.read_exact(&mut chunk).map_err(|e| e.to_string())?;
                data.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(length) = length {
            data.resize(length, 0);
            reader.read_exact(&mut data).map_err(|e| e.to_string())?;
        } else {
            reader.read_to_end(&mut data).map_err(|e| e.to_string())?;
        }
        serde_json::from_slice(&data)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&data)))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.request("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        acc = (acc << 6) | value(c).ok_or("invalid base64")?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}
