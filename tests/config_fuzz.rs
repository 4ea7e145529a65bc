//! Property test of config loading: whatever the file holds (mutations of valid files, random
//! documents, random bytes), loading never panics and an error is one line of bounded length.
//! A few mutations also go through the real binary: `lb -t` exits 1 with one line.

use proptest::prelude::*;

const VALID: &str = r#"version: 1
threads: 2
grace_period_seconds: 5
lb:
  listen: ["127.0.0.1:18080"]
  upstreams:
    - 127.0.0.1:8081
    - { addr: "127.0.0.1:8082", weight: 3, max_conns: 10, backup: false }
  selection: least_conn
  retries: { attempts: 1, on: [connect_failure, status_503] }
  timeouts: { connect: 1s, read: 5s, client_header: 10s, client_body: 30s }
  limits: { max_header_bytes: 64KiB, max_headers: 100, max_body_bytes: 10MiB }
  health_check: { type: http, path: /health, interval: 2s, expect_status: [200, "300-399"] }
  passive_health: { consecutive_failures: 5, eject_for: 30s }
  queue: { size: 100, timeout: 2s }
"#;

/// Pieces a mutation may splice in: YAML syntax, odd numbers, long and special values.
const PIECES: &[&str] = &[
    ":",
    "- ",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "'",
    "\n",
    "  ",
    "&a ",
    "*a",
    "!!binary ",
    "0",
    "-1",
    "18446744073709551616",
    "1e309",
    "0x10",
    "null",
    "~",
    "true",
    "yes",
    "0s",
    "99999999h",
    "threads: 0\n",
    "threads: 1\n",
    "lb:\n",
    "  listen: []\n",
    "\t",
    "#",
    "%YAML 1.2\n",
    "---\n",
    "...\n",
    "\u{feff}",
    "é",
    "\u{0}",
    "<<: *a\n",
];

fn check_error_shape(text: &str) {
    if let Err(e) = lb::config::Config::from_yaml(text) {
        let message = e.to_string();
        assert!(!message.contains('\n'), "two lines: {message:?}");
        assert!(
            message.len() <= 2000,
            "{} bytes: {message:.300}",
            message.len()
        );
    }
}

fn mutate(base: &str, edits: &[(usize, usize, usize)]) -> String {
    let mut text = base.as_bytes().to_vec();
    for &(at, remove, piece) in edits {
        let at = at % (text.len() + 1);
        let end = (at + remove % 8).min(text.len());
        let piece = PIECES[piece % PIECES.len()].as_bytes();
        text.splice(at..end, piece.iter().copied());
    }
    String::from_utf8_lossy(&text).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn mutated_files_never_panic(edits in prop::collection::vec((0usize..2000, 0usize..8, 0usize..64), 1..6)) {
        check_error_shape(&mutate(VALID, &edits));
    }

    #[test]
    fn random_text_never_panics(text in "[a-z_:\\-\\[\\]{}\",'0-9 \\n.&*!#|>]{0,300}") {
        check_error_shape(&text);
    }

    #[test]
    fn long_values_are_cut(len in 100usize..5000, key in 0usize..4) {
        let value = "v".repeat(len);
        let text = match key {
            0 => format!("{VALID}  slow_start: {value}\n"),
            1 => format!("{value}: 1\n{VALID}"),
            2 => VALID.replace("least_conn", &value),
            _ => VALID.replace("/health", &format!("/{value}\n")),
        };
        if let Err(e) = lb::config::Config::from_yaml(&text) {
            let message = e.to_string();
            prop_assert!(message.len() < 400, "{} bytes", message.len());
        }
    }
}

#[test]
fn the_valid_base_is_valid() {
    lb::config::Config::from_yaml(VALID).expect("the base of the mutations is valid");
}

/// `lb -t` on a few mutated files: exit status 0 or 1, never a panic (101), and one line.
#[test]
fn lb_t_exits_1_with_one_line_on_mutated_files() {
    let dir = std::env::temp_dir().join(format!("lb-config-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.yaml");
    let mut failures = 0;
    for seed in 0..12usize {
        let edits = [
            (seed * 37, seed % 5, seed * 7),
            (seed * 101, 3, seed * 13 + 5),
        ];
        let text = mutate(VALID, &edits);
        std::fs::write(&path, &text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb"))
            .args(["-t", "-c"])
            .arg(&path)
            .output()
            .expect("lb runs");
        let code = out.status.code();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            code == Some(0) || code == Some(1),
            "exit {code:?} on {text:?}: {stderr}"
        );
        if code == Some(1) {
            failures += 1;
            assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        }
    }
    assert!(failures > 0, "no mutation was invalid");
    let _ = std::fs::remove_dir_all(&dir);
}
