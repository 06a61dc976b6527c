//! Integration tests of the HTTP providers (`openai`, `anthropic`) against
//! a fake API on 127.0.0.1 (`support/fake_api.rs`): what `mkt` sends, how
//! it retries and gives up, pools and quota, usage and cost, and that the
//! API key never leaves the environment.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::fake_api::{FakeApi, Recorded, Reply};
use support::{Project, project};

const KEY: &str = "sk-test-0123456789-SECRET";

const TEMPLATE: &str = "system:\nBe brief.\nuser:\nSummarize: {{ inputs.doc }}\n";

/// A project with one model `m` (the `[models.m]` body given) and one
/// target `a` using it.
fn one_target(model: &str) -> Project {
    project()
        .file(
            "prompts.toml",
            format!(
                "[targets.a]\ntemplate = \"t.md\"\ninputs = {{ doc = \"doc.txt\" }}\noutput = \"out/a.md\"\nmodel = \"m\"\n\n[models.m]\n{model}"
            ),
        )
        .file("t.md", TEMPLATE)
        .file("doc.txt", "caching")
        .build()
}

/// A project with `n` independent targets `t[docs/NN.txt]` on model `m`.
fn many_targets(n: usize, model: &str) -> Project {
    let mut b = project()
        .file(
            "prompts.toml",
            format!(
                "[targets.t]\nforeach = \"docs/*.txt\"\ntemplate = \"t.md\"\noutput = \"out/{{stem}}.md\"\nmodel = \"m\"\n\n[models.m]\n{model}"
            ),
        )
        .file("t.md", "user:\n{{ item.content }}\n");
    for i in 0..n {
        b = b.file(&format!("docs/{i:02}.txt"), format!("doc {i}\n"));
    }
    b.build()
}

fn openai_model(api: &FakeApi, extra: &str) -> String {
    format!(
        "provider = \"openai\"\nmodel = \"gpt-test\"\nbase_url = \"{}\"\napi_key_env = \"MKT_TEST_KEY\"\n{extra}",
        api.base_url()
    )
}

fn anthropic_model(api: &FakeApi, extra: &str) -> String {
    format!(
        "provider = \"anthropic\"\nmodel = \"claude-test\"\nbase_url = \"{}\"\napi_key_env = \"MKT_TEST_KEY\"\nmax_tokens = 256\n{extra}",
        api.base_url()
    )
}

const ENV: &[(&str, &str)] = &[("MKT_TEST_KEY", KEY)];

/// Every file under `.mkt/`, recursively.
fn store_files(p: &Project) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&p.path(".mkt"), &mut out);
    out
}

#[track_caller]
fn assert_key_nowhere(p: &Project, runs: &[&support::Run]) {
    let files = store_files(p);
    assert!(!files.is_empty());
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
            "the API key is in {}",
            f.display()
        );
    }
    for r in runs {
        assert!(
            !r.stdout.contains(KEY) && !r.stderr.contains(KEY),
            "the API key was printed"
        );
    }
}

/// The action-cache manifests of the project.
fn ac_manifests(p: &Project) -> Vec<serde_json::Value> {
    p.store_entries()
        .into_iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect()
}

fn run_manifests(p: &Project) -> Vec<serde_json::Value> {
    store_files(p)
        .into_iter()
        .filter(|f| f.strip_prefix(p.path(".mkt/runs")).is_ok())
        .map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
        .collect()
}

