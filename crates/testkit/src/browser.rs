//! A real, headless Chromium driven over the W3C WebDriver protocol: chromedriver on a
//! loopback port, spoken to with plain JSON over HTTP (the protocol is small, so no
//! WebDriver crate). Debian's `chromium` and `chromium-driver` packages provide both
//! programs; `.ci/run` installs them. A test that needs a browser fails, saying how to
//! install them, rather than skipping.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::{Value, json};

use crate::process::Proc;

/// Where Debian's packages put the programs; `BUSBAR_CHROMIUM` and `BUSBAR_CHROMEDRIVER`
/// point elsewhere.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key WebDriver gives an element reference under.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    http: reqwest::Client,
    port: u16,
    session: String,
    // Dropped after the session is closed: chromedriver, then the profile directory.
    driver: Proc,
    _profile: tempfile::TempDir,
}

fn program(env: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var_os(env).unwrap_or_else(|| default.into()));
    assert!(
        path.exists(),
        "{} is missing: this test drives a real browser. Install Chromium and its driver \
         (Debian: `apt-get install -y chromium chromium-driver`; .ci/run does), or set {env}",
        path.display()
    );
    path
}

impl Browser {
    /// Starts chromedriver and opens a headless Chromium session; chromedriver's log goes
    /// to `log_dir/chromedriver.log`.
    pub async fn start(log_dir: &Path) -> Browser {
        let chromium = program("BUSBAR_CHROMIUM", CHROMIUM);
        let chromedriver = program("BUSBAR_CHROMEDRIVER", CHROMEDRIVER);
        let port = crate::free_port();
        let mut cmd = Command::new(chromedriver);
        cmd.arg(format!("--port={port}"));
        let mut driver = Proc::spawn("chromedriver", cmd, &log_dir.join("chromedriver.log"));
        driver.wait_ready(&format!("http://127.0.0.1:{port}/status"), Duration::from_secs(20)).await;
        let profile = tempfile::Builder::new().prefix("busbar-chromium-").tempdir().expect("a profile dir");
        // Everything that would reach the network on its own is off: tests run offline.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1400",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let r = http.post(format!("http://127.0.0.1:{port}/session")).json(&caps).send().await;
        let v: Value = match r {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(e) => panic!("chromedriver did not answer POST /session: {e}\n{}", driver.log_tail()),
        };
        let Some(session) = v["value"]["sessionId"].as_str() else {
            panic!("chromedriver could not start Chromium: {v}\n{}", driver.log_tail());
        };
        Browser { http, port, session: session.to_owned(), driver, _profile: profile }
    }

    /// One WebDriver command on the session; `Err` carries WebDriver's error message.
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("http://127.0.0.1:{}/session/{}{path}", self.port, self.session);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.map_err(|e| format!("{method} {path}: {e}"))?;
        let ok = r.status().is_success();
        let v: Value = r.json().await.map_err(|e| format!("{method} {path}: not JSON: {e}"))?;
        if ok { Ok(v["value"].clone()) } else { Err(format!("{method} {path}: {}", v["value"])) }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.cmd(reqwest::Method::POST, path, Some(body)).await.unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns
    /// what it returns.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": args})).await
    }

    /// The element `css` selects, if there is one now.
    pub async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .cmd(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css})))
            .await
            .ok()?;
        v[ELEMENT].as_str().map(str::to_owned)
    }

    /// Clicks the element `css` selects, failing if there is none.
    pub async fn click(&self, css: &str) {
        let id = self.find(css).await.unwrap_or_else(|| panic!("no element matches `{css}`"));
        self.post(&format!("/element/{id}/click"), json!({})).await;
    }

    /// Types `text` into the element `css` selects.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await.unwrap_or_else(|| panic!("no element matches `{css}`"));
        self.post(&format!("/element/{id}/value"), json!({"text": text})).await;
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await.unwrap_or_else(|e| panic!("{e}"));
        let png = decode_base64(v.as_str().expect("a base64 string"));
        std::fs::write(path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// chromedriver's log, for failure messages.
    pub fn driver_log(&self) -> String {
        self.driver.log_tail()
    }
}

impl Drop for Browser {
    /// Closes the session, which makes chromedriver end Chromium; killing chromedriver
    /// alone would leave the browser running. Plain blocking HTTP: a `Drop` cannot await.
    fn drop(&mut self) {
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session, self.port
        );
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = s.write_all(request.as_bytes());
            let _ = s.read_to_end(&mut vec![]);
        }
    }
}

/// Where a test's files for people to look at go (screenshots and the like):
/// `<target dir>/test-artifacts/<name>`, created if missing.
pub fn artifacts_dir(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("test-artifacts").join(name);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Standard base64 (WebDriver's screenshots), padding optional.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {:?}", c as char),
    };
    let digits: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_base64_with_and_without_padding() {
        assert_eq!(super::decode_base64("aGVsbG8="), b"hello");
        assert_eq!(super::decode_base64("aGVsbG8"), b"hello");
        assert_eq!(super::decode_base64("aGk/"), [b'h', b'i', 0x3f]);
        assert_eq!(super::decode_base64(""), b"");
    }
}
