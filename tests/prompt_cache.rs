//! Prompt caching against the fake API (`support/fake_api.rs`): what is
//! sent for `prompt_cache = "system"` and `{# mkt:cache #}` lines, the
//! first request of each shared prefix alone and the rest after it, cache
//! reads and writes in the manifests, the cost and the saving in the
//! summary, and caching hints that never re-run a target.

mod support;

use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::fake_api::{FakeApi, Recorded, Reply};
use support::{Project, project};

const TEMPLATE: &str = "system:\nBe brief.\nuser:\nReference: {{ inputs.doc }}\n{# mkt:cache #}\nQuestion: what is it?\n";

fn one_target(api: &FakeApi, provider: &str, extra: &str) -> Project {
    let model = match provider {
        "anthropic" => "model = \"claude-test\"\nmax_tokens = 64",
        _ => "model = \"gpt-test\"",
    };
    project()
        .file(
            "prompts.toml",
            format!(
                "[targets.a]\ntemplate = \"t.md\"\ninputs = {{ doc = \"doc.txt\" }}\noutput = \"out/a.md\"\nmodel = \"m\"\n\n\
                 [models.m]\nprovider = \"{provider}\"\n{model}\nbase_url = \"{}\"\napi_key_env = \"\"\n{extra}",
                api.base_url()
            ),
        )
        .file("t.md", TEMPLATE)
        .file("doc.txt", "caching")
        .build()
}

/// OpenAI's `prompt_cache_key` for a prefix of these messages (`exec/cache.rs`).
fn openai_key(model: &str, prefix: serde_json::Value) -> String {
    let v = json!({"provider": "openai", "model": model, "prefix": prefix});
    format!(
        "mkt-{}",
        &blake3::hash(v.to_string().as_bytes()).to_hex()[..32]
    )
}

#[test]
fn a_template_marker_is_a_breakpoint_for_both_providers() {
    let api = FakeApi::start(|r: &Recorded, _| {
        if r.path.ends_with("/messages") {
            Reply::anthropic("A.", 10, 2, 0).cache_write(0)
        } else {
            Reply::openai("A.", 10, 2, 0)
        }
    });
    let p = one_target(&api, "anthropic", "prompt_cache_ttl = \"1h\"\n");
    p.mkt(&["build"]).success();
    assert_eq!(
        api.requests()[0].json(),
        json!({
            "model": "claude-test",
            "max_tokens": 64,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Reference: caching\n",
                 "cache_control": {"type": "ephemeral", "ttl": "1h"}},
                {"type": "text", "text": "Question: what is it?"}
            ]}]
        })
    );
    // with the system messages cached too: a block of its own
    p.append("prompts.toml", "prompt_cache = \"system\"\n");
    p.mkt(&["build", "--force"]).success();
    assert_eq!(
        api.requests()[1].json()["system"],
        json!([{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}])
    );

    let p = one_target(&api, "openai", "");
    p.mkt(&["build"]).success();
    let key = openai_key(
        "gpt-test",
        json!([["system", "Be brief."], ["user", "Reference: caching\n"]]),
    );
    assert_eq!(
        api.requests()[2].json(),
        json!({
            "model": "gpt-test",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Reference: caching\nQuestion: what is it?"}
            ],
            "prompt_cache_key": key
        })
    );
    p.append("prompts.toml", "prompt_cache = \"system\"\n");
    p.mkt(&["build", "--force"]).success();
    let key = openai_key("gpt-test", json!([["system", "Be brief."]]));
    assert_eq!(api.requests()[3].json()["prompt_cache_key"], key);
}

