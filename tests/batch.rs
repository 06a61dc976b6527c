//! Batch builds against a real API simulator: llmock (PyPI, 0.2.2), which
//! `.ci/servers` starts and names in `MKT_TEST_LLMOCK_URL`. It serves the
//! OpenAI files and batches API under `/v1` and Anthropic's message
//! batches under `/anthropic/v1`, and ends a batch about 3 s after it is
//! created. Without the server these tests print a skip message, unless
//! `MKT_REQUIRE_SERVERS` is set (as in CI): then they fail.

mod support;

use support::llmock::{journal, unique};
use support::{Project, project};

/// The tests here count llmock's batch requests in its journal, which
/// does not say which test sent them: they run one at a time.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Chat calls made for `model` (ordinary calls, not batch requests).
fn ordinary_calls(url: &str, model: &str) -> usize {
    journal(url)
        .iter()
        // answered: llmock injects errors, which mkt retries
        .filter(|r| r["model"] == model && r["status"] == 200)
        .filter(|r| {
            let p = r["path"].as_str().unwrap_or("");
            p.ends_with("/chat/completions") || p.ends_with("/messages")
        })
        .count()
}

/// Three documents summarised one by one, then a digest of the summaries:
/// two layers, so the second is submitted only once the first is back.
fn two_layers(provider: &str, base: &str, model: &str, extra: &str) -> Project {
    project()
        .file(
            "prompts.toml",
            format!(
                "[models.m]\nprovider = \"{provider}\"\nmodel = \"{model}\"\nbase_url = \"{base}\"\n\
                 api_key_env = \"\"\nmax_tokens = 200\n\
                 price_input_per_mtok = 2.0\nprice_output_per_mtok = 8.0\n{extra}\n\
                 [targets.notes]\ntemplate = \"t.md\"\nforeach = \"docs/*.txt\"\n\
                 output = \"out/{{stem}}.md\"\nmodel = \"m\"\n\n\
                 [targets.digest]\ntemplate = \"d.md\"\noutput = \"digest.md\"\nmodel = \"m\"\n"
            ),
        )
        .file("t.md", "user:\nsummarise {{ item.content }}")
        .file(
            "d.md",
            "user:\n{% for n in targets.notes %}{{ n.content }}\n{% endfor %}",
        )
        .file("docs/a.txt", "apples")
        .file("docs/b.txt", "bees")
        .file("docs/c.txt", "cider")
        .build()
}

/// A test's share of llmock: the one-at-a-time guard, the server, a
/// model id of its own, and the two-layer project for `provider` there.
struct At {
    _serial: std::sync::MutexGuard<'static, ()>,
    url: String,
    model: String,
    p: Project,
}

/// [`At`] for `provider` (`openai` or `anthropic`, each at its path), with
/// `extra` model settings; `None` (the test skips) without llmock.
fn at_llmock(provider: &str, extra: &str) -> Option<At> {
    let _serial = one_at_a_time();
    let url = support::llmock::url("batch")?;
    let model = unique(provider);
    let path = if provider == "anthropic" {
        "/anthropic/v1"
    } else {
        "/v1"
    };
    let p = two_layers(provider, &format!("{url}{path}"), &model, extra);
    Some(At {
        _serial,
        url,
        model,
        p,
    })
}

fn mkt(p: &Project, args: &[&str]) -> support::Run {
    p.mkt(args)
}

fn builds_two_layers_through_batches(provider: &str) {
    let Some(At {
        _serial,
        url,
        model,
        p,
    }) = at_llmock(provider, "")
    else {
        return;
    };
    let run = mkt(&p, &["build", "--batch"]);
    run.success()
        .stderr_contains("submitted batch ")
        .stderr_contains(": 3 requests to model `m`\n")
        .stderr_contains(": 1 request to model `m`\n")
        .stderr_contains("0 ran, 0 cached, 0 up to date, 3 pending in batches, 1 waiting for them")
        .stderr_contains("waiting for the batches");
    let err = run.stderr_normalized();
    assert!(
        err.contains("ran notes[docs/a.txt] (never built) from batch "),
        "{err}"
    );
    assert!(
        err.contains("ran digest (never built) from batch "),
        "{err}"
    );
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("4 ran, 0 cached, 0 up to date; spent "),
        "{last}"
    );
    assert!(last.contains("; batch saved $"), "{last}");
    assert_eq!(p.read("out/a.md"), "Hello! You said: summarise apples");
    assert!(p.read("digest.md").contains("summarise bees"));
    assert_eq!(
        ordinary_calls(&url, &model),
        0,
        "every answer came from a batch"
    );
    // the runs are on record as batch runs, and nothing is left to do
    let history = p.read(".mkt/history.jsonl");
    assert_eq!(history.matches("\"batch\":\"").count(), 4, "{history}");
    mkt(&p, &["build", "--batch"])
        .success()
        .stderr_contains("0 ran, 0 cached, 4 up to date");
    mkt(&p, &["batch", "status"])
        .success()
        .stdout_eq("no pending batches\n");
}

