//! Cost before running: the token and cost estimates of `mkt build
//! --dry-run` and `mkt status`, checked against what a fake OpenAI API on
//! 127.0.0.1 (`support/fake_api.rs`) then reports, and the cost cap
//! (`--max-cost`, `max_cost_usd`) refusing a build and stopping one.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use support::fake_api::{FakeApi, Recorded, Reply};
use support::{Project, project};

const ENV: &[(&str, &str)] = &[("MKT_TEST_KEY", "sk-test-estimate")];

const TEMPLATE: &str = "system:\nYou summarize documents for engineers.\nuser:\nSummarize in three sentences:\n\n{{ item.content }}\n";

/// Documents of different kinds of text (prose, code, German, Chinese,
/// numbers), each with the input tokens of its compiled prompt as OpenAI's
/// own tokenizer counts them, with the chat framing: `o200k_base`
/// (gpt-4o-mini) and `cl100k_base` (gpt-4). The counts are the output of
/// `bench/token_reference.py` (Python `tiktoken` 0.14) on the prompts of
/// these documents, not of mkt.
const DOCS: &[(&str, &str, u64, u64)] = &[
    (
        "prose",
        "A build system decides what to rebuild by comparing what a step consumed with what it would consume now. Markitect hashes every input of a prompt, the template, the partials and the model's parameters into one InputBundleHash, and calls the model only when that hash is new. Outputs that come out the same stop the rebuild early.\n",
        92,
        92,
    ),
    (
        "code",
        "fn main() {\n    let xs: Vec<u64> = (1..=10).map(|x| x * x).collect();\n    println!(\"{:?} sum={}\", xs, xs.iter().sum::<u64>());\n}\n",
        72,
        72,
    ),
    (
        "german",
        "Größere Änderungen an der Übersetzung müssen geprüft werden; die Straße bleibt gesperrt, bis die Brücke über den Fluss repariert ist.\n",
        56,
        65,
    ),
    (
        "chinese",
        "提示缓存可以让重复的前缀更便宜。模型漂移意味着同一个别名可能由不同的快照回答。\n",
        53,
        70,
    ),
    (
        "numbers",
        "date,requests,tokens,cost_usd\n2026-11-01,1204,3481920,0.5223\n2026-11-02,987,2811003,0.4217\n2026-11-03,1530,4410020,0.6615\n",
        89,
        89,
    ),
];

/// The reference input tokens of a request: its model's count of the
/// document its prompt holds.
fn reference_tokens(req: &Recorded) -> u64 {
    let body = req.json();
    let prompt = body["messages"][1]["content"].as_str().unwrap().to_string();
    let (_, _, o200k, cl100k) = DOCS
        .iter()
        .find(|(_, text, ..)| prompt.ends_with(text.trim_end()))
        .unwrap_or_else(|| panic!("no document in {prompt:?}"));
    match body["model"].as_str().unwrap() {
        "gpt-4o-mini" => *o200k,
        "gpt-4" => *cl100k,
        m => panic!("unexpected model {m}"),
    }
}

fn openai_model(api: &FakeApi, id: &str, extra: &str) -> String {
    format!(
        "provider = \"openai\"\nmodel = \"{id}\"\nbase_url = \"{}\"\napi_key_env = \"MKT_TEST_KEY\"\n{extra}",
        api.base_url()
    )
}

/// The documents under `docs/`, target `mini` on gpt-4o-mini and `four`
/// on gpt-4 (the `[models.NAME]` bodies given).
fn two_models(mini: &str, four: &str) -> Project {
    let mut b = project()
        .file(
            "prompts.toml",
            format!(
                "[targets.mini]\nforeach = \"docs/*.md\"\ntemplate = \"t.md\"\noutput = \"out/mini/{{stem}}.md\"\nmodel = \"mini\"\n\n\
                 [targets.four]\nforeach = \"docs/*.md\"\ntemplate = \"t.md\"\noutput = \"out/four/{{stem}}.md\"\nmodel = \"four\"\n\n\
                 [models.mini]\n{mini}\n[models.four]\n{four}"
            ),
        )
        .file("t.md", TEMPLATE);
    for (name, text, ..) in DOCS {
        b = b.file(&format!("docs/{name}.md"), text);
    }
    b.build()
}

