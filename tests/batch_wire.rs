//! The providers' batch APIs through `markitect::exec::batch`, as the build
//! engine uses them: against llmock (PyPI, 0.2.2), which simulates OpenAI's
//! files and batches and Anthropic's message batches (each batch ends about
//! 3 s after its creation), and against the loopback fake server for what
//! llmock never does: error files, expired and failed batches, results in
//! shuffled order, a poll answered 500, a creation whose answer is lost.
//! Without llmock its tests print a skip message, unless
//! `MKT_REQUIRE_SERVERS` is set (as in CI): then they fail.

mod support;

use camino::Utf8Path;
use markitect::config::{ModelConfig, ModelSettings, Provider};
use markitect::exec::batch::{
    BatchApi, BatchPhase, BatchProgress, BatchRequest, Outcome, batch_api_for, with_unanswered,
};
use markitect::exec::{self, CallStats, ModelError};
use markitect::template::{CompiledPrompt, Message};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::fake_api::{FakeApi, Recorded, Reply};
use support::llmock::unique;

fn model(provider: Provider, name: &str, base_url: &str) -> ModelConfig {
    ModelConfig {
        name: name.into(),
        provider,
        settings: ModelSettings {
            model: Some(name.into()),
            base_url: Some(base_url.into()),
            api_key_env: Some(String::new()),
            max_tokens: Some(100),
            ..Default::default()
        },
    }
}

/// A 64-character hex id, as an InputBundleHash is.
fn hash_id(i: usize) -> String {
    format!("{i:064x}")
}

fn request(i: usize, text: &str) -> BatchRequest {
    BatchRequest {
        custom_id: hash_id(i),
        prompt: CompiledPrompt {
            messages: vec![Message {
                role: "user".into(),
                content: text.into(),
            }],
            cache_breaks: Vec::new(),
        },
    }
}

/// Polls until the batch leaves `Running`, for at most `within`.
fn wait_until_ended(api: &dyn BatchApi, id: &str, within: Duration) -> BatchProgress {
    let start = Instant::now();
    loop {
        let p = api.poll(id).expect("poll");
        if p.phase != BatchPhase::Running {
            return p;
        }
        assert!(start.elapsed() < within, "batch `{id}` still {p:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn sorted(mut results: Vec<Outcome>) -> Vec<Outcome> {
    results.sort_by(|a, b| a.0.cmp(&b.0));
    results
}

fn text_of(o: &Outcome) -> String {
    let r = o.1.as_ref().unwrap_or_else(|e| panic!("{}: {e}", o.0));
    String::from_utf8(r.output.clone()).unwrap()
}

/// Submits three requests, recovers the batch by its tag where the
/// provider keeps one, collects the answers, and checks each is what the
/// ordinary call gives for the same prompt; then cancels a second batch.
fn through_llmock(provider: Provider, base_path: &str, finds: bool) {
    let Some(url) = support::llmock::url("llmock batch") else {
        return;
    };
    let name = unique(provider.as_str());
    let m = model(provider, &name, &format!("{url}{base_path}"));
    let api = batch_api_for(&m).expect("a batch API");
    let reqs: Vec<BatchRequest> = (0..3)
        .map(|i| request(i, &format!("summarise doc {i} of {name}")))
        .collect();
    let tag = unique("tag");
    let id = api.submit(&reqs, &tag).expect("submit");
    if finds {
        assert_eq!(api.find(&tag).unwrap(), Some(id.clone()));
        assert_eq!(api.find(&unique("no-such-tag")).unwrap(), None);
    } else {
        assert_eq!(api.find(&tag).unwrap(), None);
    }
    let p = wait_until_ended(&*api, &id, Duration::from_secs(30));
    assert_eq!(
        (p.phase, p.total, p.done, p.failed),
        (BatchPhase::Ended, 3, 3, 0)
    );
    let results = sorted(api.results(&id).expect("results"));
    assert_eq!(results.len(), 3);
    for (r, req) in results.iter().zip(&reqs) {
        assert_eq!(r.0, req.custom_id);
        let ordinary = exec::call(
            &m,
            &req.prompt,
            Utf8Path::new("."),
            &mut CallStats::default(),
        )
        .expect("ordinary call");
        assert_eq!(text_of(r), String::from_utf8(ordinary.output).unwrap());
        assert_eq!(
            text_of(r),
            format!("Hello! You said: {}", req.prompt.messages[0].content)
        );
        assert!(r.1.as_ref().unwrap().usage.is_some(), "usage of {}", r.0);
    }

    let second = api.submit(&reqs, &unique("tag")).expect("submit");
    api.cancel(&second).expect("cancel");
    let p = wait_until_ended(&*api, &second, Duration::from_secs(30));
    assert_ne!(p.phase, BatchPhase::Running);
    let ids = reqs.iter().map(|r| r.custom_id.as_str());
    let after = with_unanswered(&second, ids, api.results(&second).expect("results"));
    assert_eq!(after.len(), 3);
    for (id, r) in &after {
        match r {
            Err(ModelError::BatchRequestNotRun { batch, .. }) => assert_eq!(batch, &second),
            other => panic!("{id} of a batch cancelled at once: {other:?}"),
        }
    }
}

#[test]
fn openai_batch_through_llmock() {
    through_llmock(Provider::Openai, "/v1", true);
}

#[test]
fn anthropic_batch_through_llmock_at_the_sdk_base_url() {
    // the SDK's form, without `/v1`
    through_llmock(Provider::Anthropic, "/anthropic", false);
}

fn path_is(r: &Recorded, method: &str, path: &str) -> bool {
    r.method == method && r.path == path
}

fn chat(text: &str) -> Value {
    json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
           "usage": {"prompt_tokens": 4, "completion_tokens": 2}})
}

