use super::*;

fn err(text: &str) -> String {
    Prompty::parse(text)
        .unwrap_err()
        .into_error(Utf8Path::new("p.prompty"))
        .to_string()
}

#[test]
fn v1_parameters_and_inputs_are_read_with_their_lines() {
    let p = Prompty::parse(
        "---\nname: Basic\ndescription: d\nmodel:\n  api: chat\n  configuration:\n    azure_deployment: gpt-35-turbo\n  parameters:\n    max_tokens: 128\n    temperature: 0.2\n    stop: END\ninputs:\n  firstName:\n    type: string\n    default: Jane\n  question:\n    type: string\n  count: 3\n---\nsystem:\nHi {{firstName}}\n",
    )
    .unwrap();
    assert_eq!(
        p.params,
        vec![
            Param {
                setting: Setting::MaxTokens,
                written: "max_tokens".into(),
                line: 9,
                value: ParamValue::Count(128)
            },
            Param {
                setting: Setting::Temperature,
                written: "temperature".into(),
                line: 10,
                value: ParamValue::Number(0.2)
            },
            Param {
                setting: Setting::Stop,
                written: "stop".into(),
                line: 11,
                value: ParamValue::Strings(vec!["END".into()])
            },
        ]
    );
    let inputs: Vec<(&str, usize, Option<serde_json::Value>)> = p
        .inputs
        .iter()
        .map(|i| (i.name.as_str(), i.line, i.default.clone()))
        .collect();
    assert_eq!(
        inputs,
        vec![
            ("firstName", 13, Some(serde_json::json!("Jane"))),
            ("question", 16, None),
            ("count", 18, Some(serde_json::json!(3))),
        ]
    );
    // the front matter's 19 lines are blank: line 20 is `system:`
    assert_eq!(p.body.lines().nth(19), Some("system:"));
    assert_eq!(p.body.lines().nth(20), Some("Hi {{firstName}}"));
    assert!(p.body.starts_with("{{ __mkt_role__(\"system\") }}\n"));
}

#[test]
fn v2_options_and_input_lists_are_read_too() {
    let p = Prompty::parse(
        "---\nname: basic-prompt\nmodel:\n  id: gpt-4\n  apiType: chat\n  connection:\n    apiKey: ${env:OPENAI_API_KEY}\n  options:\n    temperature: 0.7\n    maxOutputTokens: 1000\n    stopSequences: [\"##\"]\ninputs:\n  - name: question\n    kind: string\n    default: What is the meaning of life?\n  - name: text\n    kind: string\n---\nuser:\n{{question}}\n",
    )
    .unwrap();
    let keys: Vec<(&str, usize)> = p.params.iter().map(|p| (p.setting.key(), p.line)).collect();
    assert_eq!(keys, [("temperature", 9), ("max_tokens", 10), ("stop", 11)]);
    assert_eq!(p.inputs[0].line, 13);
    assert_eq!(p.inputs[1].default, None);
}

#[test]
fn prompty_role_lines_become_mkt_role_lines() {
    let p = Prompty::parse("  SYSTEM:\nbe brief\n# user :\nhi\nuser: not a role\n").unwrap();
    assert_eq!(
        p.body,
        "{{ __mkt_role__(\"system\") }}system:\nbe brief\nuser:\nhi\nuser: not a role\n"
    );
}