/// Each target's `estimate` in `mkt status --json`.
fn estimates(p: &Project) -> BTreeMap<String, Value> {
    let run = p.mkt(&["status", "--json"]);
    run.code(1);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    (v["targets"].as_array().unwrap().iter())
        .map(|t| {
            (
                t["target"].as_str().unwrap().to_string(),
                t["estimate"].clone(),
            )
        })
        .collect()
}

/// Each target's input tokens as its run's manifest recorded them (what
/// the server reported).
fn reported_input_tokens(p: &Project) -> BTreeMap<String, u64> {
    (p.store_entries().into_iter())
        .map(|r| serde_json::from_slice::<Value>(&r.payload).unwrap())
        .map(|m| {
            let n = m["usage"]["input_tokens"].as_u64().unwrap();
            (m["target"].as_str().unwrap().to_string(), n)
        })
        .collect()
}

#[test]
fn the_estimate_is_the_input_tokens_the_server_then_reports() {
    let api = FakeApi::start(|req, _| Reply::openai("A summary.", reference_tokens(req), 20, 0));
    let p = two_models(
        &openai_model(&api, "gpt-4o-mini", "max_tokens = 64\n"),
        &openai_model(&api, "gpt-4", "max_tokens = 64\n"),
    );
    let before = estimates(&p);
    assert_eq!(before.len(), 10);
    p.mkt_env(&["build", "-j", "4"], ENV).success();
    let reported = reported_input_tokens(&p);
    assert_eq!(reported.len(), 10);
    let mut worst: f64 = 0.0;
    for (target, est) in &before {
        let n = est["input_tokens"].as_u64().unwrap();
        let server = reported[target];
        worst = worst.max((n as f64 - server as f64).abs() / server as f64);
        // counted with the model's tokenizer, the framing included: the
        // very count (the issue asks for 5 %)
        assert_eq!(
            (n, est["input_exact"].as_bool()),
            (server, Some(true)),
            "{target}"
        );
        let tokenizer = if target.starts_with("mini") {
            "o200k_base"
        } else {
            "cl100k_base"
        };
        assert_eq!(est["tokenizer"], tokenizer, "{target}");
        assert_eq!(est["output_from"], "max-tokens", "{target}");
    }
    assert!(worst <= 0.05, "the estimate is {:.1} % off", worst * 100.0);
}

fn priced(api: &FakeApi, id: &str, extra: &str) -> String {
    openai_model(
        api,
        id,
        &format!("price_input_per_mtok = 2.5\nprice_output_per_mtok = 10.0\n{extra}"),
    )
}

