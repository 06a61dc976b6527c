//! llmock (PyPI, pinned 0.2.2), the API simulator `.ci/servers` starts on
//! 127.0.0.1 and names in `MKT_TEST_LLMOCK_URL`: where it is, and its
//! request journal.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};

/// llmock's URL, or `None` with a message saying that the `what` tests
/// were skipped; a failure instead when `MKT_REQUIRE_SERVERS` is set (as
/// in CI).
pub fn url(what: &str) -> Option<String> {
    const VAR: &str = "MKT_TEST_LLMOCK_URL";
    match std::env::var(VAR) {
        Ok(v) if !v.is_empty() => Some(v.trim_end_matches('/').to_string()),
        _ if std::env::var_os("MKT_REQUIRE_SERVERS").is_some() => panic!(
            "`{VAR}` is not set but `MKT_REQUIRE_SERVERS` is: the {what} tests need the \
             llmock server that `.ci/run` starts"
        ),
        _ => {
            eprintln!(
                "SKIPPED: `{VAR}` is not set, so the {what} test did not run \
                 (`.ci/run` starts llmock and sets it)"
            );
            None
        }
    }
}

/// A name of this test process and call alone (llmock keeps its limits
/// per API key, and one journal for every test).
pub fn unique(what: &str) -> String {
    static K: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{what}-{}-{}",
        std::process::id(),
        K.fetch_add(1, Ordering::Relaxed)
    )
}

/// Every request llmock has received, oldest first, as its journal
/// (`GET /_llmock/requests`) records them.
pub fn journal(url: &str) -> Vec<serde_json::Value> {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let mut s = TcpStream::connect(rest).unwrap();
    write!(
        s,
        "GET /_llmock/requests HTTP/1.1\r\nHost: {rest}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = &text[text.find("\r\n\r\n").expect("a body") + 4..];
    // the journal comes in one chunk, or none
    let json_start = body.find('{').expect("JSON");
    let json_end = body.rfind('}').expect("JSON");
    let v: serde_json::Value = serde_json::from_str(&body[json_start..=json_end]).unwrap();
    v["requests"].as_array().unwrap().clone()
}
