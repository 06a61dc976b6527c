//! The estimate's table, as `mkt build --dry-run` and `mkt status` print
//! it, and its JSON, as `mkt status --json` carries it.

use markitect::build::format_usd;
use markitect::estimate::{CostRange, Estimate, OutputBound, TargetEstimate, TokenCount};

/// `412`, or `~412` when approximated.
fn tokens(t: &TokenCount) -> String {
    match t.exact {
        true => t.tokens.to_string(),
        false => format!("~{}", t.tokens),
    }
}

/// `120` (the last run's), `0..256` (up to `max_tokens`), `unbounded`.
fn output(o: OutputBound) -> String {
    range(o.low(), o.high())
}

fn range(low: u64, high: Option<u64>) -> String {
    match high {
        Some(h) if h == low => low.to_string(),
        Some(h) => format!("{low}..{h}"),
        None if low == 0 => "unbounded".into(),
        None => format!("{low}..unbounded"),
    }
}

/// `$0.0012..$0.0043`, `$0.0012` when both ends agree, `-` without prices.
fn cost(c: Option<CostRange>) -> String {
    match c {
        None => "-".into(),
        Some(CostRange { low, high: None }) => format!("{}..unbounded", format_usd(low)),
        Some(CostRange { low, high: Some(h) }) if format_usd(h) == format_usd(low) => {
            format_usd(low)
        }
        Some(CostRange { low, high: Some(h) }) => format!("{}..{}", format_usd(low), format_usd(h)),
    }
}

/// The table's lines: a header, one line per target, the total, and
/// what its marks mean.
pub(super) fn table(est: &Estimate) -> Vec<String> {
    let t = est.totals();
    let mut rows: Vec<[String; 4]> = vec![[
        "TARGET".into(),
        "INPUT".into(),
        "OUTPUT".into(),
        "COST".into(),
    ]];
    rows.extend(est.targets.iter().map(|e: &TargetEstimate| {
        [
            e.target.clone(),
            tokens(&e.input),
            output(e.output),
            cost(e.cost),
        ]
    }));
    rows.push([
        "total".into(),
        tokens(&t.input),
        range(t.output_low, t.output_high),
        cost(t.cost),
    ]);
    let w: Vec<usize> = (0..3)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut lines: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{:w0$}  {:>w1$}  {:w2$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = w[0],
                w1 = w[1],
                w2 = w[2]
            )
        })
        .map(|l| l.trim_end().to_string())
        .collect();
    lines.push(
        "~: approximate (no tokenizer for the model: a token per 4 bytes; or an upstream runs first); OUTPUT: the last run's, else 0..max_tokens"
            .into(),
    );
    lines
}

#[derive(serde::Serialize)]
pub(super) struct TargetJson {
    input_tokens: u64,
    input_exact: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokenizer: Option<&'static str>,
    output_tokens_low: u64,
    /// `null`: unbounded.
    output_tokens_high: Option<u64>,
    output_from: &'static str,
    /// `null` without prices.
    cost_usd_low: Option<f64>,
    /// `null` without prices, or unbounded.
    cost_usd_high: Option<f64>,
}

pub(super) fn target_json(e: &TargetEstimate) -> TargetJson {
    TargetJson {
        input_tokens: e.input.tokens,
        input_exact: e.input.exact,
        tokenizer: e.input.tokenizer,
        output_tokens_low: e.output.low(),
        output_tokens_high: e.output.high(),
        output_from: e.output.source(),
        cost_usd_low: e.cost.map(|c| c.low),
        cost_usd_high: e.cost.and_then(|c| c.high),
    }
}

#[derive(serde::Serialize)]
pub(super) struct TotalJson {
    targets: usize,
    input_tokens: u64,
    input_exact: bool,
    output_tokens_low: u64,
    output_tokens_high: Option<u64>,
    cost_usd_low: Option<f64>,
    cost_usd_high: Option<f64>,
}

pub(super) fn total_json(est: &Estimate) -> TotalJson {
    let t = est.totals();
    TotalJson {
        targets: est.targets.len(),
        input_tokens: t.input.tokens,
        input_exact: t.input.exact,
        output_tokens_low: t.output_low,
        output_tokens_high: t.output_high,
        cost_usd_low: t.cost.map(|c| c.low),
        cost_usd_high: t.cost.and_then(|c| c.high),
    }
}