/// One document and one model: the dry run's table, before and after a
/// first run (then the output is that run's).
#[test]
fn a_dry_run_prints_the_estimate_per_target_and_in_total() {
    let api = FakeApi::start(|_, _| Reply::openai("A summary.", 50, 40, 0));
    let p = project()
        .file(
            "prompts.toml",
            format!(
                "[targets.s]\nforeach = \"docs/*.md\"\ntemplate = \"t.md\"\noutput = \"out/{{stem}}.md\"\nmodel = \"gpt\"\n\n\
                 [targets.brief]\ntemplate = \"brief.md\"\noutput = \"out/brief.md\"\nmodel = \"gpt\"\n\n\
                 [models.gpt]\n{}",
                priced(&api, "gpt-4o-mini", "max_tokens = 100\n")
            ),
        )
        .file("t.md", TEMPLATE)
        .file("brief.md", "{% for s in targets.s %}{{ s.content }}\n{% endfor %}")
        .file("docs/prose.md", DOCS[0].1)
        .file("docs/code.md", DOCS[1].1)
        .build();
    let legend = "~: approximate (no tokenizer for the model: a token per 4 bytes; or an upstream runs first); OUTPUT: the last run's, else 0..max_tokens\n";
    // `brief` reads the summaries, which do not exist yet: its count is
    // that of its prompt without them, marked approximate
    p.mkt(&["build", "--dry-run"]).success().stdout_eq(&format!(
        "would run s[docs/prose.md] (never built)\n\
         would run s[docs/code.md] (never built)\n\
         would run brief (never built)\n\
         TARGET            INPUT  OUTPUT  COST\n\
         s[docs/prose.md]     92  0..100  $0.00023..$0.00123\n\
         s[docs/code.md]      72  0..100  $0.00018..$0.00118\n\
         brief                ~8  0..100  $0.00002..$0.00102\n\
         total              ~172  0..300  $0.00043..$0.00343\n{legend}"
    ));
    p.mkt_env(&["build"], ENV).success();
    p.append("docs/code.md", "// one more line\n");
    // the edited summary's output is its last run's (40 tokens), and so is
    // `brief`'s, which is now compiled with the summaries on record
    p.mkt(&["build", "--dry-run"]).success().stdout_eq(&format!(
        "would run s[docs/code.md] (foreach file `docs/code.md` changed)\n\
         would run brief (upstream `s[docs/code.md]` is out of date)\n\
         TARGET           INPUT  OUTPUT  COST\n\
         s[docs/code.md]     75  40      $0.0005875\n\
         brief              ~13  40      $0.0004325\n\
         total              ~88  80      $0.00102\n{legend}"
    ));
    // `mkt status` prints the same table below its list
    let status = p.mkt(&["status"]);
    status.code(1);
    let (list, table) = status.stdout.split_once("TARGET").unwrap();
    assert_eq!(
        list,
        "s[docs/code.md]  foreach file `docs/code.md` changed\n\
         brief            upstream `s[docs/code.md]` is out of date\n"
    );
    let dry = p.mkt(&["build", "--dry-run"]);
    assert!(
        dry.stdout.ends_with(&format!("TARGET{table}")),
        "{}",
        status.stdout
    );
    let run = p.mkt(&["status", "--json"]);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    let mut e = v["targets"][0]["estimate"].clone();
    for k in ["cost_usd_low", "cost_usd_high"] {
        let usd = e[k].as_f64().unwrap();
        assert!((usd - 0.0005875).abs() < 1e-12, "{k}: {usd}");
        e[k] = json!("checked");
    }
    assert_eq!(
        e,
        json!({"input_tokens": 75, "input_exact": true, "tokenizer": "o200k_base",
               "output_tokens_low": 40, "output_tokens_high": 40, "output_from": "last-run",
               "cost_usd_low": "checked", "cost_usd_high": "checked"})
    );
    assert_eq!(v["estimate"]["targets"], 2);
    assert_eq!(v["estimate"]["input_tokens"], 88);
    assert_eq!(v["estimate"]["input_exact"], false);
    assert_eq!(v["estimate"]["output_tokens_high"], 80);
    // what was there before is still there
    assert_eq!(v["targets"][0]["state"], "stale");
    assert_eq!(v["total"], 3);
}