fn paths(reqs: &[Recorded]) -> Vec<String> {
    reqs.iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

// ---------------------------------------------------------------------------
// What is sent, what is recorded

#[test]
fn openai_request_usage_cost_and_cache_savings() {
    let api = FakeApi::start(|_, _| Reply::openai("A short summary.", 1000, 200, 600));
    let p = one_target(&openai_model(
        &api,
        "temperature = 0.2\ntop_p = 0.9\nmax_tokens = 300\nseed = 7\nstop = [\"END\"]\n\
         price_input_per_mtok = 2.5\nprice_output_per_mtok = 10.0\n",
    ));
    let first = p.mkt_env(&["build"], ENV);
    first
        .success()
        .summary(
        "1 ran, 0 cached, 0 up to date; spent 1200 tokens, $0.00315; prompt cache read 600 tokens, saved $0.00135",
    );
    assert_eq!(p.read("out/a.md"), "A short summary.");

    let reqs = api.requests();
    assert_eq!(paths(&reqs), ["POST /v1/chat/completions"]);
    let r = &reqs[0];
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({
            "model": "gpt-test",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Summarize: caching"}
            ],
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 300,
            "seed": 7,
            "stop": ["END"]
        })
    );

    let m = &ac_manifests(&p)[0];
    assert_eq!(
        m["usage"],
        json!({"input_tokens": 1000, "output_tokens": 200, "cached_tokens": 600})
    );
    // 400 × 2.5 / 1e6 + 600 cached × 0.25 / 1e6 + 200 × 10 / 1e6
    assert!(
        (m["cost_usd"].as_f64().unwrap() - 0.00315).abs() < 1e-12,
        "{m}"
    );
    assert_eq!(m["model"]["provider"], "openai");
    assert_eq!(m["model"]["params"]["model"], "gpt-test");
    assert!(m["model"]["params"].get("base_url").is_none());
    assert!(m["model"]["params"].get("api_key_env").is_none());

    let runs = p.mkt(&["runs"]);
    runs.success();
    let header = runs.stdout.lines().next().unwrap();
    assert!(
        header.contains("TOKENS") && header.contains("COST"),
        "{header}"
    );
    let row = runs.stdout.lines().nth(1).unwrap();
    assert!(
        row.contains("1000+200") && row.contains("$0.00315"),
        "{row}"
    );

    // an edit and its undo: the second answer comes from the action cache,
    // and the summary says what that saved
    p.write("doc.txt", "caching, again");
    let second = p.mkt_env(&["build"], ENV);
    second.success();
    p.write("doc.txt", "caching");
    let third = p.mkt_env(&["build"], ENV);
    third
        .success()
        .summary("0 ran, 1 cached, 0 up to date; cache saved 1200 tokens, $0.00315");
    assert_eq!(api.requests().len(), 2);
    assert_key_nowhere(&p, &[&first, &second, &third, &runs]);
}

#[test]
fn anthropic_request_follows_the_messages_api() {
    let api = FakeApi::start(|_, _| Reply::anthropic("Brief.", 50, 5, 40));
    let p = one_target(&anthropic_model(
        &api,
        "temperature = 0.5\nstop = [\"###\"]\nprice_input_per_mtok = 3.0\nprice_output_per_mtok = 15.0\n",
    ));
    let run = p.mkt_env(&["build"], ENV);
    run.success()
        .summary(
            "1 ran, 0 cached, 0 up to date; spent 95 tokens, $0.000237; prompt cache read 40 tokens, saved $0.000108",
        );
    assert_eq!(p.read("out/a.md"), "Brief.");
    let reqs = api.requests();
    assert_eq!(paths(&reqs), ["POST /v1/messages"]);
    let r = &reqs[0];
    assert_eq!(r.header("x-api-key"), Some(KEY));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("authorization"), None);
    assert_eq!(
        r.json(),
        json!({
            "model": "claude-test",
            "max_tokens": 256,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "Summarize: caching"}],
            "temperature": 0.5,
            "stop_sequences": ["###"]
        })
    );
    // the 40 tokens read from the prompt cache, which the API counts
    // apart, are among the input tokens, at a tenth of the price:
    // 50 × 3 / 1e6 + 40 × 0.3 / 1e6 + 5 × 15 / 1e6
    let m = &ac_manifests(&p)[0];
    assert_eq!(
        m["usage"],
        json!({"input_tokens": 90, "output_tokens": 5, "cached_tokens": 40})
    );
    assert!(
        (m["cost_usd"].as_f64().unwrap() - 0.000237).abs() < 1e-12,
        "{m}"
    );
    assert_key_nowhere(&p, &[&run]);
}

