//! The status page in a real headless browser (Debian's chromium through chromedriver): rows
//! show the right states, a backend killed during the test turns to down without the page
//! reloading, the drain button works with the token, and a screenshot is left for people.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::backends::Backend;
use common::browser::Browser;
use common::lb_conf::{fast_checks, LbConf, Upstream};
use common::lb_process::{Lb, TempDir};
use common::load::Load;
use common::ports::unique_addr;
use common::wait::wait_until;

const TOKEN: &str = "page-token-0123456789abcdef";

fn state_of(browser: &Browser, addr: SocketAddr) -> String {
    browser
        .eval(&format!(
            "const c = document.querySelector('tr[data-addr=\"{addr}\"] td.state'); return c ? c.dataset.state : null;"
        ))
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn screenshot_path(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join(name)
}

#[test]
fn status_page_shows_live_states_in_a_real_browser() {
    let (a, mut b, c) = Backend::three();
    let dir = TempDir::new();
    let token_file = dir.0.join("admin.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let config = LbConf::new()
        .upstream(&a)
        .upstream(Upstream::new(b.addr).weight(2))
        .upstream(Upstream::new(c.addr).backup())
        .health(fast_checks())
        .selection("least_conn")
        .admin(unique_addr(), Some(&token_file));
    let lb = Lb::start_in(dir, config);
    let admin = lb.admin();
    let load = Load::start(lb.addr, 2, 3000);

    let browser = Browser::start().unwrap_or_else(|e| panic!("{e}"));
    browser.goto(&format!("http://{admin}/")).unwrap();
    // Without the token the page says so; with it, rows appear.
    assert!(browser.wait_for(
        Duration::from_secs(10),
        "return document.getElementById('banner').textContent.includes('token');"
    ));
    browser
        .eval(&format!(
            "localStorage.setItem('lb-admin-token', '{TOKEN}'); return true;"
        ))
        .unwrap();
    assert!(browser.wait_for(
        Duration::from_secs(10),
        "return document.querySelectorAll('#upstreams tr[data-addr]').length === 3;"
    ));
    assert_eq!(state_of(&browser, a.addr), "up");
    assert_eq!(state_of(&browser, b.addr), "up");
    assert_eq!(state_of(&browser, c.addr), "up");
    let loaded_at = browser.eval("return window.lbPage.loadedAt;").unwrap();
    let refreshes = browser.eval("return window.lbPage.refreshes;").unwrap();

    // b dies: the page turns it red on its own.
    b.kill();
    let down = wait_until(Duration::from_secs(10), || {
        state_of(&browser, b.addr) == "down"
    });
    assert!(down, "the page never showed b as down");
    assert_eq!(
        browser.eval("return window.lbPage.loadedAt;").unwrap(),
        loaded_at,
        "no reload"
    );
    assert!(
        browser
            .eval("return window.lbPage.refreshes;")
            .unwrap()
            .as_u64()
            > refreshes.as_u64(),
        "refreshed in place"
    );

    // The drain button, with the token from the page.
    browser
        .eval(&format!(
            "document.querySelector('tr[data-addr=\"{}\"] button[data-action=\"drain\"]').click(); return true;",
            a.addr
        ))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || state_of(
        &browser, a.addr
    ) == "draining"));
    lb.expect_log(&format!(
        "upstream {} is DRAINING through the admin API",
        a.addr
    ));
    // With a draining and b down, only the backup is left.
    assert!(wait_until(Duration::from_secs(5), || {
        lb.get("/who").backend().as_deref() == Some("c")
    }));
    assert!(browser.wait_for(
        Duration::from_secs(5),
        &format!(
            "return document.querySelector('tr[data-addr=\"{}\"] td.state').textContent.includes('drained');",
            a.addr
        )
    ));

    let shot = screenshot_path("status-page.png");
    browser.screenshot_png(&shot).unwrap();
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG at {}", shot.display());
    eprintln!("screenshot: {}", shot.display());

    // A laptop screen and a phone: nothing scrolls sideways, every Disable and Enable button
    // can be seen (and clicked) where it is.
    for (width, height) in [(1280, 800), (390, 844)] {
        browser.set_viewport(width, height).unwrap();
        assert!(browser.wait_for(
            Duration::from_secs(5),
            &format!("return window.innerWidth === {width};")
        ));
        let overflow = browser
            .eval(
                "const d = document.documentElement; \
                 return [d.scrollWidth, d.clientWidth, document.body.scrollWidth];",
            )
            .unwrap();
        assert!(
            overflow[0].as_u64() <= overflow[1].as_u64()
                && overflow[2].as_u64() <= overflow[1].as_u64(),
            "at {width} px the page scrolls sideways: [scrollWidth, clientWidth, body] = {overflow}"
        );
        let hidden = browser
            .eval(
                "const hidden = [];\
                 for (const b of document.querySelectorAll('#upstreams button[data-action=\"disable\"], #upstreams button[data-action=\"enable\"]')) {\
                   let r = b.getBoundingClientRect();\
                   window.scrollTo(0, window.scrollY + r.top - window.innerHeight / 2);\
                   r = b.getBoundingClientRect();\
                   const x = r.left + r.width / 2, y = r.top + r.height / 2;\
                   const hit = document.elementFromPoint(x, y);\
                   if (r.width < 20 || r.height < 10 || r.left < 0 || r.right > document.documentElement.clientWidth || !(hit === b || b.contains(hit)))\
                     hidden.push(b.closest('tr').dataset.addr + ' ' + b.dataset.action + ' ' + JSON.stringify(r));\
                 }\
                 window.scrollTo(0, 0);\
                 return hidden;",
            )
            .unwrap();
        assert_eq!(
            hidden.as_array().map(Vec::len),
            Some(0),
            "at {width} px hidden buttons: {hidden}"
        );
        let count = browser
            .eval("return document.querySelectorAll('#upstreams button[data-action=\"disable\"]').length;")
            .unwrap();
        assert_eq!(count, 3);
        let shot = screenshot_path(&format!("status-page-{width}.png"));
        browser.screenshot_png(&shot).unwrap();
        eprintln!("screenshot at {width} px: {}", shot.display());
    }
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
}
