//! What the model calls of a build would cost, before they are made: the
//! input tokens of each compiled prompt, a bound on the output tokens, and
//! the cost those come to at the model's prices.
//!
//! Input tokens are counted with the model family's tokenizer where one
//! ships offline: OpenAI's BPE ranks (`o200k_base`, `cl100k_base`), bundled
//! in the `tiktoken-rs` crate, for the `openai` models whose id they know,
//! plus the chat framing OpenAI documents (3 tokens per message, 3 to
//! prime the answer). Any other model (Anthropic's, a local server's) gets
//! an approximation, a token per 4 bytes of its messages, and says so
//! ([`TokenCount::exact`]).
//!
//! Output tokens: the same target's last recorded run, when there is one
//! that reported usage; else `0..max_tokens`; else unbounded.

use crate::config::{ModelConfig, Provider};
use crate::manifest::Usage;
use crate::template::CompiledPrompt;

/// An OpenAI tokenizer whose ranks the binary carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    O200kBase,
    Cl100kBase,
}

impl Encoding {
    /// The encoding of an OpenAI model id, as tiktoken maps it
    /// (`gpt-4o*`, `gpt-4.1*`, `gpt-5*`, `o1`/`o3`/`o4-mini*`: `o200k_base`;
    /// `gpt-4*`, `gpt-3.5-turbo*`: `cl100k_base`); `None` for any other.
    pub fn for_model(model_id: &str) -> Option<Encoding> {
        use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};
        match get_tokenizer(model_id)? {
            Tokenizer::O200kBase => Some(Encoding::O200kBase),
            Tokenizer::Cl100kBase => Some(Encoding::Cl100kBase),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }

    /// The tokens of `text` as ordinary text (a special token's spelling
    /// in a document is text to the API, not a control token).
    pub fn count(self, text: &str) -> u64 {
        let bpe = match self {
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        };
        bpe.encode_ordinary(text).len() as u64
    }
}

/// OpenAI's chat framing: each message costs 3 tokens besides its role
/// and content, and 3 more prime the answer (the OpenAI cookbook, "How to
/// count tokens with tiktoken", for the gpt-3.5-turbo, gpt-4 and gpt-4o
/// families).
pub const TOKENS_PER_MESSAGE: u64 = 3;
pub const TOKENS_TO_PRIME_THE_REPLY: u64 = 3;

/// The approximation for a model without an offline tokenizer: a token
/// per 4 bytes, rounded up (OpenAI's and Anthropic's rule of thumb for
/// English text; the limiter's `tokens_per_minute` uses the same).
pub fn approx_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// Input tokens of a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TokenCount {
    pub tokens: u64,
    /// Counted with the model's tokenizer, from the prompt that will be
    /// sent; `false` when approximated (shown `~`).
    pub exact: bool,
    /// The tokenizer used, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<&'static str>,
}

/// The input tokens of `prompt` sent to `model`.
pub fn count_prompt(model: &ModelConfig, prompt: &CompiledPrompt) -> TokenCount {
    let encoding = match model.provider {
        Provider::Openai => model
            .settings
            .model
            .as_deref()
            .and_then(Encoding::for_model),
        _ => None,
    };
    match encoding {
        Some(enc) => {
            let framing = |m: &crate::template::Message| {
                TOKENS_PER_MESSAGE + enc.count(&m.role) + enc.count(&m.content)
            };
            let tokens =
                prompt.messages.iter().map(framing).sum::<u64>() + TOKENS_TO_PRIME_THE_REPLY;
            TokenCount {
                tokens,
                exact: true,
                tokenizer: Some(enc.name()),
            }
        }
        None => TokenCount {
            tokens: (prompt.messages.iter())
                .map(|m| approx_tokens(&m.role) + approx_tokens(&m.content))
                .sum(),
            exact: false,
            tokenizer: None,
        },
    }
}

