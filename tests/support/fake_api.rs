//! A fake model API on 127.0.0.1 for the provider tests: it records every
//! request (method, path, headers, body, arrival time), counts requests in
//! flight, and answers each with what the test's script says (status,
//! headers, body, after a delay). It speaks just enough HTTP/1.1 for ureq:
//! one request per connection, `Content-Length` bodies, `Connection: close`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("request body is not JSON ({e}): {}", self.body))
    }
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply::raw(status, &body.to_string())
    }

    pub fn raw(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn delay_ms(mut self, ms: u64) -> Reply {
        self.delay = Duration::from_millis(ms);
        self
    }

    /// Sets a field of the JSON body (`model`, `system_fingerprint`, ...).
    pub fn with(mut self, field: &str, value: serde_json::Value) -> Reply {
        let mut v: serde_json::Value =
            serde_json::from_str(&self.body).expect("a JSON body to set a field of");
        v[field] = value;
        self.body = v.to_string();
        self
    }

    /// The answer names `model` as the snapshot that answered.
    pub fn answered_by(self, model: &str) -> Reply {
        self.with("model", serde_json::json!(model))
    }

    /// OpenAI's `system_fingerprint`.
    pub fn fingerprint(self, fp: &str) -> Reply {
        self.with("system_fingerprint", serde_json::json!(fp))
    }

    /// Sets `usage.cache_creation_input_tokens` (Anthropic's cache writes).
    pub fn cache_write(mut self, tokens: u64) -> Reply {
        let mut v: serde_json::Value = serde_json::from_str(&self.body).expect("JSON body");
        v["usage"]["cache_creation_input_tokens"] = serde_json::json!(tokens);
        self.body = v.to_string();
        self
    }

    /// A chat completions answer.
    pub fn openai(text: &str, input: u64, output: u64, cached: u64) -> Reply {
        Reply::json(
            200,
            serde_json::json!({
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": input, "completion_tokens": output,
                          "total_tokens": input + output,
                          "prompt_tokens_details": {"cached_tokens": cached}}
            }),
        )
    }

    /// A Messages API answer.
    pub fn anthropic(text: &str, input: u64, output: u64, cache_read: u64) -> Reply {
        Reply::json(
            200,
            serde_json::json!({
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": input, "output_tokens": output,
                          "cache_read_input_tokens": cache_read}
            }),
        )
    }
}

type Script = dyn Fn(&Recorded, usize) -> Reply + Send + Sync;

struct Shared {
    requests: Mutex<Vec<Recorded>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    stop: AtomicBool,
}

/// The running server; stopped when dropped.
pub struct FakeApi {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
}

impl FakeApi {
    /// Starts a server that answers request number `n` (0-based, in
    /// arrival order) with `script(&request, n)`.
    pub fn start(script: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let script: Arc<Script> = Arc::new(script);
        let sh = Arc::clone(&shared);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let sh = Arc::clone(&sh);
                let script = Arc::clone(&script);
                std::thread::spawn(move || serve(conn, &sh, &*script));
            }
        });
        FakeApi { addr, shared }
    }

    /// `http://127.0.0.1:PORT/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
    }
}

fn serve(conn: TcpStream, sh: &Shared, script: &Script) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone stream"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return; // the wake-up connection, or a client that gave up
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let req = Recorded {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
    };
    let n = {
        let mut all = sh.requests.lock().unwrap();
        all.push(req.clone());
        all.len() - 1
    };
    let now = sh.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    sh.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let reply = script(&req, n);
    std::thread::sleep(reply.delay);
    let mut out = format!(
        "HTTP/1.1 {} X\r\ncontent-length: {}\r\nconnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    if !reply
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        out.push_str("content-type: application/json\r\n");
    }
    for (k, v) in &reply.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&reply.body);
    // counted out before the answer leaves: the client cannot start its
    // next request earlier, so the count never overstates what mkt does
    sh.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut conn = conn;
    let _ = conn.write_all(out.as_bytes());
    let _ = conn.flush();
}
