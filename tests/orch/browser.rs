//! The UI in a real headless Chromium, driven through ChromeDriver's W3C WebDriver protocol:
//! the DAG list, the trigger form, the grid turning green without a reload, the log shown as
//! text. Screenshots go to `target/screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); without them the
//! test is skipped with a message, except under CI, where it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::support::{Home, block_on};
use crate::web::serve_web;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key WebDriver names an element by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A ChromeDriver process and one browser session in it.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium; `None` (test skipped) when absent.
    fn start() -> Option<Browser> {
        if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{CHROMIUM} or {CHROMEDRIVER} missing under CI: .ci/run installs chromium and chromium-driver"
            );
            eprintln!(
                "skipped: install Debian's chromium and chromium-driver to run the browser tests"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = block_on(async {
                let answer = client.get(format!("{base}/status")).send().await.ok()?;
                let status: Value = answer.json().await.ok()?;
                status["value"]["ready"].as_bool()
            });
            if ready == Some(true) {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().expect("profile dir");
        // The flags a closed network and a root user need (see the machine notes).
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            client,
            _profile: profile,
        };
        let created = browser.call(
            "POST",
            "/session",
            json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            }}}),
        );
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        Some(browser)
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        block_on(async {
            let request = match method {
                "GET" => self.client.get(&url),
                "DELETE" => self.client.delete(&url),
                _ => self.client.post(&url).json(&body),
            };
            let answer = request.send().await.expect("webdriver request");
            let value: Value = answer.json().await.expect("webdriver answer");
            value["value"].clone()
        })
    }

    fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let value = self.call(method, &format!("/session/{}{path}", self.session), body);
        if let Some(error) = value.get("error") {
            panic!("webdriver {path}: {error}: {}", value["message"]);
        }
        value
    }

    fn open(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url }));
    }

    fn url(&self) -> String {
        self.command("GET", "/url", Value::Null)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The elements matching `css` now.
    fn find_all(&self, css: &str) -> Vec<String> {
        let found = self.call(
            "POST",
            &format!("/session/{}/elements", self.session),
            json!({ "using": "css selector", "value": css }),
        );
        found
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until an element matches `css` and `ok` holds for its text; returns it.
    fn wait_for(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for element in self.find_all(css) {
                if ok(&self.text(&element)) {
                    return element;
                }
            }
            if Instant::now() > deadline {
                self.screenshot("failure");
                let found = self.find_all(css);
                let texts: Vec<Value> = found
                    .iter()
                    .map(|e| {
                        self.call(
                            "GET",
                            &format!("/session/{}/element/{e}/text", self.session),
                            Value::Null,
                        )
                    })
                    .collect();
                panic!(
                    "no `{css}` {what} within 30 s at {}: found {found:?} with texts {texts:?}",
                    self.url()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn text(&self, element: &str) -> String {
        let value = self.call(
            "GET",
            &format!("/session/{}/element/{element}/text", self.session),
            Value::Null,
        );
        value.as_str().unwrap_or("").to_string()
    }

    fn attribute(&self, element: &str, name: &str) -> String {
        self.command(
            "GET",
            &format!("/element/{element}/attribute/{name}"),
            Value::Null,
        )
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    fn click(&self, element: &str) {
        self.command("POST", &format!("/element/{element}/click"), json!({}));
    }

    fn type_into(&self, element: &str, text: &str) {
        self.command("POST", &format!("/element/{element}/clear"), json!({}));
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        );
    }

    fn script(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
    }

    /// Saves the page as `target/screenshots/NAME.png`; returns the path.
    fn screenshot(&self, name: &str) -> PathBuf {
        let data = self.command("GET", "/screenshot", Value::Null);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or(""))
            .expect("a PNG");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), Value::Null);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

const DAG: &str = r#"id: browser_chain
description: "Says <b>hello</b>, then counts"
params: { greeting: hello, limit: 10 }
tasks:
  - id: speak
    kind: shell
    with: { command: "echo '<script>document.title=\"pwned\"</script>' {{ params.greeting }}" }
  - id: count
    kind: shell
    depends_on: [speak]
    with: { command: "sleep 1; echo orch:rows=7" }
"#;

#[test]
fn the_ui_triggers_a_run_watches_it_turn_green_and_shows_its_log_as_text() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let home = Home::new();
    home.write_dag("browser_chain", DAG);
    let web = serve_web(&home, "127.0.0.1", &[]);
    let site = format!("http://{}", web.addr);

    // The DAG list, with the description shown as text.
    browser.open(&format!("{site}/"));
    let row = browser.wait_for("tr[data-dag=\"browser_chain\"]", "listing the DAG", |t| {
        t.contains("browser_chain")
    });
    assert!(
        browser
            .text(&row)
            .contains("Says <b>hello</b>, then counts")
    );
    browser.screenshot("dag-list");

    // The trigger form, generated from the params: a bad date is refused next to its field.
    let trigger = browser.wait_for(
        "tr[data-dag=\"browser_chain\"] a[data-action=\"trigger\"]",
        "",
        |_| true,
    );
    browser.click(&trigger);
    let greeting = browser.wait_for("form.trigger input[name=\"greeting\"]", "", |_| true);
    assert_eq!(browser.attribute(&greeting, "value"), "hello");
    let limit = browser.wait_for("form.trigger input[name=\"limit\"]", "", |_| true);
    assert_eq!(browser.attribute(&limit, "type"), "number");
    browser.type_into(&greeting, "world");
    let date = browser.wait_for("form.trigger input[name=\"__logical_date\"]", "", |_| true);
    browser.type_into(&date, "not-a-date");
    let submit = browser.wait_for("form.trigger button[type=\"submit\"]", "", |_| true);
    browser.click(&submit);
    browser.wait_for(".field-error", "saying the date is wrong", |t| {
        t.contains("not-a-date")
    });
    browser.screenshot("trigger-form-error");
    browser.type_into(&date, "");
    browser.click(&submit);

    // Back on the DAG page: the new run turns green in the grid while the page stays loaded.
    browser.wait_for(
        "table.grid td.cell[data-task=\"count\"]",
        "in the grid",
        |_| true,
    );
    assert!(
        browser.url().ends_with("/dags/browser_chain"),
        "{}",
        browser.url()
    );
    browser.script("window.orchStayedLoaded = 42;");
    let cell = browser.wait_for(
        "table.grid td.cell[data-task=\"count\"][data-state=\"success\"]",
        "turning green",
        |_| true,
    );
    assert_eq!(
        browser.script("return window.orchStayedLoaded;"),
        json!(42),
        "the page reloaded"
    );
    let run_id = browser.attribute(&cell, "data-run");
    browser.screenshot("grid");

    // The run page: a Gantt of the attempts.
    browser.open(&format!("{site}/runs/{}", crate::web::encode(&run_id)));
    browser.wait_for("svg.gantt-chart rect.bar", "drawn", |_| true);
    browser.wait_for("table.attempts", "listing the attempts", |t| {
        t.contains("7")
    });
    browser.screenshot("run");

    // The log of `speak`: its `<script>` output is shown as characters and never runs.
    browser.open(&format!("{site}/dags/browser_chain"));
    let speak = browser.wait_for(
        &format!("table.grid td.cell[data-task=\"speak\"][data-run=\"{run_id}\"]"),
        "",
        |_| true,
    );
    browser.click(&speak);
    browser.wait_for("pre#log", "with the output", |t| {
        t.contains("<script>document.title=\"pwned\"</script> world")
    });
    assert_eq!(
        browser.script("return document.querySelectorAll('#log script, #log *').length;"),
        json!(0)
    );
    assert_ne!(browser.script("return document.title;"), json!("pwned"));
    browser.screenshot("log");
}