#[test]
fn anthropic_without_max_tokens_is_a_config_error() {
    let p = one_target(
        "provider = \"anthropic\"\nmodel = \"claude-test\"\nbase_url = \"http://127.0.0.1:9/v1\"\n",
    );
    let r = p.mkt(&["build"]);
    r.code(2).stderr_contains(
        "error: prompts.toml:7:1: model `m` needs `max_tokens` (the Anthropic API requires it)",
    );
}

#[test]
fn a_local_server_needs_no_key() {
    let api = FakeApi::start(|_, _| Reply::openai("local", 3, 1, 0));
    let p = one_target(&format!(
        "provider = \"openai\"\nmodel = \"llama3\"\nbase_url = \"{}\"\n",
        api.base_url()
    ));
    p.mkt_env(&["build"], &[]).success();
    assert_eq!(api.requests()[0].header("authorization"), None);
}

// ---------------------------------------------------------------------------
// The SDKs' conventions: base URL variables and forms, keys with a base URL

#[test]
fn the_sdk_base_url_variables_are_read_when_base_url_is_not_set() {
    let api = FakeApi::start(|r, _| match r.path.as_str() {
        "/v1/messages" => Reply::anthropic("from anthropic", 3, 1, 0),
        _ => Reply::openai("from openai", 3, 1, 0),
    });
    let host = api.base_url().trim_end_matches("/v1").to_string();
    // each as its SDK documents it: OpenAI's with `/v1`, Anthropic's without
    for (model, env, want) in [
        (
            "provider = \"openai\"\nmodel = \"gpt-test\"\n",
            ("OPENAI_BASE_URL", api.base_url()),
            "from openai",
        ),
        (
            "provider = \"anthropic\"\nmodel = \"claude-test\"\nmax_tokens = 9\n",
            ("ANTHROPIC_BASE_URL", host.clone()),
            "from anthropic",
        ),
    ] {
        let p = one_target(model);
        let keys = [("OPENAI_API_KEY", KEY), ("ANTHROPIC_API_KEY", KEY)];
        p.mkt_env(&["build"], &[(env.0, env.1.as_str()), keys[0], keys[1]])
            .success();
        assert_eq!(p.read("out/a.md"), want);
    }
    assert_eq!(
        paths(&api.requests()),
        ["POST /v1/chat/completions", "POST /v1/messages"]
    );
}

#[test]
fn an_anthropic_base_url_in_the_sdk_form_gets_v1_and_one_with_v1_is_kept() {
    let api = FakeApi::start(|_, _| Reply::anthropic("ok", 3, 1, 0));
    let host = api.base_url().trim_end_matches("/v1").to_string();
    for base in [
        host.clone(),
        format!("{host}/"),
        api.base_url(),
        format!("{}/", api.base_url()),
    ] {
        let p = one_target(&format!(
            "provider = \"anthropic\"\nmodel = \"claude-test\"\nbase_url = \"{base}\"\napi_key_env = \"\"\nmax_tokens = 9\n"
        ));
        p.mkt_env(&["build"], &[]).success();
    }
    assert_eq!(paths(&api.requests()), ["POST /v1/messages"; 4]);
}