#[test]
fn front_matter_errors_name_the_line() {
    assert_eq!(
        err("---\nname: x\nmodel:\n  parameters:\n    frequency_penalty: 0.5\n---\nhi"),
        "p.prompty:5:1: `frequency_penalty` in `model.parameters` is not a model parameter mkt sends\n  help: mkt sends `temperature`, `max_tokens`, `top_p`, `stop` and `seed` (in `model.options`: `maxOutputTokens`, `topP`, `stopSequences`); remove `frequency_penalty`"
    );
    assert_eq!(
        err("---\nmodel:\n  parameters:\n    temperature: hot\n---\n"),
        "p.prompty:4:1: `temperature` must be a finite number, not `hot`\n  help: e.g. `temperature: 0.2`, `max_tokens: 256`, `stop: [\"END\"]`"
    );
    assert_eq!(
        err("\n---\nname: [x\n---\nhi"),
        "p.prompty:4:1: the front matter is not valid YAML: while parsing a flow sequence, expected ',' or ']'\n  help: the front matter is YAML between two `---` lines"
    );
    assert_eq!(
        err("---\nname: x\nhi\n"),
        "p.prompty:1:1: the front matter opened here is never closed\n  help: end the front matter with a line `---`"
    );
    assert_eq!(
        err("---\nmodel:\n  api: completion\n---\n"),
        "p.prompty:3:1: `model.api` is `completion`, but mkt sends chat messages\n  help: remove `model.api`, or set it to `chat`"
    );
    assert_eq!(
        err("---\ntemplate: mustache\n---\n"),
        "p.prompty:2:1: the template format is `mustache`, but mkt renders Jinja templates\n  help: write the body in Jinja (`{{ name }}`) and remove `template`, or set it to `jinja2`"
    );
    assert_eq!(
        err("---\ninputs:\n  q:\n    default: ${env:Q}\n---\n"),
        "p.prompty:4:1: `${env:Q}` is a Prompty reference, which mkt does not resolve\n  help: a build does not read the environment: write the value out, or bind it from a file in the target's `inputs`"
    );
    assert_eq!(
        err(
            "---\nmodel:\n  parameters:\n    max_tokens: 5\n  options:\n    maxOutputTokens: 6\n---\n"
        ),
        "p.prompty:6:1: `maxOutputTokens` and `max_tokens` both set `max_tokens`\n  help: keep one of them; remove `maxOutputTokens`"
    );
    assert_eq!(
        err("---\n- a\n---\n"),
        "p.prompty:2:1: the front matter is not a YAML mapping\n  help: write `key: value` lines, e.g. `name: summarise`"
    );
    assert_eq!(
        err("---\ninputs:\n  first-name: x\n---\n"),
        "p.prompty:3:1: the input name `first-name` cannot be written bare in a template\n  help: use letters, digits and `_`, not starting with a digit"
    );
}

#[test]
fn no_front_matter_is_all_body() {
    let p = Prompty::parse("Summarise {{ text }}\n").unwrap();
    assert!(p.params.is_empty() && p.inputs.is_empty());
    assert_eq!(
        p.body,
        "{{ __mkt_role__(\"system\") }}Summarise {{ text }}\n"
    );
}

#[test]
fn body_names_skip_what_the_body_sets_and_the_roots() {
    let body = "{{ __mkt_role__(\"system\") }}\n{% for d in docs %}{{ d.x }}{% endfor %}\n{% set y = 1 %}{{ y }}{{ inputs.a }}{{ targets.b }}\n{{ range(3) }}{{ question }} {{ question }}\n";
    let names = body_names(Utf8Path::new("p.prompty"), body).unwrap();
    let got: Vec<(&str, u32)> = names.iter().map(|r| (r.name.as_str(), r.line)).collect();
    assert_eq!(got, [("docs", 2), ("question", 4)]);
}

#[test]
fn parameters_override_the_models_settings_under_mkts_names() {
    let p = Prompty::parse(
        "---\nmodel:\n  options:\n    temperature: 1\n    maxOutputTokens: 64\n    topP: 0.9\n    stopSequences: END\n    seed: -3\n---\nhi\n",
    )
    .unwrap();
    let model = ModelConfig {
        name: "m".into(),
        provider: Provider::Openai,
        settings: crate::config::ModelSettings {
            model: Some("gpt-4o-mini".into()),
            temperature: Some(0.2),
            max_tokens: Some(10),
            ..Default::default()
        },
    };
    let m = p.apply(&model);
    let params = m.hashed_params();
    assert_eq!(
        serde_json::to_value(&params).unwrap(),
        serde_json::json!({"model": "gpt-4o-mini", "temperature": 1.0, "max_tokens": 64,
                           "top_p": 0.9, "stop": ["END"], "seed": -3})
    );
    assert_eq!((m.name.as_str(), m.provider), ("m", Provider::Openai));
}

#[test]
fn every_cut_of_a_prompty_file_is_read_or_refused_never_a_panic() {
    let text = "---\nname: Basic\nmodel:\n  api: chat\n  parameters:\n    temperature: 0.2\n    stop: [\"a\", 'b']\ninputs:\n  q:\n    default: \"x\"\n  - bad\nsample: &s {a: 1}\nother: *s\n---\n# System:\nhi {{ q }}\nuser:\n{% for x in y %}{{ x }}{% endfor %}\n";
    for cut in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
        if let Ok(p) = Prompty::parse(&text[..cut]) {
            let path = Utf8Path::new("t.prompty");
            if crate::template::analyse(path, &p.body).is_ok() {
                body_names(path, &p.body).unwrap();
            }
        }
    }
}