fn output_line(i: usize, status: u16, body: Value) -> String {
    json!({"id": format!("batch_req_{i}"), "custom_id": hash_id(i), "error": null,
           "response": {"status_code": status, "request_id": "req", "body": body}})
    .to_string()
}

fn error_line(i: usize, code: &str, message: &str) -> String {
    json!({"id": format!("batch_req_{i}"), "custom_id": hash_id(i), "response": null,
           "error": {"code": code, "message": message}})
    .to_string()
}

/// An OpenAI API whose one batch `batch_1` is in `batch` (its status and
/// files), with the files' contents.
fn openai_server(batch: Value, output: String, errors: String) -> FakeApi {
    FakeApi::start(move |r, _| {
        if path_is(r, "POST", "/v1/files") {
            Reply::json(
                200,
                json!({"id": "file-in", "object": "file", "purpose": "batch"}),
            )
        } else if path_is(r, "POST", "/v1/batches") {
            Reply::json(200, json!({"id": "batch_1", "status": "validating"}))
        } else if path_is(r, "GET", "/v1/batches/batch_1") {
            Reply::json(200, batch.clone())
        } else if path_is(r, "GET", "/v1/files/file-out/content") {
            Reply::raw(200, &output).header("content-type", "application/jsonl")
        } else if path_is(r, "GET", "/v1/files/file-err/content") {
            Reply::raw(200, &errors).header("content-type", "application/jsonl")
        } else {
            Reply::json(
                404,
                json!({"error": {"message": format!("no {} {}", r.method, r.path)}}),
            )
        }
    })
}

#[test]
fn openai_upload_and_creation_carry_what_the_api_asks() {
    let server = openai_server(json!({}), String::new(), String::new());
    let m = model(Provider::Openai, "gpt-x", &server.base_url());
    let api = batch_api_for(&m).unwrap();
    let reqs = [request(1, "one"), request(2, "two")];
    assert_eq!(api.submit(&reqs, "tag-7").unwrap(), "batch_1");
    let seen = server.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let upload = &seen[0];
    assert!(path_is(upload, "POST", "/v1/files"));
    let ct = upload.header("content-type").unwrap();
    let boundary = ct.strip_prefix("multipart/form-data; boundary=").expect(ct);
    let parts: Vec<&str> = upload.body.split(&format!("--{boundary}")).collect();
    assert_eq!(parts.len(), 4, "{}", upload.body);
    assert!(
        parts[1].contains("name=\"purpose\"\r\n\r\nbatch\r\n"),
        "{}",
        parts[1]
    );
    let (head, file) = parts[2].split_once("\r\n\r\n").unwrap();
    assert!(head.contains("name=\"file\"; filename="), "{head}");
    let lines: Vec<Value> = file
        .trim_end()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["custom_id"], hash_id(2));
    assert_eq!(lines[1]["method"], "POST");
    assert_eq!(lines[1]["url"], "/v1/chat/completions");
    assert_eq!(
        lines[1]["body"],
        json!({"model": "gpt-x", "messages": [{"role": "user", "content": "two"}], "max_tokens": 100})
    );
    assert_eq!(
        seen[1].json(),
        json!({"input_file_id": "file-in", "endpoint": "/v1/chat/completions",
               "completion_window": "24h", "metadata": {"mkt_tag": "tag-7"}})
    );
}