#[test]
fn the_cost_cap_refuses_a_build_that_may_cost_more_and_runs_nothing() {
    let api = FakeApi::start(|req, _| Reply::openai("A summary.", reference_tokens(req), 20, 0));
    let p = two_models(
        &priced(&api, "gpt-4o-mini", "max_tokens = 1000\n"),
        &priced(&api, "gpt-4", "max_tokens = 500\n"),
    );
    p.mkt_env(&["build", "--max-cost", "0.02"], ENV)
        .code(2)
        .stdout_eq("")
        .stderr_eq(
            "error: the build may cost up to $0.07687, $0.05687 over its cost cap of $0.02; the dearest of its model calls:\n  \
             mini[docs/prose.md]    up to $0.01023\n  \
             mini[docs/numbers.md]  up to $0.01022\n  \
             mini[docs/code.md]     up to $0.01018\n  \
             mini[docs/german.md]   up to $0.01014\n  \
             mini[docs/chinese.md]  up to $0.01013\n  \
             help: raise the cap (`--max-cost`, or `max_cost_usd` in `prompts.toml`), build fewer targets, or lower `max_tokens`; `mkt build --dry-run` shows the estimate\n",
        );
    assert!(api.requests().is_empty(), "a refused build sent a request");
    assert!(!p.exists("out"));
    assert!(
        !p.exists(".mkt/sync-pending"),
        "a refused build left its store marked as written"
    );
    // under a cap that holds the estimate, it runs
    p.mkt_env(&["build", "--max-cost", "0.08"], ENV).success();
    assert_eq!(api.requests().len(), 10);
}

#[test]
fn an_answer_without_max_tokens_has_no_bound_under_a_cap_in_prompts_toml() {
    let api = FakeApi::start(|_, _| Reply::openai("A summary.", 80, 20, 0));
    let p = project()
        .file(
            "prompts.toml",
            format!(
                "max_cost_usd = 1.0\n\n[targets.s]\nforeach = \"docs/*.md\"\ntemplate = \"t.md\"\noutput = \"out/{{stem}}.md\"\nmodel = \"gpt\"\n\n[models.gpt]\n{}",
                priced(&api, "gpt-4o-mini", "")
            ),
        )
        .file("t.md", TEMPLATE)
        .file("docs/prose.md", DOCS[0].1)
        .file("docs/code.md", DOCS[1].1)
        .build();
    p.mkt_env(&["build"], ENV).code(2).stderr_eq(
        "error: the build's cost has no upper bound, so it may go over its cost cap of $1.00; its model calls, dearest first:\n  \
         s[docs/code.md]   unbounded (no `max_tokens`, and no run on record)\n  \
         s[docs/prose.md]  unbounded (no `max_tokens`, and no run on record)\n  \
         help: set `max_tokens` on their models (or in the targets' `params`) so that an answer's cost has a bound\n",
    );
    assert!(api.requests().is_empty());
    // `--max-cost` wins over `max_cost_usd`; once a run is on record its
    // output bounds the next estimate
    p.replace("prompts.toml", "max_cost_usd = 1.0\n", "");
    p.mkt_env(&["build"], ENV).success();
    p.append("docs/code.md", "// more\n");
    p.replace(
        "prompts.toml",
        "[targets.s]",
        "max_cost_usd = 1.0\n\n[targets.s]",
    );
    p.mkt_env(&["build"], ENV)
        .success()
        .ran_keys(&["s[docs/code.md]"]);
}

#[test]
fn a_cap_that_is_not_a_positive_amount_is_refused() {
    let p = project()
        .file(
            "prompts.toml",
            "max_cost_usd = 0\n[targets.a]\ntemplate = \"t.md\"\noutput = \"a.md\"\n",
        )
        .file("t.md", "hi\n")
        .build();
    p.mkt(&["build"]).code(2).stderr_eq(
        "error: prompts.toml:1:16: `max_cost_usd` is 0, not a positive number of US dollars\n  \
         help: e.g. `max_cost_usd = 5.0`, or remove it for no cap\n",
    );
    p.mkt(&["build", "--max-cost", "-1"]).code(2);
}

