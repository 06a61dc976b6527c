//! Model drift, against the fake API (`support/fake_api.rs`) and llmock:
//! an alias answered by another snapshot than the one that made the
//! outputs is reported once per build, `mkt status --drift` lists the
//! outputs the other snapshots made, and `pin = true` makes the change an
//! error.

mod support;

use std::sync::{Arc, Mutex};
use support::fake_api::{FakeApi, Reply};
use support::{Project, project};

const OLD: &str = "gpt-4o-mini-2024-05-13";
const NEW: &str = "gpt-4o-mini-2024-07-18";

/// A fake OpenAI API whose answers name the snapshot `snapshot` holds.
fn api(snapshot: &Arc<Mutex<String>>) -> FakeApi {
    let snapshot = Arc::clone(snapshot);
    FakeApi::start(move |_, _| {
        let s = snapshot.lock().unwrap().clone();
        Reply::openai("Summary.", 100, 10, 0)
            .answered_by(&s)
            .fingerprint(&format!("fp_{}", &s[s.len() - 2..]))
    })
}

/// `n` targets `t[docs/NN.txt]` on model `gpt` (alias `gpt-4o-mini`).
fn pipeline(api: &FakeApi, n: usize, extra: &str) -> Project {
    let mut b = project()
        .file(
            "prompts.toml",
            format!(
                "[targets.t]\nforeach = \"docs/*.txt\"\ntemplate = \"t.md\"\noutput = \"out/{{stem}}.md\"\nmodel = \"gpt\"\n\n\
                 [models.gpt]\nprovider = \"openai\"\nmodel = \"gpt-4o-mini\"\nbase_url = \"{}\"\napi_key_env = \"\"\n{extra}",
                api.base_url()
            ),
        )
        .file("t.md", "user:\n{{ item.content }}\n");
    for i in 0..n {
        b = b.file(&format!("docs/{i:02}.txt"), format!("doc {i}\n"));
    }
    b.build()
}

fn manifests(p: &Project) -> Vec<serde_json::Value> {
    p.store_entries()
        .into_iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect()
}

#[test]
fn a_new_snapshot_is_reported_once_and_status_lists_the_older_outputs() {
    let snapshot = Arc::new(Mutex::new(OLD.to_string()));
    let api = api(&snapshot);
    let p = pipeline(&api, 4, "");
    p.mkt(&["build"])
        .success()
        .summary("4 ran, 0 cached, 0 up to date; spent 440 tokens")
        .stderr_lacks("warning");
    // every manifest names the snapshot and the fingerprint
    for m in manifests(&p) {
        assert_eq!(m["answered_by"], OLD, "{m}");
        assert_eq!(m["system_fingerprint"], "fp_13", "{m}");
    }
    p.mkt(&["status", "--drift"])
        .success()
        .stdout_eq("")
        .stderr_eq("every output was made by the newest snapshot seen for its model\n");

    // the provider moves the alias; two documents change
    *snapshot.lock().unwrap() = NEW.to_string();
    p.write("docs/00.txt", "doc 0, edited\n");
    p.write("docs/01.txt", "doc 1, edited\n");
    p.mkt(&["build", "-q"]).success().stderr_eq(&format!(
        "warning: model `gpt` answers as `{NEW}` now; 2 outputs were made by `{OLD}`\n\
         help: `mkt status --drift` lists them; `pin = true` on the model makes a change of snapshot an error\n"
    ));
    p.mkt(&["status", "--drift"])
        .code(1)
        .stdout_eq(&format!(
            "t[docs/02.txt]  made by `{OLD}`; model `gpt` answers as `{NEW}`\n\
             t[docs/03.txt]  made by `{OLD}`; model `gpt` answers as `{NEW}`\n"
        ))
        .stderr_eq("2 outputs were made by other snapshots than the newest of their model\n");
    let json = p.mkt(&["status", "--drift", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["schema"], "mkt.drift/1");
    assert_eq!(v["drifted"][0]["target"], "t[docs/02.txt]");
    assert_eq!(v["drifted"][0]["made_by"], OLD);
    assert_eq!(v["drifted"][0]["newest"], NEW);

    // nothing changed: nothing runs, nothing is said
    p.mkt(&["build"])
        .success()
        .summary("0 ran, 0 cached, 4 up to date")
        .stderr_lacks("warning");
    // one more answer from the new snapshot: one older output is left
    p.write("docs/02.txt", "doc 2, edited\n");
    p.mkt(&["build", "-q"]).success().stderr_eq(&format!(
        "warning: model `gpt` answers as `{NEW}` now; 1 output was made by `{OLD}`\n\
         help: `mkt status --drift` lists them; `pin = true` on the model makes a change of snapshot an error\n"
    ));
    p.write("docs/03.txt", "doc 3, edited\n");
    p.mkt(&["build"])
        .success()
        .summary("1 ran, 0 cached, 3 up to date; spent 110 tokens")
        .stderr_lacks("warning");
    p.mkt(&["status", "--drift"]).success().stdout_eq("");
}

#[test]
fn a_pinned_model_fails_the_targets_its_new_snapshot_answers() {
    let snapshot = Arc::new(Mutex::new(OLD.to_string()));
    let api = api(&snapshot);
    let p = pipeline(&api, 2, "pin = true\n");
    p.mkt(&["build"]).success();
    let before = p.read("out/00.md");
    *snapshot.lock().unwrap() = NEW.to_string();
    p.write("docs/00.txt", "doc 0, edited\n");
    let error = format!(
        "error: `t[docs/00.txt]` failed (foreach file `docs/00.txt` changed):\n  \
         model `gpt` is pinned to `{OLD}`, which made its outputs, but answered as `{NEW}`; the answer was not stored\n  \
         help: to move to `{NEW}`, remove `pin = true` from `[models.gpt]` and build again; to stay on `{OLD}`, set `model = \"{OLD}\"` if the provider still serves it\n"
    );
    let run = p.mkt(&["build", "-q"]);
    run.code(1).stderr_eq(&format!(
        "{error}0 ran, 0 cached, 1 up to date, 1 failed; spent 110 tokens\n"
    ));
    // the old output stays, and nothing of the answer is stored as output
    assert_eq!(p.read("out/00.md"), before);
    assert_eq!(manifests(&p).len(), 2);
    // the failed run's manifest names the snapshot that answered
    let failed: Vec<serde_json::Value> = std::fs::read_dir(p.path(".mkt/runs"))
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["answered_by"], NEW);
    assert_eq!(failed[0]["status"], "failed");
    // a new target of the pinned model is held to the model's snapshot too
    p.write("docs/02.txt", "doc 2\n");
    let run = p.mkt(&["build", "-q", "--keep-going"]);
    run.code(1);
    assert_eq!(
        run.stderr
            .matches("is pinned to `gpt-4o-mini-2024-05-13`")
            .count(),
        2,
        "{}",
        run.stderr
    );
    // unpinned, the new snapshot's answers are kept, and the change said
    p.replace("prompts.toml", "pin = true\n", "");
    p.mkt(&["build"])
        .success()
        .summary("2 ran, 0 cached, 1 up to date; spent 220 tokens")
        .stderr_contains(&format!(
            "warning: model `gpt` answers as `{NEW}` now; 1 output was made by `{OLD}`\n"
        ));
}