/// Where a target's output tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputBound {
    /// The same target's last recorded run answered with this many.
    LastRun(u64),
    /// No run on record: anything up to the model's `max_tokens`.
    UpTo(u64),
    /// No run on record and no `max_tokens`.
    Unbounded,
}

impl OutputBound {
    pub fn new(last_run: Option<u64>, max_tokens: Option<u64>) -> OutputBound {
        match (last_run, max_tokens) {
            (Some(n), _) => OutputBound::LastRun(n),
            (None, Some(m)) => OutputBound::UpTo(m),
            (None, None) => OutputBound::Unbounded,
        }
    }

    pub fn low(self) -> u64 {
        match self {
            OutputBound::LastRun(n) => n,
            OutputBound::UpTo(_) | OutputBound::Unbounded => 0,
        }
    }

    /// `None`: unbounded.
    pub fn high(self) -> Option<u64> {
        match self {
            OutputBound::LastRun(n) | OutputBound::UpTo(n) => Some(n),
            OutputBound::Unbounded => None,
        }
    }

    /// `last-run`, `max-tokens` or `unbounded` (stable: in `--json`).
    pub fn source(self) -> &'static str {
        match self {
            OutputBound::LastRun(_) => "last-run",
            OutputBound::UpTo(_) => "max-tokens",
            OutputBound::Unbounded => "unbounded",
        }
    }
}

/// A cost range in US dollars; `high: None` when it has no bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostRange {
    pub low: f64,
    pub high: Option<f64>,
}

/// One target's estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetEstimate {
    pub target: String,
    pub model: String,
    pub input: TokenCount,
    pub output: OutputBound,
    /// `None` when the model has no prices.
    pub cost: Option<CostRange>,
}

impl TargetEstimate {
    pub fn new(
        target: String,
        model: &ModelConfig,
        input: TokenCount,
        output: OutputBound,
    ) -> Self {
        TargetEstimate {
            target,
            model: model.name.clone(),
            input,
            output,
            cost: cost_range(model, input.tokens, output),
        }
    }

    /// The most this call may cost (0 for a model without prices); `None`
    /// when unbounded.
    pub fn cost_high(&self) -> Option<f64> {
        self.cost.map_or(Some(0.0), |c| c.high)
    }
}

/// What `input` tokens in and `output` out cost at `model`'s prices. An
/// unbounded output costs an unbounded amount only where output has a
/// price.
pub fn cost_range(model: &ModelConfig, input: u64, output: OutputBound) -> Option<CostRange> {
    let s = &model.settings;
    let usage = |output_tokens| Usage {
        input_tokens: input,
        output_tokens,
        cached_tokens: 0,
        cache_write_tokens: 0,
    };
    let low = s.cost_usd(&usage(output.low()))?;
    let high = match output.high() {
        Some(h) => s.cost_usd(&usage(h)),
        None if s.price_output_per_mtok.unwrap_or(0.0) == 0.0 => Some(low),
        None => None,
    };
    Some(CostRange { low, high })
}

/// The estimate of a build: every target that would call a model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Estimate {
    pub targets: Vec<TargetEstimate>,
}

/// The sums over an [`Estimate`]'s targets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Totals {
    pub input: TokenCount,
    pub output_low: u64,
    /// `None`: some target's output is unbounded.
    pub output_high: Option<u64>,
    /// `None` when no target's model has prices.
    pub cost: Option<CostRange>,
}

impl Estimate {
    pub fn totals(&self) -> Totals {
        let t = &self.targets;
        let cost = t.iter().any(|e| e.cost.is_some()).then(|| CostRange {
            low: t.iter().filter_map(|e| e.cost).map(|c| c.low).sum(),
            high: t.iter().map(TargetEstimate::cost_high).sum(),
        });
        Totals {
            input: TokenCount {
                tokens: t.iter().map(|e| e.input.tokens).sum(),
                exact: t.iter().all(|e| e.input.exact),
                tokenizer: None,
            },
            output_low: t.iter().map(|e| e.output.low()).sum(),
            output_high: t.iter().map(|e| e.output.high()).sum(),
            cost,
        }
    }

