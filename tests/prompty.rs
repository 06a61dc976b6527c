//! `.prompty` files as templates, on Prompty's own published examples
//! (`fixtures/prompty/`, see its README.md) and small files written here.

mod support;

use serde_json::{Value, json};
use support::{Project, project};

fn manifest(p: &Project, spec: &str) -> Value {
    let run = p.mkt(&["show", spec, "--manifest"]);
    run.success();
    serde_json::from_str(&run.stdout).expect("the manifest is JSON")
}

/// A project with one target on `t.prompty`, whose text is `prompty`.
fn one_prompty(prompty: &str, target_extra: &str) -> Project {
    project()
        .file(
            "prompts.toml",
            format!("[targets.t]\ntemplate = \"t.prompty\"\noutput = \"out/t.md\"\n{target_extra}"),
        )
        .file("t.prompty", prompty)
        .file("q.txt", "Why build prompts?\n")
        .build()
}

#[test]
fn published_examples_build_on_the_mock_with_their_parameters() {
    let p = project().fixture("prompty").build();
    p.mkt(&["build"])
        .success()
        .ran(&["shakespeare (never built)", "basic (never built)"])
        .summary("2 ran, 0 cached, 0 up to date");
    // v2: inputs with defaults, `model.options` as mkt's settings
    p.mkt(&["show", "basic", "--prompt"]).success().stdout_eq(
        "--- system\n\
         You are an AI assistant who helps people find information.\n\
         \n\
         # Customer\n\
         You are helping Jane Doe to find answers to their questions.\n\
         \n\
         --- user\n\
         What is the meaning of life?\n",
    );
    assert_eq!(
        manifest(&p, "basic")["model"],
        json!({"name": "default", "provider": "mock",
               "params": {"max_tokens": 1000, "temperature": 0.7}})
    );
    // v1: `model.parameters`; `{{question}}`, declared nowhere in the
    // file, is the target's input; `configuration` (with its
    // `${env:...}`) is not mkt's concern
    assert_eq!(
        manifest(&p, "shakespeare")["model"]["params"],
        json!({"max_tokens": 3000})
    );
    let out = p.read("out/shakespeare.md");
    assert!(
        out.ends_with("\nPlease write a short text inviting friends to a Game Night.\n"),
        "{out}"
    );
    assert!(out.contains("| 2 message(s)]"), "{out}");
    p.mkt(&["build"])
        .success()
        .summary("0 ran, 0 cached, 2 up to date");
}

#[test]
fn editing_a_parameter_reruns_the_target_and_editing_the_description_does_not() {
    let p = project().fixture("prompty").build();
    p.mkt(&["build"]).success();
    let first = manifest(&p, "basic")["input_bundle_hash"].clone();

    p.replace(
        "prompts/basic.prompty",
        "temperature: 0.7",
        "temperature: 0.2",
    );
    p.mkt(&["status"])
        .code(1)
        .stdout_eq("basic  template `prompts/basic.prompty` changed\n");
    let explain = p.mkt(&["explain", "basic"]);
    explain.success();
    assert!(
        explain
            .stdout
            .contains("  model parameter `temperature`: 0.7 -> 0.2\n"),
        "{}",
        explain.stdout
    );
    p.mkt(&["build"])
        .success()
        .ran(&["basic (template `prompts/basic.prompty` changed)"])
        .summary("1 ran, 0 cached, 1 up to date");
    let second = manifest(&p, "basic");
    assert_ne!(second["input_bundle_hash"], first);
    assert_eq!(second["model"]["params"]["temperature"], json!(0.2));

    // The description (like `name`, `metadata`, `sample`) is not sent to
    // the model: the prompt and the parameters are what they were, so the
    // InputBundleHash is too and the stored result is reused, no call.
    p.replace(
        "prompts/basic.prompty",
        "description: A basic prompt for testing",
        "description: Answers the customer's question",
    );
    p.mkt(&["build"])
        .success()
        .cached(&["basic (template `prompts/basic.prompty` changed)"])
        .summary("0 ran, 1 cached, 1 up to date");
    assert_eq!(
        manifest(&p, "basic")["input_bundle_hash"],
        second["input_bundle_hash"]
    );
}

#[test]
fn a_bare_name_input_is_bound_from_the_target_and_its_file_is_a_dependency() {
    let p = project()
        .fixture("prompty")
        .file("ask.txt", "What does mkt cache?")
        .build();
    p.replace(
        "prompts.toml",
        "template = \"prompts/basic.prompty\"\n",
        "template = \"prompts/basic.prompty\"\ninputs = { question = \"ask.txt\", lastName = \"ask.txt\" }\n",
    );
    p.mkt(&["build", "basic"]).success();
    let prompt = p.mkt(&["show", "basic", "--prompt"]);
    // `question` and `lastName` are bound; `firstName` keeps its default
    assert!(
        prompt
            .stdout
            .contains("You are helping Jane What does mkt cache? to find answers")
            && prompt.stdout.ends_with("--- user\nWhat does mkt cache?\n"),
        "{}",
        prompt.stdout
    );
    p.write("ask.txt", "And what not?");
    p.mkt(&["build", "basic"])
        .success()
        .ran(&["basic (input `ask.txt` changed)"]);
}