#[test]
fn openai_results_come_from_both_files_in_any_order() {
    let output = [
        output_line(3, 200, chat("three")),
        output_line(1, 200, chat("one")),
        output_line(
            4,
            500,
            json!({"error": {"message": "The server had an error", "type": "server_error"}}),
        ),
    ]
    .join("\n");
    let errors = [
        error_line(5, "invalid_request", "Unknown parameter: `foo`."),
        error_line(
            2,
            "batch_expired",
            "This request could not be executed before the completion window expired.",
        ),
    ]
    .join("\n");
    let batch = json!({"id": "batch_1", "status": "completed",
        "output_file_id": "file-out", "error_file_id": "file-err",
        "request_counts": {"total": 5, "completed": 3, "failed": 2}});
    let server = openai_server(batch, output, errors);
    let api = batch_api_for(&model(Provider::Openai, "gpt-x", &server.base_url())).unwrap();
    assert_eq!(
        api.poll("batch_1").unwrap(),
        BatchProgress {
            phase: BatchPhase::Ended,
            status: "completed".into(),
            total: 5,
            done: 5,
            failed: 2
        }
    );
    let got = sorted(api.results("batch_1").unwrap());
    let ids: Vec<String> = got.iter().map(|o| o.0.clone()).collect();
    assert_eq!(ids, (1..=5).map(hash_id).collect::<Vec<_>>());
    assert_eq!(text_of(&got[0]), "one");
    assert_eq!(text_of(&got[2]), "three");
    let err = |i: usize| got[i].1.as_ref().unwrap_err().to_string();
    assert_eq!(
        err(1),
        "not run in batch `batch_1`: This request could not be executed before the completion window expired.\n\
         help: nothing was stored for it; the next `mkt build` sends it again"
    );
    assert_eq!(
        err(3),
        format!(
            "HTTP 500 from `{}/chat/completions`: The server had an error",
            server.base_url()
        )
    );
    assert_eq!(
        err(4),
        "the provider refused this request of batch `batch_1`: invalid_request: Unknown parameter: `foo`."
    );
}

#[test]
fn an_expired_openai_batch_reports_every_request_it_did_not_run() {
    // one answered, one listed as expired, one the files never mention
    let batch = json!({"id": "batch_1", "status": "expired",
        "output_file_id": "file-out", "error_file_id": "file-err",
        "request_counts": {"total": 3, "completed": 1, "failed": 1}});
    let server = openai_server(
        batch,
        output_line(1, 200, chat("one")),
        error_line(
            2,
            "batch_expired",
            "This request could not be executed before the completion window expired.",
        ),
    );
    let api = batch_api_for(&model(Provider::Openai, "gpt-x", &server.base_url())).unwrap();
    assert_eq!(api.poll("batch_1").unwrap().phase, BatchPhase::Ended);
    let submitted: Vec<String> = (1..=3).map(hash_id).collect();
    let got = sorted(with_unanswered(
        "batch_1",
        submitted.iter().map(String::as_str),
        api.results("batch_1").unwrap(),
    ));
    assert_eq!(got.len(), 3);
    assert_eq!(text_of(&got[0]), "one");
    assert!(
        matches!(&got[1].1, Err(ModelError::BatchRequestNotRun { reason, .. })
        if reason.starts_with("This request could not be executed"))
    );
    assert_eq!(
        got[2].1,
        Err(ModelError::BatchRequestNotRun {
            batch: "batch_1".into(),
            reason: "the provider returned no result for it".into()
        })
    );
}