#[test]
fn a_two_layer_pipeline_builds_through_openai_batches() {
    builds_two_layers_through_batches("openai");
}

#[test]
fn a_two_layer_pipeline_builds_through_anthropic_message_batches() {
    builds_two_layers_through_batches("anthropic");
}

#[test]
fn a_detached_batch_is_collected_by_a_later_build_and_never_sent_twice() {
    let Some(At {
        _serial,
        url,
        model,
        p,
    }) = at_llmock("openai", "batch = true")
    else {
        return;
    };
    // `batch = true` on the model: no flag needed
    mkt(&p, &["build", "--detach"])
        .success()
        .stderr_contains(": 3 requests to model `m`\n")
        .stderr_contains("3 pending in batches, 1 waiting for them");
    assert!(!p.exists("out/a.md"));
    mkt(&p, &["status"])
        .code(1)
        .stdout_contains("notes[docs/a.txt]  pending in batch batch_");
    // what is pending was paid for when it was sent: only the digest is
    // estimated
    let run = mkt(&p, &["status", "--json"]);
    run.code(1);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let estimated: Vec<&str> = (v["targets"].as_array().unwrap().iter())
        .filter(|t| t.get("estimate").is_some())
        .map(|t| t["target"].as_str().unwrap())
        .collect();
    assert_eq!(estimated, ["digest"]);
    mkt(&p, &["batch", "status"])
        .success()
        .stdout_contains("(model `m`): ")
        .stdout_contains("; 3 requests, submitted ");
    // a build before the batch ended sends nothing new for what is pending
    mkt(&p, &["build", "--detach"])
        .success()
        .stderr_lacks("submitted batch")
        .stderr_contains("3 pending in batches, 1 waiting for them");
    assert_eq!(ordinary_calls(&url, &model), 0);
    // `--no-batch` does not send a pending request as an ordinary call
    // either: it waits, collects, then runs the digest as an ordinary call
    mkt(&p, &["build", "--no-batch"])
        .success()
        .stderr_contains("ran notes[docs/b.txt] (never built) from batch ")
        .stderr_contains("ran digest (never built)\n");
    assert_eq!(ordinary_calls(&url, &model), 1, "the digest alone");
    assert_eq!(p.read("out/c.md"), "Hello! You said: summarise cider");
}

#[test]
fn an_answer_for_a_target_edited_meanwhile_is_kept_for_its_prompt_only() {
    let Some(At { _serial, p, .. }) = at_llmock("openai", "") else {
        return;
    };
    mkt(&p, &["build", "--batch", "--detach", "notes"]).success();
    // edited after submission: the answer for "apples" is no use to it now
    p.write("docs/a.txt", "apricots");
    mkt(&p, &["build", "--batch", "notes"])
        .success()
        .stderr_contains("ran notes[docs/b.txt] (never built) from batch ");
    assert_eq!(p.read("out/a.md"), "Hello! You said: summarise apricots");
    // and going back to "apples" finds its answer in the store
    p.write("docs/a.txt", "apples");
    mkt(&p, &["build", "notes"])
        .success()
        .stderr_contains("cached notes[docs/a.txt]");
    assert_eq!(p.read("out/a.md"), "Hello! You said: summarise apples");
}

#[test]
fn a_cancelled_batch_frees_its_requests() {
    let Some(At { _serial, p, .. }) = at_llmock("anthropic", "") else {
        return;
    };
    mkt(&p, &["build", "--batch", "--detach", "notes"]).success();
    let run = mkt(&p, &["batch", "cancel"]);
    run.success().stdout_contains("cancelled batch msgbatch_");
    mkt(&p, &["status", "notes"])
        .code(1)
        .stdout_lacks("pending in batch");
    // the next build collects what the batch answered, or runs it anew
    mkt(&p, &["build", "--no-batch", "notes"]).success();
    assert_eq!(p.read("out/b.md"), "Hello! You said: summarise bees");
    mkt(&p, &["batch", "status"])
        .success()
        .stdout_eq("no pending batches\n");
}

/// The record of the one batch in the store, as JSON, and its path.
fn the_record(p: &Project) -> (std::path::PathBuf, serde_json::Value) {
    let dir = p.path(".mkt/batches");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let path = files.pop().unwrap();
    let v = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    (path, v)
}

/// Batches created at llmock for `model` (by the body's model of their
/// requests, which the journal does not show: counted by POST).
fn batch_posts(url: &str, since: usize) -> usize {
    journal(url)[since..]
        .iter()
        // (answered: llmock injects errors, which mkt retries)
        .filter(|r| r["method"] == "POST" && r["status"] == 200)
        .filter(|r| {
            let p = r["path"].as_str().unwrap_or("");
            p == "/v1/batches" || p == "/anthropic/v1/messages/batches"
        })
        .count()
}

