//! Rate limits against a real API simulator: llmock (PyPI, 0.2.2), which
//! `.ci/servers` starts with 120 requests a minute per API key, 10 % of
//! its answers 429 and 5 % 500 at random, and names in
//! `MKT_TEST_LLMOCK_URL`. A build of more targets than the limit lets
//! through at once must still exit 0 with every output right, pacing
//! itself from the rate-limit headers so that the server seldom has to
//! refuse it. Without the server these tests print a skip message, unless
//! `MKT_REQUIRE_SERVERS` is set (as in CI): then they fail.

mod support;

use support::llmock::{journal, unique};
use support::{Project, project};

/// More than the 120 a minute that the bucket holds when it starts full:
/// the last 20 must wait for it to refill (10 s at the limit).
const N: usize = 140;

/// The statuses llmock answered to requests for `model`, with the reason
/// of each refusal (`ratelimit:requests` for its quota, `chaos:429` for
/// an injected one).
fn answers(url: &str, model: &str) -> Vec<(u64, String)> {
    journal(url)
        .iter()
        .filter(|r| r["model"] == model)
        .map(|r| {
            let fault = r["fault"].as_str().unwrap_or("").to_string();
            (r["status"].as_u64().unwrap(), fault)
        })
        .collect()
}

fn pipeline(model_toml: &str) -> Project {
    let mut b = project()
        .file(
            "prompts.toml",
            format!(
                "[targets.notes]\ntemplate = \"t.md\"\nforeach = \"docs/*.txt\"\noutput = \"out/{{stem}}.md\"\nmodel = \"m\"\n\n[models.m]\n{model_toml}"
            ),
        )
        .file("t.md", "user:\nsummarise {{ item.content }}");
    for i in 0..N {
        b = b.file(&format!("docs/{i:03}.txt"), format!("doc {i}"));
    }
    b.build()
}

/// Builds the pipeline against llmock with `-j 16` and checks what the
/// issue asks: exit 0, every output right, few answers of 429 for the
/// quota, every target answered once.
fn build_through_the_limit(provider: &str, base_path: &str, extra: &str) {
    let Some(url) = support::llmock::url("rate-limit") else {
        return;
    };
    let (model, key) = (unique(provider), unique("key"));
    let p = pipeline(&format!(
        "provider = \"{provider}\"\nmodel = \"{model}\"\nbase_url = \"{url}{base_path}\"\n\
         api_key_env = \"MKT_TEST_LLMOCK_KEY\"\n{extra}"
    ));
    p.mkt_env(&["build", "-j", "16"], &[("MKT_TEST_LLMOCK_KEY", &key)])
        .success()
        .stderr_contains(&format!("\n{N} ran, 0 cached, 0 up to date; spent "));
    for i in 0..N {
        assert_eq!(
            p.read(&format!("out/{i:03}.md")),
            format!("Hello! You said: summarise doc {i}")
        );
    }
    let answers = answers(&url, &model);
    let count = |f: &dyn Fn(&(u64, String)) -> bool| answers.iter().filter(|a| f(a)).count();
    assert_eq!(count(&|a| a.0 == 200), N, "each target answered once");
    let quota_429 = count(&|a| a.1 == "ratelimit:requests");
    let injected = count(&|a| a.1.starts_with("chaos:"));
    assert!(injected > 0, "the server injected errors: {answers:?}");
    // the limiter learnt the limit from the headers: the bucket that
    // starts full and the refill carried the build, hardly any refusal
    assert!(
        quota_429 * 20 <= answers.len(),
        "{quota_429} of {} answers were 429 for the quota",
        answers.len()
    );
    assert_eq!(answers.len(), N + quota_429 + injected);
    // a second build makes no request
    p.mkt_env(&["build"], &[("MKT_TEST_LLMOCK_KEY", &key)])
        .success()
        .summary(&format!("0 ran, 0 cached, {N} up to date"));
    assert_eq!(self::answers(&url, &model).len(), answers.len());
}

#[test]
fn an_openai_build_paces_itself_through_the_rate_limit_and_injected_errors() {
    build_through_the_limit("openai", "/v1", "");
}

#[test]
fn an_anthropic_build_paces_itself_through_the_rate_limit_and_injected_errors() {
    build_through_the_limit("anthropic", "/anthropic/v1", "max_tokens = 64\n");
}