#[test]
fn with_a_base_url_the_providers_usual_key_is_sent_when_it_is_set() {
    let api = FakeApi::start(|r, _| match r.path.as_str() {
        "/v1/messages" => Reply::anthropic("ok", 3, 1, 0),
        _ => Reply::openai("ok", 3, 1, 0),
    });
    let openai = format!(
        "provider = \"openai\"\nmodel = \"g\"\nbase_url = \"{}\"\n",
        api.base_url()
    );
    let anthropic = format!(
        "provider = \"anthropic\"\nmodel = \"c\"\nbase_url = \"{}\"\nmax_tokens = 9\n",
        api.base_url()
    );
    // set: sent, as a proxy or gateway (LiteLLM) may need it
    one_target(&openai)
        .mkt_env(&["build"], &[("OPENAI_API_KEY", KEY)])
        .success();
    one_target(&anthropic)
        .mkt_env(&["build"], &[("ANTHROPIC_API_KEY", KEY)])
        .success();
    // `api_key_env = ""`: never
    one_target(&format!("{openai}api_key_env = \"\"\n"))
        .mkt_env(&["build"], &[("OPENAI_API_KEY", KEY)])
        .success();
    // unset: none, and no error (a local server)
    one_target(&anthropic).mkt_env(&["build"], &[]).success();
    let reqs = api.requests();
    let sent = |r: &Recorded| {
        (
            r.header("authorization").map(str::to_string),
            r.header("x-api-key").map(str::to_string),
        )
    };
    assert_eq!(
        reqs.iter().map(sent).collect::<Vec<_>>(),
        [
            (Some(format!("Bearer {KEY}")), None),
            (None, Some(KEY.to_string())),
            (None, None),
            (None, None),
        ]
    );
}

// ---------------------------------------------------------------------------
// Keys

#[test]
fn a_missing_key_fails_before_any_request() {
    let api = FakeApi::start(|_, _| Reply::openai("never", 1, 1, 0));
    let p = many_targets(3, &openai_model(&api, ""));
    for env in [&[][..], &[("MKT_TEST_KEY", "")][..]] {
        let r = p.mkt_env(&["build", "-k"], env);
        r.code(1)
            .stderr_contains("environment variable `MKT_TEST_KEY` (named by `api_key_env`) is not set or empty; no request was sent")
            .summary("0 ran, 0 cached, 0 up to date, 3 failed");
    }
    assert_eq!(api.requests().len(), 0);
}