    /// The targets whose upper bound costs most, dearest first (an
    /// unbounded one first of all), at most `n`.
    pub fn dearest(&self, n: usize) -> Vec<&TargetEstimate> {
        let mut v: Vec<&TargetEstimate> = self.targets.iter().collect();
        let key = |e: &TargetEstimate| e.cost_high().unwrap_or(f64::INFINITY);
        v.sort_by(|a, b| {
            key(b)
                .total_cmp(&key(a))
                .then_with(|| a.target.cmp(&b.target))
        });
        v.truncate(n);
        v
    }
}

/// Whether a model's calls are estimated: those of the network providers,
/// which take tokens and may have prices (`mock` and `command` report no
/// usage and cannot have prices).
pub fn is_estimated(model: &ModelConfig) -> bool {
    matches!(model.provider, Provider::Openai | Provider::Anthropic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelSettings;
    use crate::template::Message;

    fn model(provider: Provider, id: &str, prices: Option<(f64, f64)>) -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            provider,
            settings: ModelSettings {
                model: Some(id.into()),
                price_input_per_mtok: prices.map(|p| p.0),
                price_output_per_mtok: prices.map(|p| p.1),
                ..Default::default()
            },
        }
    }

    fn prompt(messages: &[(&str, &str)]) -> CompiledPrompt {
        CompiledPrompt {
            messages: (messages.iter())
                .map(|(r, c)| Message {
                    role: r.to_string(),
                    content: c.to_string(),
                })
                .collect(),
            cache_breaks: Vec::new(),
        }
    }

    /// The counts of OpenAI's own tokenizer (Python `tiktoken` 0.14, with
    /// the rank files whose SHA-256 it pins) for the same strings.
    #[test]
    fn openai_encodings_count_as_tiktoken_does() {
        let o = Encoding::O200kBase;
        let c = Encoding::Cl100kBase;
        assert_eq!(o.count("hello world"), 2);
        assert_eq!(c.count("hello world"), 2);
        let s = "Summarize the following document in three sentences.";
        assert_eq!((o.count(s), c.count(s)), (10, 10));
        let t = "Prompt caching: providers discount a prefix they've seen (e.g. 1,024+ tokens).";
        assert_eq!((o.count(t), c.count(t)), (20, 21));
        // a special token's spelling is ordinary text
        assert_eq!(o.count("<|endoftext|>"), 7);
        assert_eq!(o.count("Grüße, 世界! 🦀"), 9);
        assert_eq!(c.count("Grüße, 世界! 🦀"), 12);
        assert_eq!(o.count(""), 0);
    }

    #[test]
    fn model_ids_pick_their_encoding() {
        let cases = [
            ("gpt-4o-mini", Some(Encoding::O200kBase)),
            ("gpt-4o-2024-08-06", Some(Encoding::O200kBase)),
            ("gpt-4.1-nano", Some(Encoding::O200kBase)),
            ("gpt-5", Some(Encoding::O200kBase)),
            ("o3-mini", Some(Encoding::O200kBase)),
            ("gpt-4", Some(Encoding::Cl100kBase)),
            ("gpt-3.5-turbo", Some(Encoding::Cl100kBase)),
            ("llama3.2", None),
            ("claude-sonnet-4-5", None),
        ];
        for (id, want) in cases {
            assert_eq!(Encoding::for_model(id), want, "{id}");
        }
    }

    #[test]
    fn a_chat_prompt_counts_its_framing() {
        let p = prompt(&[("system", "Be brief."), ("user", "hello world")]);
        let n = count_prompt(&model(Provider::Openai, "gpt-4o-mini", None), &p);
        // system(1) + "Be brief."(3) + user(1) + "hello world"(2), + 3 per
        // message, + 3 for the reply
        assert_eq!(n.tokens, 1 + 3 + 1 + 2 + 2 * 3 + 3);
        assert_eq!((n.exact, n.tokenizer), (true, Some("o200k_base")));
    }

    #[test]
    fn other_models_are_approximated_by_bytes() {
        assert_eq!(approx_tokens(""), 0);
        assert_eq!(approx_tokens("abc"), 1);
        assert_eq!(approx_tokens("abcd"), 1);
        assert_eq!(approx_tokens("abcde"), 2);
        let p = prompt(&[("user", &"x".repeat(400))]);
        for m in [
            model(Provider::Anthropic, "claude-sonnet-4-5", None),
            model(Provider::Openai, "llama3.2", None),
        ] {
            let n = count_prompt(&m, &p);
            assert_eq!((n.tokens, n.exact, n.tokenizer), (1 + 100, false, None));
        }
    }

    #[test]
    fn output_comes_from_the_last_run_else_max_tokens() {
        assert_eq!(
            OutputBound::new(Some(40), Some(100)),
            OutputBound::LastRun(40)
        );
        assert_eq!(OutputBound::new(None, Some(100)), OutputBound::UpTo(100));
        assert_eq!(OutputBound::new(None, None), OutputBound::Unbounded);
        assert_eq!(
            (OutputBound::UpTo(100).low(), OutputBound::UpTo(100).high()),
            (0, Some(100))
        );
        assert_eq!(OutputBound::Unbounded.high(), None);
    }

    #[test]
    fn costs_are_ranges_at_the_models_prices() {
        let m = model(Provider::Openai, "gpt-4o-mini", Some((0.15, 0.60)));
        let c = cost_range(&m, 1_000_000, OutputBound::UpTo(1_000_000)).unwrap();
        assert!((c.low - 0.15).abs() < 1e-12 && (c.high.unwrap() - 0.75).abs() < 1e-12);
        assert_eq!(
            cost_range(&m, 10, OutputBound::Unbounded).unwrap().high,
            None
        );
        // no price on output: an unbounded answer costs nothing more
        let input_only = model(Provider::Openai, "gpt-4o-mini", Some((1.0, 0.0)));
        let c = cost_range(&input_only, 1_000_000, OutputBound::Unbounded).unwrap();
        assert_eq!((c.low, c.high), (1.0, Some(1.0)));
        assert_eq!(
            cost_range(
                &model(Provider::Openai, "x", None),
                10,
                OutputBound::Unbounded
            ),
            None
        );
    }

    #[test]
    fn totals_sum_and_the_dearest_come_first() {
        let m = model(Provider::Openai, "gpt-4o-mini", Some((1.0, 2.0)));
        let exact = |n| TokenCount {
            tokens: n,
            exact: true,
            tokenizer: Some("o200k_base"),
        };
        let e = Estimate {
            targets: vec![
                TargetEstimate::new("a".into(), &m, exact(1_000_000), OutputBound::UpTo(0)),
                TargetEstimate::new(
                    "b".into(),
                    &m,
                    exact(2_000_000),
                    OutputBound::LastRun(500_000),
                ),
            ],
        };
        let t = e.totals();
        assert_eq!((t.input.tokens, t.input.exact), (3_000_000, true));
        assert_eq!((t.output_low, t.output_high), (500_000, Some(500_000)));
        assert_eq!(
            t.cost,
            Some(CostRange {
                low: 4.0,
                high: Some(4.0)
            })
        );
        let names: Vec<&str> = e.dearest(5).iter().map(|t| t.target.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        let mut u = e.clone();
        u.targets.push(TargetEstimate::new(
            "c".into(),
            &m,
            exact(1),
            OutputBound::Unbounded,
        ));
        assert_eq!(u.totals().output_high, None);
        assert_eq!(u.totals().cost.unwrap().high, None);
        assert_eq!(u.dearest(1)[0].target, "c");
    }
}