#[test]
fn an_openai_batch_that_fails_validation_says_why() {
    let batch = json!({"id": "batch_1", "status": "failed",
        "errors": {"object": "list", "data": [
            {"code": "invalid_model", "message": "The model `gpt-x` does not exist.", "line": 1}]},
        "request_counts": {"total": 0, "completed": 0, "failed": 0}});
    let server = openai_server(batch, String::new(), String::new());
    let api = batch_api_for(&model(Provider::Openai, "gpt-x", &server.base_url())).unwrap();
    let p = api.poll("batch_1").unwrap();
    assert_eq!(p.phase, BatchPhase::Failed);
    assert_eq!(p.status, "failed: The model `gpt-x` does not exist.");
    assert_eq!(api.results("batch_1").unwrap(), vec![]);
}

#[test]
fn a_poll_answered_500_is_retried() {
    let server = FakeApi::start(|_, n| {
        if n == 0 {
            Reply::json(500, json!({"error": {"message": "try again"}}))
        } else {
            Reply::json(
                200,
                json!({"id": "batch_1", "status": "in_progress",
                "request_counts": {"total": 3, "completed": 1, "failed": 0}}),
            )
        }
    });
    let api = batch_api_for(&model(Provider::Openai, "gpt-x", &server.base_url())).unwrap();
    let p = api.poll("batch_1").unwrap();
    assert_eq!((p.phase, p.total, p.done), (BatchPhase::Running, 3, 1));
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn a_poll_that_keeps_failing_says_so_after_max_retries() {
    let server = FakeApi::start(|_, _| Reply::json(503, json!({"error": {"message": "down"}})));
    let mut m = model(Provider::Openai, "gpt-x", &server.base_url());
    m.settings.max_retries = Some(1);
    let api = batch_api_for(&m).unwrap();
    assert_eq!(
        api.poll("batch_1").unwrap_err().to_string(),
        format!(
            "HTTP 503 from `{}/batches/batch_1`: down\n(gave up after 2 attempts; `max_retries` = 1)",
            server.base_url()
        )
    );
}

#[test]
fn a_creation_whose_answer_is_lost_is_found_by_its_tag_not_sent_twice() {
    let server = FakeApi::start(|r, _| {
        if path_is(r, "POST", "/v1/files") {
            Reply::json(200, json!({"id": "file-in"}))
        } else if path_is(r, "POST", "/v1/batches") {
            // made, but the answer comes after the client gave up
            Reply::json(200, json!({"id": "batch_9"})).delay_ms(2500)
        } else {
            Reply::json(
                200,
                json!({"object": "list", "has_more": false, "data": [
                {"id": "batch_8", "status": "completed", "metadata": {"mkt_tag": "other"}},
                {"id": "batch_9", "status": "validating", "metadata": {"mkt_tag": "tag-1"}}]}),
            )
        }
    });
    let mut m = model(Provider::Openai, "gpt-x", &server.base_url());
    m.settings.timeout_s = Some(1);
    let api = batch_api_for(&m).unwrap();
    assert_eq!(
        api.submit(&[request(1, "one")], "tag-1").unwrap(),
        "batch_9"
    );
    let creations = server
        .requests()
        .iter()
        .filter(|r| path_is(r, "POST", "/v1/batches"))
        .count();
    assert_eq!(creations, 1);
    assert!(
        server
            .requests()
            .iter()
            .any(|r| path_is(r, "GET", "/v1/batches?limit=100"))
    );
}

#[test]
fn find_pages_through_the_list() {
    let server = FakeApi::start(|r, _| {
        let page = |ids: &[&str], more: bool| {
            let data: Vec<Value> = ids
                .iter()
                .map(|id| json!({"id": id, "status": "completed", "metadata": {"mkt_tag": format!("t-{id}")}}))
                .collect();
            Reply::json(
                200,
                json!({"object": "list", "data": data, "has_more": more,
                                    "last_id": ids.last()}),
            )
        };
        match r.path.as_str() {
            "/v1/batches?limit=100" => page(&["b1", "b2"], true),
            "/v1/batches?limit=100&after=b2" => page(&["b3"], false),
            _ => Reply::json(404, json!({"error": {"message": "no"}})),
        }
    });
    let api = batch_api_for(&model(Provider::Openai, "gpt-x", &server.base_url())).unwrap();
    assert_eq!(api.find("t-b3").unwrap(), Some("b3".into()));
    assert_eq!(api.find("t-b9").unwrap(), None);
}

#[test]
fn anthropic_results_of_every_kind_in_any_order() {
    let server = FakeApi::start(|r, _| {
        let message = |text: &str| {
            json!({"type": "message", "role": "assistant",
                   "content": [{"type": "text", "text": text}],
                   "usage": {"input_tokens": 7, "output_tokens": 1}})
        };
        if path_is(r, "POST", "/v1/messages/batches") {
            Reply::json(
                200,
                json!({"id": "msgbatch_1", "processing_status": "in_progress"}),
            )
        } else if path_is(r, "GET", "/v1/messages/batches/msgbatch_1") {
            Reply::json(
                200,
                json!({"id": "msgbatch_1", "processing_status": "ended",
                "request_counts": {"processing": 0, "succeeded": 2, "errored": 1, "canceled": 1, "expired": 1},
                // elsewhere: the key must not go there
                "results_url": "https://results.example/v1/messages/batches/msgbatch_1/results"}),
            )
        } else if path_is(r, "GET", "/v1/messages/batches/msgbatch_1/results") {
            let lines = [
                json!({"custom_id": hash_id(4), "result": {"type": "canceled"}}),
                json!({"custom_id": hash_id(2), "result": {"type": "succeeded", "message": message("two")}}),
                json!({"custom_id": hash_id(5), "result": {"type": "expired"}}),
                json!({"custom_id": hash_id(3), "result": {"type": "errored", "error":
                    {"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long"}}}}),
                json!({"custom_id": hash_id(1), "result": {"type": "succeeded", "message": message("one")}}),
            ];
            Reply::raw(200, &lines.map(|l| l.to_string()).join("\n"))
        } else {
            Reply::json(
                404,
                json!({"type": "error", "error": {"type": "not_found_error", "message": r.path.clone()}}),
            )
        }
    });
    let base = server.base_url();
    let m = model(Provider::Anthropic, "claude-x", &base);
    let api = batch_api_for(&m).unwrap();
    let reqs: Vec<BatchRequest> = (1..=5).map(|i| request(i, "hi")).collect();
    assert_eq!(api.submit(&reqs, "t").unwrap(), "msgbatch_1");
    let created = server.requests()[0].clone();
    assert_eq!(created.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(created.header("x-api-key"), None);
    assert_eq!(created.json()["requests"][4]["custom_id"], hash_id(5));
    assert_eq!(
        created.json()["requests"][0]["params"],
        json!({"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]})
    );
    assert_eq!(
        api.poll("msgbatch_1").unwrap(),
        BatchProgress {
            phase: BatchPhase::Ended,
            status: "ended".into(),
            total: 5,
            done: 5,
            failed: 3
        }
    );
    let got = sorted(api.results("msgbatch_1").unwrap());
    assert_eq!(got.len(), 5);
    assert_eq!(
        (text_of(&got[0]), text_of(&got[1])),
        ("one".into(), "two".into())
    );
    let err = |i: usize| got[i].1.as_ref().unwrap_err().to_string();
    assert_eq!(
        err(2),
        format!("HTTP 400 from `{base}/messages`: invalid_request_error: prompt is too long")
    );
    assert!(
        err(3).starts_with("not run in batch `msgbatch_1`: the batch was canceled"),
        "{}",
        err(3)
    );
    assert!(
        err(4).starts_with("not run in batch `msgbatch_1`: the batch expired"),
        "{}",
        err(4)
    );
    // read at the configured origin's documented path, not `results_url`
    let reads: Vec<String> = server.requests().iter().map(|r| r.path.clone()).collect();
    assert!(
        reads.contains(&"/v1/messages/batches/msgbatch_1/results".to_string()),
        "{reads:?}"
    );
}

#[test]
fn anthropic_results_of_a_running_batch_are_not_ready() {
    let server = FakeApi::start(|_, _| {
        Reply::json(
            200,
            json!({"id": "msgbatch_1", "processing_status": "canceling",
            "request_counts": {"processing": 2, "succeeded": 1, "errored": 0, "canceled": 0, "expired": 0}}),
        )
    });
    let api = batch_api_for(&model(Provider::Anthropic, "claude-x", &server.base_url())).unwrap();
    let p = api.poll("msgbatch_1").unwrap();
    assert_eq!((p.phase, p.total, p.done), (BatchPhase::Cancelling, 3, 1));
    assert_eq!(
        api.results("msgbatch_1").unwrap_err().to_string(),
        "batch `msgbatch_1` has not ended (status `canceling`): its results are not ready\n\
         help: wait until it has ended, or cancel it"
    );
}