/// One build against an API that answers 401, echoing `echo(key)` of the
/// key it was sent.
fn build_against_a_401_echoing(echo: fn(&str) -> String) -> (FakeApi, Project, support::Run) {
    let api = FakeApi::start(move |r, _| {
        let key = r
            .header("authorization")
            .unwrap_or("")
            .replace("Bearer ", "");
        let message = format!(
            "Incorrect API key provided: {}. You can find your API key at https://platform.example/account/api-keys.",
            echo(&key)
        );
        Reply::json(
            401,
            json!({"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}}),
        )
    });
    let p = one_target(&openai_model(&api, ""));
    let r = p.mkt_env(&["build"], ENV);
    (api, p, r)
}

#[test]
fn a_key_echoed_by_the_api_is_redacted() {
    let (api, p, r) = build_against_a_401_echoing(|key| key.to_string());
    r.code(1)
        .stderr_contains("HTTP 401 from `")
        .stderr_contains("Incorrect API key provided: [redacted]. You can find");
    // a 401 is not retried
    assert_eq!(api.requests().len(), 1);
    assert_key_nowhere(&p, &[&r]);
}

#[test]
fn a_partially_masked_key_echoed_by_the_api_is_redacted() {
    // as OpenAI's 401 answers show a key: its first 8 and last 4 characters
    let (_api, p, r) =
        build_against_a_401_echoing(|key| format!("{}...{}", &key[..8], &key[key.len() - 4..]));
    r.code(1)
        .stderr_contains("Incorrect API key provided: [redacted]. You can find")
        .stderr_lacks("sk-test-...CRET");
    for f in store_files(&p) {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        assert!(!text.contains("sk-test-...CRET"), "in {}", f.display());
    }
}

// ---------------------------------------------------------------------------
// Retries

#[test]
fn rate_limits_are_retried_as_the_server_asks() {
    let api = FakeApi::start(|_, n| match n {
        0 => Reply::json(
            429,
            json!({"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}),
        )
        .header("retry-after", "0"),
        1 => Reply::json(429, json!({"error": {"message": "Rate limit reached"}}))
            .header("retry-after-ms", "150"),
        _ => Reply::openai("done", 1, 1, 0),
    });
    let p = one_target(&openai_model(&api, ""));
    let t = Instant::now();
    p.mkt_env(&["build"], ENV).success();
    let reqs = api.requests();
    assert_eq!(reqs.len(), 3);
    let gap = reqs[2].at - reqs[1].at;
    assert!(
        gap >= Duration::from_millis(140),
        "retry-after-ms honoured: {gap:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(p.read("out/a.md"), "done");
}

#[test]
fn rate_limits_never_count_against_max_retries() {
    let api = FakeApi::start(|_, n| match n {
        0..=3 => Reply::json(429, json!({"error": {"message": "Rate limit reached"}}))
            .header("retry-after-ms", "20"),
        _ => Reply::openai("done", 1, 1, 0),
    });
    let p = one_target(&openai_model(&api, "max_retries = 0\n"));
    p.mkt_env(&["build", "--timings"], ENV)
        .success()
        .stderr_contains("\nrate limits: requests waited 0.");
    assert_eq!(api.requests().len(), 5);
    let m = &ac_manifests(&p)[0];
    assert_eq!(m["timing"]["attempts"], 5);
    let waited = m["timing"]["rate_limit_wait_ms"].as_f64().unwrap();
    assert!(waited >= 75.0, "4 waits of at least 20 ms: {waited}");
}

#[test]
fn rate_limits_fail_once_the_wait_budget_is_spent() {
    let api = FakeApi::start(|_, _| {
        Reply::json(429, json!({"error": {"message": "Rate limit reached"}}))
            .header("retry-after-ms", "400")
    });
    let p = one_target(&openai_model(&api, "rate_limit_wait_s = 1\n"));
    let t = Instant::now();
    p.mkt_env(&["build"], ENV)
        .code(1)
        .stderr_contains("HTTP 429 from `")
        .stderr_contains(": Rate limit reached\n  (still rate-limited after waiting ")
        .stderr_contains(
            " s; `rate_limit_wait_s` = 1)\n  \
             help: raise `rate_limit_wait_s`, set `requests_per_minute` / `tokens_per_minute` below the account's limits, or build with a lower `-j`",
        );
    // waits of 0.4-0.5 s: a third would pass the second allowed
    assert_eq!(api.requests().len(), 3);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn server_errors_are_retried_a_bounded_number_of_times() {
    let api = FakeApi::start(|_, _| {
        Reply::json(503, json!({"error": {"message": "upstream down"}}))
            .header("retry-after-ms", "10")
    });
    let p = one_target(&openai_model(&api, "max_retries = 2\n"));
    let r = p.mkt_env(&["build"], ENV);
    r.code(1)
        .stderr_contains("upstream down")
        .stderr_contains("HTTP 503")
        .stderr_contains("gave up after 3 attempts; `max_retries` = 2");
    assert_eq!(api.requests().len(), 3);
    // a failed run is recorded but never cached
    assert!(ac_manifests(&p).is_empty());
    assert_eq!(run_manifests(&p).len(), 1);
}

#[test]
fn backoff_without_retry_after_is_short_and_bounded() {
    let api = FakeApi::start(|_, n| match n {
        0 => Reply::raw(500, "Internal Server Error").header("content-type", "text/plain"),
        1 => Reply::raw(502, "Bad Gateway").header("content-type", "text/plain"),
        _ => Reply::openai("ok", 1, 1, 0),
    });
    let p = one_target(&openai_model(&api, ""));
    p.mkt_env(&["build"], ENV).success();
    let reqs = api.requests();
    assert_eq!(reqs.len(), 3);
    // retry n waits a random time in [d/2, d], d = 0.5 s × 2^n
    let first = reqs[1].at - reqs[0].at;
    let second = reqs[2].at - reqs[1].at;
    assert!(
        first >= Duration::from_millis(240) && first < Duration::from_millis(900),
        "{first:?}"
    );
    assert!(
        second >= Duration::from_millis(490) && second < Duration::from_millis(1400),
        "{second:?}"
    );
}

#[test]
fn anthropic_overloaded_is_retried() {
    let api = FakeApi::start(|_, n| {
        match n {
        0 => Reply::json(529, json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
            .header("retry-after", "0"),
        _ => Reply::anthropic("fine", 3, 1, 0),
    }
    });
    let p = one_target(&anthropic_model(&api, ""));
    p.mkt_env(&["build"], ENV).success();
    assert_eq!(api.requests().len(), 2);
}

#[test]
fn other_client_errors_are_not_retried_and_show_the_api_message() {
    let api = FakeApi::start(|_, _| {
        Reply::json(
            400,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "messages: roles must alternate"}}),
        )
    });
    let p = one_target(&anthropic_model(&api, ""));
    p.mkt_env(&["build"], ENV)
        .code(1)
        .stderr_contains("HTTP 400 from `")
        .stderr_contains("invalid_request_error: messages: roles must alternate");
    assert_eq!(api.requests().len(), 1);
}

// ---------------------------------------------------------------------------
// Quota

#[test]
fn a_quota_error_stops_further_calls_to_that_model() {
    let api = FakeApi::start(|_, _| {
        Reply::json(
            429,
            json!({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}}),
        )
        .header("retry-after", "0")
    });
    let p = many_targets(4, &openai_model(&api, ""));
    let r = p.mkt_env(&["build", "-k", "-j", "1"], ENV);
    r.code(1)
        .stderr_contains("You exceeded your current quota")
        .stderr_contains("not sent: model `m` is out of quota")
        .summary("0 ran, 0 cached, 0 up to date, 4 failed");
    assert_eq!(api.requests().len(), 1, "no retry, no further request");
    // a new build tries again (the quota may have been topped up)
    p.mkt_env(&["build", "-k", "-j", "1"], ENV).code(1);
    assert_eq!(api.requests().len(), 2);
}

#[test]
fn anthropic_billing_error_is_a_quota_error() {
    let api = FakeApi::start(|_, _| {
        Reply::json(
            400,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "Your credit balance is too low to access the Anthropic API."}}),
        )
    });
    let p = many_targets(3, &anthropic_model(&api, ""));
    p.mkt_env(&["build", "-k", "-j", "1"], ENV)
        .code(1)
        .stderr_contains("not sent: model `m` is out of quota");
    assert_eq!(api.requests().len(), 1);
}