#[test]
fn a_submission_cut_short_before_its_id_was_recorded_is_found_by_its_tag() {
    let Some(At {
        _serial, url, p, ..
    }) = at_llmock("openai", "")
    else {
        return;
    };
    mkt(&p, &["build", "--batch", "--detach", "notes"]).success();
    // as if killed between the provider's answer and the record's rewrite
    let (path, mut rec) = the_record(&p);
    let id = rec["batch_id"].as_str().unwrap().to_string();
    rec["batch_id"] = serde_json::Value::Null;
    std::fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();
    let before = journal(&url).len();
    mkt(&p, &["build", "--batch", "notes"])
        .success()
        .stderr_contains(&format!(
            "ran notes[docs/a.txt] (never built) from batch {id}"
        ));
    assert_eq!(batch_posts(&url, before), 0, "nothing was submitted again");
}

#[test]
fn a_cut_short_anthropic_submission_is_sent_again_with_a_warning() {
    let Some(At {
        _serial, url, p, ..
    }) = at_llmock("anthropic", "")
    else {
        return;
    };
    mkt(&p, &["build", "--batch", "--detach", "notes"]).success();
    let (path, mut rec) = the_record(&p);
    rec["batch_id"] = serde_json::Value::Null;
    let tag = rec["tag"].as_str().unwrap().to_string();
    std::fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();
    let before = journal(&url).len();
    mkt(&p, &["build", "--batch", "notes"])
        .success()
        .stderr_contains(&format!(
            "warning: a submission of 3 requests to model `m` at {} was cut short before the provider's batch id was recorded, \
             and the provider has no batch tagged `{tag}`: they will be sent again\n\
             help: should a batch of 3 requests show in the provider's console, cancel it there",
            rec["submitted_at"].as_str().unwrap()
        ));
    assert_eq!(batch_posts(&url, before), 1);
    assert_eq!(p.read("out/a.md"), "Hello! You said: summarise apples");
}

#[test]
fn gc_keeps_the_prompts_of_pending_requests() {
    let Some(At { _serial, p, .. }) = at_llmock("openai", "") else {
        return;
    };
    mkt(&p, &["build", "--batch", "--detach", "notes"]).success();
    mkt(&p, &["gc"]).success();
    mkt(&p, &["gc", "--all"])
        .success()
        .stderr_contains("kept `.mkt/batches/");
    mkt(&p, &["build", "--batch", "notes"])
        .success()
        .stderr_contains("ran notes[docs/c.txt] (never built) from batch ");
    mkt(&p, &["show", "notes[docs/c.txt]", "--prompt"]).success();
}

#[test]
fn two_builds_at_once_submit_each_request_once() {
    let Some(At {
        _serial,
        url,
        model,
        p,
    }) = at_llmock("openai", "")
    else {
        return;
    };
    let before = journal(&url).len();
    let first = p.spawn_mkt_piped(&["build", "--batch"]);
    let second = p.spawn_mkt_piped(&["build", "--batch"]);
    for child in [first, second] {
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
    }
    // one batch per layer, whichever build sent it
    assert_eq!(batch_posts(&url, before), 2);
    assert_eq!(ordinary_calls(&url, &model), 0);
    mkt(&p, &["build"])
        .success()
        .stderr_contains("0 ran, 0 cached, 4 up to date");
}

#[test]
fn a_batch_that_cannot_reach_the_provider_fails_its_targets_and_leaves_nothing_pending() {
    // a port nothing listens on: the connection is refused, so nothing
    // can have been submitted
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = two_layers("openai", &format!("http://127.0.0.1:{port}/v1"), "gpt", "");
    let run = mkt(&p, &["build", "--batch", "--detach", "notes"]);
    run.code(1)
        .stderr_contains("error: 3 requests to model `m` could not be submitted as a batch:\n  ")
        .stderr_contains("0 ran, 0 cached, 0 up to date, 3 failed");
    assert!(
        !p.exists(".mkt/batches")
            || std::fs::read_dir(p.path(".mkt/batches"))
                .unwrap()
                .next()
                .is_none()
    );
    mkt(&p, &["batch", "status"])
        .success()
        .stdout_eq("no pending batches\n");
}

#[test]
fn cancelling_a_batch_that_is_not_pending_says_so() {
    let p = two_layers("openai", "http://127.0.0.1:9/v1", "gpt", "");
    mkt(&p, &["batch", "cancel", "batch_nope"])
        .code(1)
        .stderr_eq(
            "error: no pending batch `batch_nope`\n  help: `mkt batch status` lists the pending batches\n",
        );
}