/// Six targets whose estimates hold the cap, whose answers then cost more
/// than their last runs (the estimate's output).
fn six_cheap_then_dear(api: &FakeApi) -> Project {
    let mut b = project()
        .file(
            "prompts.toml",
            format!(
                "[targets.t]\nforeach = \"docs/*.txt\"\ntemplate = \"t.md\"\noutput = \"out/{{stem}}.md\"\nmodel = \"m\"\n\n[models.m]\n{}",
                openai_model(
                    api,
                    "gpt-4o-mini",
                    "max_tokens = 2000\nprice_input_per_mtok = 0.0\nprice_output_per_mtok = 1000.0\n"
                )
            ),
        )
        .file("t.md", "user:\n{{ item.content }}\n");
    for i in 0..6 {
        b = b.file(&format!("docs/{i:02}.txt"), format!("doc {i}\n"));
    }
    b.build()
}

/// An answer of `output` tokens ($0.001 each) to 5 input tokens.
fn answer(output: u64) -> Reply {
    Reply::openai("An answer.", 5, output, 0)
}

#[test]
fn the_cost_cap_stops_dispatching_and_the_next_build_goes_on() {
    // the first build's answers are 10 tokens long, the next ones' 100
    let api = FakeApi::start(|_, n| answer(if n < 6 { 10 } else { 100 }));
    let p = six_cheap_then_dear(&api);
    p.mkt_env(&["build"], ENV).success();
    for i in 0..6 {
        p.append(&format!("docs/{i:02}.txt"), "edited\n");
    }
    // each call may cost $0.01 as its last run did, six $0.06; but each
    // costs $0.10: after four ($0.40 spent), a fifth may not start under
    // $0.35
    let run = p.mkt_env(&["build", "-j", "1", "--max-cost", "0.35"], ENV);
    run.code(1)
        .ran_keys(&[
            "t[docs/02.txt]",
            "t[docs/03.txt]",
            "t[docs/04.txt]",
            "t[docs/05.txt]",
        ])
        .skipped(&[
            "t[docs/00.txt]: the cost cap of $0.35 was reached ($0.4 spent or in flight)",
            "t[docs/01.txt]: the cost cap of $0.35 was reached ($0.4 spent or in flight)",
        ])
        .summary("4 ran, 0 cached, 0 up to date, 2 skipped; spent 420 tokens, $0.4");
    assert_eq!(api.requests().len(), 6 + 4);
    // nothing lost: the next build runs only what was skipped
    p.mkt_env(&["build", "--max-cost", "1"], ENV)
        .success()
        .ran_keys(&["t[docs/00.txt]", "t[docs/01.txt]"])
        .summary("2 ran, 0 cached, 4 up to date; spent 210 tokens, $0.2");
    assert_eq!(api.requests().len(), 6 + 6);
    p.mkt(&["status"]).success();
}

#[test]
fn with_many_jobs_the_calls_in_flight_hold_their_share_of_the_cap() {
    // after the first build, one answer of 100 tokens comes at once, and
    // the others, of 10, after half a second
    let api = FakeApi::start(|_, n| match n {
        0..6 => answer(10),
        6 => answer(100),
        _ => answer(10).delay_ms(500),
    });
    let p = six_cheap_then_dear(&api);
    p.mkt_env(&["build"], ENV).success();
    for i in 0..6 {
        p.append(&format!("docs/{i:02}.txt"), "edited\n");
    }
    // with -j 2 two calls go out, each holding $0.01; the first costs
    // $0.10, and while the second is in flight a third would make $0.12,
    // over $0.115 (counting only what was spent, it would start)
    let run = p.mkt_env(&["build", "-j", "2", "--max-cost", "0.115"], ENV);
    run.code(1);
    assert_eq!(run.lines_after("ran ").len(), 2, "{}", run.stderr);
    let skipped = run.lines_after("skipped ");
    assert_eq!(skipped.len(), 4, "{}", run.stderr);
    for s in &skipped {
        assert!(
            s.ends_with(": the cost cap of $0.115 was reached ($0.11 spent or in flight)"),
            "{s}"
        );
    }
    assert_eq!(api.requests().len(), 6 + 2);
    p.mkt_env(&["build"], ENV)
        .success()
        .summary("4 ran, 0 cached, 2 up to date; spent 60 tokens, $0.04");
}