// ---------------------------------------------------------------------------
// Transport errors

#[test]
fn a_slow_answer_times_out_and_is_retried_like_a_server_error() {
    let api = FakeApi::start(|_, _| Reply::openai("late", 1, 1, 0).delay_ms(3000));
    let p = one_target(&openai_model(&api, "timeout_s = 1\nmax_retries = 1\n"));
    let t = Instant::now();
    p.mkt_env(&["build"], ENV)
        .code(1)
        .stderr_contains("no complete answer from `")
        .stderr_contains(
            "within 1 s (`timeout_s`)\n  (gave up after 2 attempts; `max_retries` = 1)",
        );
    assert!(
        t.elapsed() < Duration::from_millis(4000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(api.requests().len(), 2, "a timeout is retried");
    assert_eq!(run_manifests(&p)[0]["timing"]["attempts"], 2);
}

#[test]
fn conflicts_and_request_timeouts_are_retried() {
    let api = FakeApi::start(|_, n| match n {
        0 => Reply::json(408, json!({"error": {"message": "request timeout"}})),
        1 => Reply::json(409, json!({"error": {"message": "conflict"}})),
        _ => Reply::openai("ok", 1, 1, 0),
    });
    let p = one_target(&openai_model(&api, ""));
    p.mkt_env(&["build"], ENV).success();
    assert_eq!(api.requests().len(), 3);
    assert_eq!(ac_manifests(&p)[0]["timing"]["attempts"], 3);
}

#[test]
fn a_404_without_v1_in_the_url_says_so() {
    let api = FakeApi::start(|_, _| Reply::raw(404, "404 page not found"));
    let base = api.base_url().trim_end_matches("/v1").to_string();
    let p = one_target(&format!(
        "provider = \"openai\"\nmodel = \"gpt-test\"\nbase_url = \"{base}\"\n"
    ));
    p.mkt_env(&["build"], &[]).code(1).stderr_contains(&format!(
        "HTTP 404 from `{base}/chat/completions`: 404 page not found\n  \
         help: the URL has no `/v1`: APIs and local servers usually answer under it; end `base_url` with `/v1` (e.g. `http://localhost:8080/v1`)"
    ));
}

#[test]
fn a_body_that_is_not_json_is_an_error() {
    let api = FakeApi::start(|_, _| Reply::raw(200, "<html>proxy login</html>"));
    let p = one_target(&openai_model(&api, ""));
    p.mkt_env(&["build"], ENV)
        .code(1)
        .stderr_contains("HTTP 200 from `")
        .stderr_contains("but the body is not JSON: <html>proxy login</html>");
}

#[test]
fn a_refused_connection_is_an_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let p = one_target(&format!(
        "provider = \"openai\"\nmodel = \"x\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
    ));
    p.mkt_env(&["build"], &[])
        .code(1)
        .stderr_contains("connection refused by `http://127.0.0.1:")
        .stderr_contains("is the server running and `base_url` right?");
}

// ---------------------------------------------------------------------------
// Pools

#[test]
fn max_concurrency_bounds_requests_in_flight() {
    let api = FakeApi::start(|_, _| Reply::openai("ok", 1, 1, 0).delay_ms(100));
    let p = many_targets(12, &openai_model(&api, "max_concurrency = 3\n"));
    p.mkt_env(&["build", "-j", "12"], ENV)
        .success()
        .summary("12 ran, 0 cached, 0 up to date; spent 24 tokens");
    assert_eq!(api.requests().len(), 12);
    assert_eq!(api.max_in_flight(), 3);
}

#[test]
fn without_a_pool_jobs_run_in_parallel() {
    // the counterpart of the test above: the fake server does see
    // concurrency when nothing limits it
    let api = FakeApi::start(|_, _| Reply::openai("ok", 1, 1, 0).delay_ms(150));
    let p = many_targets(6, &openai_model(&api, ""));
    p.mkt_env(&["build", "-j", "6"], ENV).success();
    assert!(api.max_in_flight() >= 4, "{}", api.max_in_flight());
}

#[test]
fn requests_per_minute_spaces_the_requests() {
    let api = FakeApi::start(|_, _| Reply::openai("ok", 1, 1, 0));
    // 600 a minute: one every 100 ms
    let p = many_targets(4, &openai_model(&api, "requests_per_minute = 600\n"));
    p.mkt_env(&["build", "-j", "4"], ENV).success();
    let mut at: Vec<Instant> = api.requests().iter().map(|r| r.at).collect();
    at.sort();
    for w in at.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap >= Duration::from_millis(85), "{gap:?}");
    }
}

