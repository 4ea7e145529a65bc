//! A headless chromium (Debian's `chromium` and `chromium-driver`) driven through chromedriver
//! with `fantoccini`: enough to load a page, run JavaScript in it and take a screenshot. The
//! WebDriver calls are async; [`Browser`] runs them on a runtime of its own so that tests stay
//! plain blocking code.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use super::lb_process::TempDir;
use super::ports::unique_addr;
use super::wait::{poll_until, port_accepts};

const DRIVERS: [&str; 2] = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];
const BROWSERS: [&str; 2] = ["/usr/bin/chromium", "/usr/lib/chromium/chromium"];

/// A headless chromium with a profile of its own; the browser, its driver and the profile go
/// when this is dropped.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    _profile: TempDir,
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
        let addr = unique_addr();
        let mut driver = Command::new(driver_path)
            .arg(format!("--port={}", addr.port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {driver_path}: {e}"))?;
        if !port_accepts(addr, Duration::from_secs(20)) {
            let _ = driver.kill();
            let _ = driver.wait();
            return Err(format!("chromedriver did not listen on {addr}"));
        }
        let profile = TempDir::new();
        let mut capabilities = Capabilities::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": browser_path,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1680,600",
                    format!("--user-data-dir={}", profile.0.display()),
                ],
            }),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let connected = runtime.block_on(
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&format!("http://{addr}")),
        );
        match connected {
            Ok(client) => Ok(Browser {
                runtime,
                client: Some(client),
                driver,
                _profile: profile,
            }),
            Err(e) => {
                let _ = driver.kill();
                let _ = driver.wait();
                Err(format!("no WebDriver session: {e}"))
            }
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("session open until drop")
    }

    pub fn goto(&self, url: &str) -> Result<(), String> {
        self.runtime
            .block_on(self.client().goto(url))
            .map_err(|e| format!("goto {url}: {e}"))
    }

    /// Runs `script` (which `return`s a value) in the page.
    pub fn eval(&self, script: &str) -> Result<Value, String> {
        self.runtime
            .block_on(self.client().execute(script, Vec::new()))
            .map_err(|e| format!("{script}: {e}"))
    }

    /// Polls `script` until it returns true, for at most `limit`.
    pub fn wait_for(&self, limit: Duration, script: &str) -> bool {
        poll_until(limit, Duration::from_millis(100), || {
            self.eval(script).is_ok_and(|v| v == true)
        })
    }

    /// Resizes the window so that the page's viewport is `width` × `height` CSS pixels.
    pub fn set_viewport(&self, width: u32, height: u32) -> Result<(), String> {
        let (mut w, mut h) = (width, height);
        for _ in 0..3 {
            self.runtime
                .block_on(self.client().set_window_size(w, h))
                .map_err(|e| format!("resize to {w}×{h}: {e}"))?;
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
        let png = self
            .runtime
            .block_on(self.client().screenshot())
            .map_err(|e| format!("screenshot: {e}"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(client.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