#[test]
fn front_matter_errors_name_the_file_and_line() {
    // a published example whose parameters mkt does not all send
    let p = project().fixture("prompty").build();
    p.append(
        "prompts.toml",
        "\n[targets.params]\ntemplate = \"prompts/basic_model_parameters.prompty\"\noutput = \"out/params.md\"\n",
    );
    p.mkt(&["build"]).code(2).stderr_eq(
        "error: prompts/basic_model_parameters.prompty:12:1: `logprobs` in `model.parameters` is not a model parameter mkt sends\n  \
         help: mkt sends `temperature`, `max_tokens`, `top_p`, `stop` and `seed` (in `model.options`: `maxOutputTokens`, `topP`, `stopSequences`); remove `logprobs`\n",
    );

    let p = one_prompty(
        "---\nname: t\nmodel:\n  parameters:\n    max_tokens: lots\n---\nhi\n",
        "",
    );
    p.mkt(&["build"]).code(2).stderr_eq(
        "error: t.prompty:5:1: `max_tokens` must be a whole number of at least 1, not `lots`\n  \
         help: e.g. `temperature: 0.2`, `max_tokens: 256`, `stop: [\"END\"]`\n",
    );

    let p = one_prompty(
        "---\nname: t\ninputs:\n  question:\n    type: string\n---\n{{question}}\n",
        "",
    );
    p.mkt(&["build"]).code(2).stderr_eq(
        "error: t.prompty:4:1: input `question` has no `default`, and target `t` binds no input of that name\n  \
         help: add `question = \"path\"` to `inputs` of `[targets.t]` in `prompts.toml`, or give `question` a `default`\n",
    );

    let p = one_prompty(
        "---\nname: t\n---\nsystem:\nbrief\nuser:\n{{ question }}\n",
        "",
    );
    p.mkt(&["build"]).code(2).stderr_eq(
        "error: t.prompty:7:1: `question` is neither an input of target `t` nor declared under `inputs` in the front matter\n  \
         help: add `question = \"path\"` to `inputs` of `[targets.t]` in `prompts.toml`, or declare `question` under `inputs` with a `default`\n",
    );

    let p = one_prompty("---\nname: t\ndescription: \"unclosed\n---\nhi\n", "");
    p.mkt(&["build"]).code(2).stderr_eq(
        "error: t.prompty:3:1: the front matter is not valid YAML: while scanning a quoted scalar, found unexpected end of stream\n  \
         help: the front matter is YAML between two `---` lines\n",
    );

    // a parameter the target's provider does not have
    let p = project()
        .file(
            "prompts.toml",
            "[models.claude]\nprovider = \"anthropic\"\nmodel = \"claude-sonnet-4-5\"\nmax_tokens = 512\n\n\
             [targets.t]\ntemplate = \"t.prompty\"\nmodel = \"claude\"\noutput = \"out/t.md\"\n",
        )
        .file("t.prompty", "---\nmodel:\n  parameters:\n    seed: 7\n---\nhi\n")
        .build();
    p.mkt(&["build"]).code(2).stderr_eq(
        "error: t.prompty:4:1: `seed` is not a setting of the `anthropic` provider (model `claude` of target `t`)\n  \
         help: remove `seed` from the front matter, or run the target on a model that has it\n",
    );
}

#[test]
fn a_prompty_body_is_analysed_like_any_template() {
    // `targets.NAME` orders the build; `inputs.NAME` must be declared
    let p = one_prompty(
        "---\nname: t\n---\nuser:\n{{ targets.up }} / {{ q }}\n",
        "inputs = { q = \"q.txt\" }\n\n[targets.up]\ntemplate = \"up.md\"\noutput = \"out/up.md\"\n",
    );
    p.write("up.md", "upstream\n");
    p.mkt(&["build"])
        .success()
        .ran(&["up (never built)", "t (never built)"]);
    let out = p.read("out/t.md");
    assert!(out.contains("upstream\n / Why build prompts?"), "{out}");
    p.write(
        "t.prompty",
        "---\nname: t\n---\nuser:\n\n{{ inputs.nope }}\n",
    );
    p.mkt(&["build"]).code(2).stderr_eq(
        "error: t.prompty:6:1: `inputs.nope` is not declared for target `t`\n  \
         help: add `nope = \"path\"` to `inputs` of `[targets.t]` in `prompts.toml`\n",
    );
    p.write("t.prompty", "---\nname: t\n---\nuser:\n{% if x %}\n");
    // a syntax error in the body: the file's line, not the body's
    p.mkt(&["build"])
        .code(2)
        .stderr_contains("error: t.prompty:5:9: syntax error: unexpected end of input");
}