#[test]
fn an_exhausted_limit_waits_for_its_reset() {
    // a limit of 1 request per window, none left, full again in 1 s
    let api = FakeApi::start(|_, n| match n {
        0 => Reply::openai("ok", 1, 1, 0)
            .header("x-ratelimit-limit-requests", "1")
            .header("x-ratelimit-remaining-requests", "0")
            .header("x-ratelimit-reset-requests", "1s"),
        _ => Reply::openai("ok", 1, 1, 0),
    });
    let p = many_targets(2, &openai_model(&api, ""));
    // one at a time: the second is sent after the first answer
    p.mkt_env(&["build", "-j", "1"], ENV).success();
    let mut at: Vec<Instant> = api.requests().iter().map(|r| r.at).collect();
    at.sort();
    let gap = at[1] - at[0];
    // not before the reset; not the minute a per-minute limit would take
    assert!(gap >= Duration::from_millis(990), "{gap:?}");
    assert!(gap < Duration::from_secs(10), "{gap:?}");
}

#[test]
fn pool_settings_belong_to_the_model() {
    let api = FakeApi::start(|_, _| Reply::openai("ok", 1, 1, 0));
    let p = project()
        .file(
            "prompts.toml",
            format!(
                "[targets.a]\ntemplate = \"t.md\"\noutput = \"a.md\"\nmodel = \"m\"\nparams = {{ max_concurrency = 2 }}\n\n[models.m]\n{}",
                openai_model(&api, "")
            ),
        )
        .file("t.md", "hi")
        .build();
    p.mkt(&["build"]).code(2).stderr_contains(
        "prompts.toml:5:10: target `a`: `max_concurrency` cannot be set in `params`",
    );
}