#[test]
fn editing_pin_alone_reruns_nothing() {
    let snapshot = Arc::new(Mutex::new(OLD.to_string()));
    let api = api(&snapshot);
    let p = pipeline(&api, 2, "");
    p.mkt(&["build"]).success();
    p.append("prompts.toml", "pin = true\n");
    p.mkt(&["build"])
        .success()
        .summary("0 ran, 0 cached, 2 up to date");
    assert_eq!(api.requests().len(), 2);
}

/// llmock answers with the model it was asked for: a target whose
/// `params` ask for a dated snapshot is answered by it, and the build says
/// that model `m` answers as another snapshot than the one that made the
/// other output.
#[test]
fn llmock_names_the_model_that_answered() {
    let Some(url) = support::llmock::url("model drift") else {
        return;
    };
    let toml = |b_params: &str| {
        format!(
            "[targets.a]\ntemplate = \"t.md\"\noutput = \"out/a.md\"\nmodel = \"m\"\n\
             [targets.b]\ntemplate = \"u.md\"\noutput = \"out/b.md\"\nmodel = \"m\"\n{b_params}\
             [models.m]\nprovider = \"openai\"\nmodel = \"gpt-4o-mini\"\nbase_url = \"{url}/v1\"\n\
             api_key_env = \"MKT_TEST_LLMOCK_KEY\"\n"
        )
    };
    let p = project()
        .file("prompts.toml", toml(""))
        .file("t.md", "Say hello.\n")
        .file("u.md", "Say goodbye.\n")
        .build();
    let env = [("MKT_TEST_LLMOCK_KEY", "drift-test-key")];
    p.mkt_env(&["build"], &env)
        .success()
        .stderr_lacks("warning");
    for m in manifests(&p) {
        assert_eq!(m["answered_by"], "gpt-4o-mini", "{m}");
    }
    p.write(
        "prompts.toml",
        toml(&format!("params = {{ model = \"{NEW}\" }}\n")),
    );
    p.mkt_env(&["build", "-q"], &env).success().stderr_eq(&format!(
        "warning: model `m` answers as `{NEW}` now; 1 output was made by `gpt-4o-mini`\n\
         help: `mkt status --drift` lists them; `pin = true` on the model makes a change of snapshot an error\n"
    ));
    p.mkt(&["status", "--drift"]).code(1).stdout_eq(&format!(
        "a  made by `gpt-4o-mini`; model `m` answers as `{NEW}`\n"
    ));
}