/// Neither the setting nor the marker is part of the InputBundleHash or
/// the prompt digest: adding them runs nothing again.
#[test]
fn caching_hints_never_rerun_a_target() {
    let api = FakeApi::start(|_, _| Reply::openai("A.", 10, 2, 0));
    let p = one_target(&api, "openai", "");
    p.write("t.md", TEMPLATE.replace("{# mkt:cache #}\n", ""));
    p.mkt(&["build"]).success();
    let digest = |p: &Project| {
        let m: serde_json::Value = serde_json::from_slice(&p.store_entries()[0].payload).unwrap();
        m["prompt_digest"].clone()
    };
    let before = digest(&p);
    p.append("prompts.toml", "prompt_cache = \"system\"\n");
    p.mkt(&["build"])
        .success()
        .summary("0 ran, 0 cached, 1 up to date");
    // the template changed, so it is compiled again: to the same prompt
    p.write("t.md", TEMPLATE);
    p.mkt(&["build"])
        .success()
        .cached(&["a (template `t.md` changed)"])
        .summary("0 ran, 1 cached, 0 up to date; cache saved 12 tokens");
    assert_eq!(api.requests().len(), 1);
    assert_eq!(p.store_entries().len(), 1);
    assert_eq!(digest(&p), before);
}

/// What the fake API knows of each prefix: when its first answer is sent.
#[derive(Default)]
struct Prefixes {
    answered_at: HashMap<String, Instant>,
    /// Requests that arrived before their prefix's first answer.
    raced: usize,
}

const PREFIX_TOKENS: u64 = 2000;
const FIRST_DELAY: Duration = Duration::from_millis(150);

/// Answers like Anthropic's prompt cache: a request whose cached system
/// block was answered before reads it; the first, or one that arrives
/// while the first is still being answered, writes it.
fn caching_api(prefixes: &Arc<Mutex<Prefixes>>) -> FakeApi {
    let prefixes = Arc::clone(prefixes);
    FakeApi::start(move |r, _| {
        let body = r.json();
        let block = &body["system"][0];
        assert_eq!(
            block["cache_control"],
            json!({"type": "ephemeral"}),
            "{body}"
        );
        let key = block["text"].as_str().unwrap().to_string();
        let mut p = prefixes.lock().unwrap();
        let now = Instant::now();
        match p.answered_at.get(&key) {
            Some(&at) if at <= now => Reply::anthropic("ok", 20, 10, PREFIX_TOKENS),
            Some(_) => {
                p.raced += 1;
                Reply::anthropic("ok", 20, 10, 0).cache_write(PREFIX_TOKENS)
            }
            None => {
                p.answered_at.insert(key, now + FIRST_DELAY);
                Reply::anthropic("ok", 20, 10, 0)
                    .cache_write(PREFIX_TOKENS)
                    .delay_ms(FIRST_DELAY.as_millis() as u64)
            }
        }
    })
}

/// Two `foreach` targets of 100 documents each, each with its own system
/// prompt of about 2,000 tokens, on a model with `prompt_cache = "system"`.
fn two_prefixes(api: &FakeApi) -> Project {
    let mut b = project().file(
        "prompts.toml",
        format!(
            "[targets.a]\nforeach = \"docs/*.txt\"\ntemplate = \"a.md\"\noutput = \"out/a/{{stem}}.md\"\nmodel = \"c\"\n\
             [targets.b]\nforeach = \"docs/*.txt\"\ntemplate = \"b.md\"\noutput = \"out/b/{{stem}}.md\"\nmodel = \"c\"\n\
             [models.c]\nprovider = \"anthropic\"\nmodel = \"claude-test\"\nmax_tokens = 64\nbase_url = \"{}\"\n\
             api_key_env = \"\"\nprompt_cache = \"system\"\nprice_input_per_mtok = 3.0\nprice_output_per_mtok = 15.0\n",
            api.base_url()
        ),
    );
    for (name, rule) in [("a", "Summarize"), ("b", "Translate")] {
        let rules: String = (0..400).map(|i| format!("{rule} rule {i}. ")).collect();
        b = b.file(
            &format!("{name}.md"),
            format!("system:\n{rules}\nuser:\n{{{{ item.content }}}}\n"),
        );
    }
    for i in 0..100 {
        b = b.file(&format!("docs/{i:03}.txt"), format!("doc {i}\n"));
    }
    b.build()
}