// ---------------------------------------------------------------------------
// format = "json"

#[test]
fn json_format_rejects_output_that_is_not_json() {
    let api = FakeApi::start(|_, _| Reply::openai("Sure! Here it is: {\"a\": 1}", 10, 8, 0));
    let p = one_target(&openai_model(&api, "format = \"json\"\n"));
    let r = p.mkt_env(&["build"], ENV);
    r.code(1).stderr_contains(
        "model `m` was asked for JSON (`format = \"json\"`) but the output is not JSON",
    );
    assert_eq!(
        api.requests()[0].json()["response_format"],
        json!({"type": "json_object"})
    );
    assert!(ac_manifests(&p).is_empty(), "a failed run is not cached");
    // the tokens were spent all the same, and the failed run records them
    assert_eq!(run_manifests(&p)[0]["usage"]["output_tokens"], 8);
    // not cached: the next build asks again
    p.mkt_env(&["build"], ENV).code(1);
    assert_eq!(api.requests().len(), 2);
}

#[test]
fn json_format_checks_the_schema() {
    let api = FakeApi::start(|_, n| match n {
        0 => Reply::openai(r#"{"title": "x"}"#, 1, 1, 0),
        _ => Reply::openai(r#"{"title": "x", "tags": ["a"]}"#, 1, 1, 0),
    });
    let p = one_target(&openai_model(
        &api,
        "format = \"json\"\n[models.m.schema]\ntype = \"object\"\nrequired = [\"title\", \"tags\"]\n\
         properties = { title = { type = \"string\" }, tags = { type = \"array\" } }\n",
    ));
    p.mkt_env(&["build"], ENV)
        .code(1)
        .stderr_contains("the output does not match `schema`")
        .stderr_contains("\"tags\" is a required property");
    let body = api.requests()[0].json();
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(
        body["response_format"]["json_schema"]["schema"]["required"],
        json!(["title", "tags"])
    );
    p.mkt_env(&["build"], ENV).success();
    assert_eq!(p.read("out/a.md"), r#"{"title": "x", "tags": ["a"]}"#);
}

// ---------------------------------------------------------------------------
// What changes the InputBundleHash

#[test]
fn sample_asks_again_while_base_url_and_timeouts_do_not() {
    let api = FakeApi::start(|_, n| Reply::openai(&format!("answer {n}"), 1, 1, 0));
    let other = FakeApi::start(|_, _| Reply::openai("from the other server", 1, 1, 0));
    let p = one_target(&openai_model(&api, "temperature = 1.0\n"));
    p.mkt_env(&["build"], ENV).success();
    assert_eq!(p.read("out/a.md"), "answer 0");
    // the same model elsewhere, with other timeouts and retries: up to date
    p.replace("prompts.toml", &api.base_url(), &other.base_url());
    p.append(
        "prompts.toml",
        "timeout_s = 30\nconnect_timeout_s = 3\nmax_retries = 1\nmax_concurrency = 2\n",
    );
    p.mkt_env(&["build"], ENV)
        .success()
        .summary("0 ran, 0 cached, 1 up to date");
    assert_eq!(other.requests().len(), 0);
    // a new sample of the same prompt
    p.replace("prompts.toml", &other.base_url(), &api.base_url());
    p.append("prompts.toml", "sample = \"2\"\n");
    p.mkt_env(&["build"], ENV)
        .success()
        .summary("1 ran, 0 cached, 0 up to date; spent 2 tokens");
    assert_eq!(p.read("out/a.md"), "answer 1");
}