#[test]
fn two_hundred_targets_read_the_prefix_the_first_of_each_wrote() {
    let prefixes = Arc::new(Mutex::new(Prefixes::default()));
    let api = caching_api(&prefixes);
    let p = two_prefixes(&api);
    // each call: 20 uncached and 2,000 cached input tokens, 10 output
    // tokens; the 2 first calls write the cache (at 1.25 × $3 / Mtok), the
    // 198 others read it (at 0.1 × $3 / Mtok):
    //   spent: 200 × 2,030 tokens; 2 × $0.00771 + 198 × $0.00081
    //   saved: 396,000 × $2.7 / Mtok − 4,000 × $0.75 / Mtok = $1.0662
    let run = p.mkt(&["build", "-j", "16"]);
    run.success().summary(
        "200 ran, 0 cached, 0 up to date; spent 406000 tokens, $0.1758; \
         prompt cache read 396000 tokens, wrote 4000, saved $1.07",
    );
    let reqs = api.requests();
    assert_eq!(reqs.len(), 200);
    assert_eq!(
        prefixes.lock().unwrap().raced,
        0,
        "no request raced the first of its prefix"
    );
    // per prefix one write, 99 reads
    let manifests: Vec<serde_json::Value> = (p.store_entries().into_iter())
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    assert_eq!(manifests.len(), 200);
    for target in ["a[", "b["] {
        let of: Vec<&serde_json::Value> = (manifests.iter())
            .filter(|m| m["target"].as_str().unwrap().starts_with(target))
            .map(|m| &m["usage"])
            .collect();
        assert_eq!(of.len(), 100);
        let writes = of
            .iter()
            .filter(|u| u["cache_write_tokens"] == 2000)
            .count();
        let reads = of.iter().filter(|u| u["cached_tokens"] == 2000).count();
        assert_eq!((writes, reads), (1, 99), "{target}");
        assert!(of.iter().all(|u| u["input_tokens"] == 2020));
    }
}

/// Without `prompt_cache`, nothing waits: the requests of a shared system
/// prompt go as they come (the build before caching, unchanged).
#[test]
fn without_prompt_cache_no_request_waits() {
    let api = FakeApi::start(|_, _| Reply::openai("ok", 20, 10, 0).delay_ms(100));
    let mut b = project().file(
        "prompts.toml",
        format!(
            "[targets.t]\nforeach = \"docs/*.txt\"\ntemplate = \"t.md\"\noutput = \"out/{{stem}}.md\"\nmodel = \"m\"\n\
             [models.m]\nprovider = \"openai\"\nmodel = \"gpt-test\"\nbase_url = \"{}\"\napi_key_env = \"\"\n",
            api.base_url()
        ),
    );
    b = b.file(
        "t.md",
        "system:\nThe same rules.\nuser:\n{{ item.content }}\n",
    );
    for i in 0..8 {
        b = b.file(&format!("docs/{i}.txt"), format!("doc {i}\n"));
    }
    let p = b.build();
    p.mkt(&["build", "-j", "8"]).success();
    assert_eq!(api.max_in_flight(), 8);
    assert!(
        api.requests()
            .iter()
            .all(|r| r.json().get("prompt_cache_key").is_none())
    );
}

#[test]
fn a_prefix_the_provider_did_not_cache_is_reported_once() {
    let api = FakeApi::start(|_, _| Reply::anthropic("ok", 30, 5, 0));
    let mut b = project().file(
        "prompts.toml",
        format!(
            "[targets.t]\nforeach = \"docs/*.txt\"\ntemplate = \"t.md\"\noutput = \"out/{{stem}}.md\"\nmodel = \"c\"\n\
             [models.c]\nprovider = \"anthropic\"\nmodel = \"claude-test\"\nmax_tokens = 64\nbase_url = \"{}\"\n\
             api_key_env = \"\"\nprompt_cache = \"system\"\n",
            api.base_url()
        ),
    );
    b = b.file("t.md", "system:\nShort rules.\nuser:\n{{ item.content }}\n");
    for i in 0..3 {
        b = b.file(&format!("docs/{i}.txt"), format!("doc {i}\n"));
    }
    let p = b.build();
    p.mkt(&["build", "-q"]).success().stderr_eq(
        "warning: model `c`: a prompt prefix marked for caching was neither written to nor read from the provider's cache; \
         it is likely shorter than the model's minimum (1,024 tokens for most models)\n\
         help: mark a longer prefix (a later `{# mkt:cache #}` line, more in the system messages), or remove `prompt_cache`\n",
    );
}
