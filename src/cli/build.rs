//! `mkt build`: prints progress and the summary line.

use camino::Utf8Path;
use clap::Args;
use markitect::build::{BuildOptions, BuildReport, Event, Outcome, Session, build_in};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

#[derive(Args)]
pub struct BuildArgs {
    /// Targets to build: target names, `NAME[item/path]` for one `foreach`
    /// node, or output paths. All targets when none are given.
    targets: Vec<String>,
    /// Concurrent model calls. The default suits slow network models.
    #[arg(short = 'j', long = "jobs", default_value_t = 16)]
    jobs: usize,
    /// Re-run the named targets (all when none are named) even if they are
    /// up to date; what they need is built only if stale.
    #[arg(long)]
    force: bool,
    /// Print only errors.
    #[arg(short, long)]
    quiet: bool,
    /// List what would run and why, without running it.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Build every target that does not depend on a failed one.
    #[arg(short, long)]
    keep_going: bool,
    /// Fail at once if another mkt holds the project lock.
    #[arg(long)]
    no_wait: bool,
    /// `off`: do not use the remote cache for this build.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = ["on", "off"])]
    remote_cache: String,
    /// Before the summary line, print how long each phase of the build
    /// took.
    #[arg(long)]
    timings: bool,
    /// Send the calls of every model with a batch API (openai, anthropic)
    /// through it: half the price, answers within the provider's window
    /// (up to 24 h). Models with `batch = true` do so without it.
    #[arg(long, conflicts_with = "no_batch")]
    batch: bool,
    /// Send every call as an ordinary one, even for models with
    /// `batch = true` (pending batches are still collected).
    #[arg(long)]
    no_batch: bool,
    /// Exit as soon as the batches are submitted (or nothing new needs
    /// submitting) instead of waiting for them; a later `mkt build`
    /// collects what they answered.
    #[arg(long)]
    detach: bool,
    /// The cost cap in US dollars (else `max_cost_usd` in prompts.toml):
    /// refuse to start a build whose estimate may cost more, and stop
    /// dispatching model calls once it is reached.
    #[arg(long, value_name = "USD", value_parser = parse_usd)]
    max_cost: Option<f64>,
}

fn parse_usd(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "`{s}` is not a positive number of US dollars (e.g. `--max-cost 2.50`)"
        )),
    }
}

/// Prints build events: shared by `build` and `watch`.
pub(super) struct Printer {
    quiet: bool,
    tty: bool,
    /// Whether a progress line is on screen (to be cleared before output).
    status_shown: Mutex<bool>,
    /// When the progress line was last drawn: it is redrawn at most every
    /// [`STATUS_EVERY`], so 10,000 fresh targets are not 10,000 writes.
    status_drawn: Mutex<Option<std::time::Instant>>,
    /// The outcomes seen so far in this build, for a summary line when
    /// the build fails after running targets (a full disk as it saves).
    seen: Mutex<BuildReport>,
}

const STATUS_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

impl Printer {
    pub(super) fn new(quiet: bool) -> Printer {
        Printer {
            quiet,
            tty: std::io::stderr().is_terminal(),
            status_shown: Mutex::new(false),
            status_drawn: Mutex::new(None),
            seen: Mutex::new(BuildReport::default()),
        }
    }

    pub(super) fn line(&self, text: &str) {
        let mut shown = self.status_shown.lock().unwrap();
        let mut err = std::io::stderr().lock();
        if *shown {
            let _ = write!(err, "\r\x1b[K");
            *shown = false;
        }
        let _ = writeln!(err, "{}", super::shown(text));
    }

    /// The command's product (the `--dry-run` list) goes to stdout.
    fn stdout(&self, text: &str) {
        let mut shown = self.status_shown.lock().unwrap();
        if *shown {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
            *shown = false;
        }
        println!("{}", super::shown(text));
    }

    /// Draws the progress line; `text` is only made when it is drawn. A
    /// line that must show (`urgent`) is always drawn, progress at most every
    /// [`STATUS_EVERY`].
    pub(super) fn status(&self, urgent: bool, text: impl FnOnce() -> String) {
        if self.quiet || !self.tty {
            return;
        }
        {
            let mut drawn = self.status_drawn.lock().unwrap();
            let now = std::time::Instant::now();
            if !urgent && drawn.is_some_and(|t| now.duration_since(t) < STATUS_EVERY) {
                return;
            }
            *drawn = Some(now);
        }
        let text = text();
        let mut shown = self.status_shown.lock().unwrap();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{}", super::shown(&text));
        let _ = err.flush();
        *shown = true;
    }

    /// Runs `f` while a thread shows, on a terminal, the longest wait for
    /// a model's rate limit under way (`waiting for rate limit, 41 s`).
    pub(super) fn showing_rate_limit_waits<T>(&self, f: impl FnOnce() -> T) -> T {
        if self.quiet || !self.tty {
            return f();
        }
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(250));
                    let left = markitect::exec::rate_limit_wait_left();
                    if let Some(left) = left.filter(|d| d.as_secs() >= 1) {
                        self.status(true, || {
                            format!("waiting for rate limit, {} s", left.as_secs())
                        });
                    }
                }
            });
            let out = f();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            out
        })
    }

    pub(super) fn event(&self, e: Event<'_>) {
        match e {
            Event::WaitingForLock => {
                self.line("mkt: waiting for another mkt build of this project to finish...")
            }
            Event::Planned { total } => {
                *self.seen.lock().unwrap() = BuildReport {
                    total,
                    ..BuildReport::default()
                }
            }
            Event::Started { key, .. } => self.status(false, || format!("running {key}")),
            Event::Warning(w) => self.line(&format!("warning: {w}")),
            Event::BatchPolled {
                batch,
                model,
                progress,
            } if !self.quiet => self.line(&batch_progress_line(batch, model, progress)),
            Event::BatchSubmitted(s) if !self.quiet => self.line(&format!(
                "submitted batch {}: {} to model `{}`",
                s.batch,
                plural(s.requests, "request"),
                s.model
            )),
            Event::BatchNotSubmitted(n) => self.line(&format!(
                "error: {} to model `{}` could not be submitted as a batch:\n{}",
                plural(n.requests.len(), "request"),
                n.model,
                indent(&n.error)
            )),
            Event::BatchPolled { .. } | Event::BatchSubmitted(_) => {}
            Event::ModelDrift(d) => self.line(&format!("warning: {}", drift_text(d))),
            Event::Finished {
                key,
                outcome,
                reason,
                done,
                total,
            } => {
                let why = reason.map(|r| format!(" ({r})")).unwrap_or_default();
                self.seen.lock().unwrap().count(outcome);
                match outcome {
                    Outcome::Failed { error } => self.line(&format!(
                        "error: `{key}` failed{why}:\n{}",
                        indent(&error.to_string())
                    )),
                    Outcome::Skipped { because } if !self.quiet => {
                        self.line(&format!("skipped {key}: {because}"))
                    }
                    Outcome::Ran { batch, .. } if !self.quiet => {
                        let from = (batch.as_ref())
                            .map(|b| format!(" from batch {b}"))
                            .unwrap_or_default();
                        self.line(&format!("ran {key}{why}{from}"))
                    }
                    Outcome::Cached { remote, .. } if !self.quiet => {
                        let from = if *remote {
                            " from the remote cache"
                        } else {
                            ""
                        };
                        self.line(&format!("cached {key}{why}{from}"))
                    }
                    Outcome::Restored if !self.quiet => self.line(&format!("restored {key}{why}")),
                    Outcome::WouldRun => self.stdout(&format!("would run {key}{why}")),
                    _ => {}
                }
                if done < total {
                    self.status(false, || format!("[{done}/{total}]"));
                }
            }
        }
    }
}

impl Printer {
    /// What the outcomes seen say, when any target finished.
    fn summary_so_far(&self, elapsed: std::time::Duration) -> Option<String> {
        let seen = self.seen.lock().unwrap();
        let any = seen.fresh + seen.restored + seen.cached + seen.ran + seen.failed + seen.skipped;
        (any > 0).then(|| summary_line(&seen, elapsed))
    }
}

/// `batch batch_abc (model `gpt`): in_progress, 1,204/5,000 done`.
pub(super) fn batch_progress_line(
    batch: &str,
    model: &str,
    p: &markitect::exec::batch::BatchProgress,
) -> String {
    let failed = if p.failed > 0 {
        format!(", {} failed", thousands(p.failed))
    } else {
        String::new()
    };
    format!(
        "batch {batch} (model `{model}`): {}, {}/{} done{failed}",
        p.status,
        thousands(p.done),
        thousands(p.total)
    )
}

/// `1,204`.
pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1 request`, `3 requests`.
pub(super) fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{} {what}s", thousands(n as u64))
    }
}

/// `1234 tokens, $0.0123`, or `None` when nothing was spent.
fn spend_text(s: &markitect::build::Spend) -> Option<String> {
    if s.tokens == 0 && s.cost_usd == 0.0 {
        return None;
    }
    let mut t = format!("{} tokens", s.tokens);
    if s.cost_usd > 0.0 {
        t.push_str(&format!(", {}", markitect::build::format_usd(s.cost_usd)));
    }
    Some(t)
}

/// `model `gpt` answers as `X` now; 1,204 outputs were made by `Y``, and
/// what to do about it.
pub(super) fn drift_text(d: &markitect::drift::ModelDrift) -> String {
    let made: Vec<String> = (d.before.iter().enumerate())
        .map(|(i, (snapshot, n))| {
            let what = match (i, *n) {
                (0, 1) => "1 output was made by".to_string(),
                (0, n) => format!("{} outputs were made by", markitect::build::format_count(n)),
                (_, n) => format!("{} by", markitect::build::format_count(n)),
            };
            format!("{what} `{snapshot}`")
        })
        .collect();
    format!(
        "model `{}` answers as `{}` now; {}\n\
         help: `mkt status --drift` lists them; `pin = true` on the model makes a change of snapshot an error",
        d.model,
        d.now,
        made.join(", ")
    )
}

/// `prompt cache read 19900 tokens, wrote 200, saved $0.0537`, or `None`
/// when no call read or wrote a provider's prompt cache.
fn prompt_cache_text(c: &markitect::build::PromptCache) -> Option<String> {
    if c.read_tokens == 0 && c.write_tokens == 0 {
        return None;
    }
    let mut t = format!("prompt cache read {} tokens", c.read_tokens);
    if c.write_tokens > 0 {
        t.push_str(&format!(", wrote {}", c.write_tokens));
    }
    if c.priced {
        let usd = markitect::build::format_usd(c.saved_usd.abs());
        if c.saved_usd < 0.0 {
            t.push_str(&format!(", cost {usd} more than uncached"));
        } else {
            t.push_str(&format!(", saved {usd}"));
        }
    }
    Some(t)
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn run(root: &Utf8Path, args: BuildArgs) -> i32 {
    let opts = BuildOptions {
        targets: args.targets.clone(),
        jobs: args.jobs.max(1),
        force: args.force,
        dry_run: args.dry_run,
        keep_going: args.keep_going,
        wait_for_lock: !args.no_wait,
        want_watch_set: false,
        remote_cache: args.remote_cache == "on",
        fetch_only: false,
        batch: match (args.batch, args.no_batch) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        estimate: args.dry_run,
        max_cost_usd: args.max_cost,
    };
    let printer = Printer::new(args.quiet);
    install_interrupt_handler();
    let started = std::time::Instant::now();
    let mut polls = 0u32;
    let mut stuck = 0u32;
    // what the passes before the last did, for the last summary line
    let mut earlier: Option<BuildReport> = None;
    loop {
        let result = build_once(root, &opts, &printer);
        // a batch that ended but whose answers cannot be read, say: the
        // waits between such passes grow to a minute; a dozen is enough
        let progressed = matches!(&result, Ok(r)
            if r.ran + r.cached + r.restored + r.failed > 0 || !r.submitted.is_empty());
        let result = result.map(|r| with_earlier(r, earlier.as_ref()));
        let waits = matches!(&result, Ok(r) if r.pending + r.waiting > 0 && r.no_failure() && !r.interrupted);
        if !waits || opts.dry_run || args.detach {
            return finish(&args, &opts, &printer, result, started);
        }
        let r = result.expect("a build that waits succeeded");
        earlier = Some(r.clone());
        stuck = if progressed { 0 } else { stuck + 1 };
        if stuck >= 12 {
            printer.line("mkt: no batch answer could be collected in a dozen tries; the batches stay on record, a later `mkt build` collects them");
            return finish(&args, &opts, &printer, Ok(r), started);
        }
        if !args.quiet {
            printer.line(&summary_line(&r, started.elapsed()));
            printer.line("waiting for the batches (Ctrl-C leaves them running; a later `mkt build` collects them)");
        }
        let on = |e: markitect::batch::WaitEvent<'_>| match e {
            markitect::batch::WaitEvent::Warning(w) => printer.line(&format!("warning: {w}")),
            markitect::batch::WaitEvent::Polled(polled) => {
                for (id, model, p) in polled {
                    printer.status(true, || batch_progress_line(id, model, p));
                }
            }
        };
        use markitect::batch::WaitEnd;
        match markitect::batch::wait(root, &mut polls, &on) {
            Ok(WaitEnd::Ended) => {}
            Ok(WaitEnd::NothingToWaitFor) => {
                printer.status(true, String::new);
                return finish(&args, &opts, &printer, Ok(r), started);
            }
            Ok(WaitEnd::Interrupted) => {
                printer.status(true, String::new);
                printer.line("mkt: interrupted; the batches run on at the provider, and `mkt build` collects them");
                return 130;
            }
            Err(e) => {
                printer.line(&format!("error: {e}"));
                return e.exit_code();
            }
        }
    }
}

/// The report of a build's last pass with what the passes before it did
/// (a build that waits for batches runs one pass per batch that ends):
/// their runs count once, and what they built is not up to date anew.
fn with_earlier(mut r: BuildReport, earlier: Option<&BuildReport>) -> BuildReport {
    let Some(e) = earlier else { return r };
    r.fresh = r.fresh.saturating_sub(e.ran + e.cached + e.restored);
    r.ran += e.ran;
    r.cached += e.cached;
    r.restored += e.restored;
    r.remote += e.remote;
    r.spent.tokens += e.spent.tokens;
    r.spent.cost_usd += e.spent.cost_usd;
    r.saved.tokens += e.saved.tokens;
    r.saved.cost_usd += e.saved.cost_usd;
    r.batch_saved_usd += e.batch_saved_usd;
    r.prompt_cache.read_tokens += e.prompt_cache.read_tokens;
    r.prompt_cache.write_tokens += e.prompt_cache.write_tokens;
    r.prompt_cache.saved_usd += e.prompt_cache.saved_usd;
    r.prompt_cache.priced |= e.prompt_cache.priced;
    r.submitted.extend(e.submitted.iter().cloned());
    r
}

/// One build (of the passes a batch build makes), its events printed.
fn build_once(
    root: &Utf8Path,
    opts: &BuildOptions,
    printer: &Printer,
) -> markitect::error::Result<BuildReport> {
    let mut session = Session::one_shot();
    let result = printer.showing_rate_limit_waits(|| {
        build_in(root, opts, &mut session, None, &|e| printer.event(e))
    });
    // The process exits next: freeing the project, graph and state the
    // session holds (100,000 allocations at 10,000 targets) would cost a
    // sixth of an incremental build for nothing.
    std::mem::forget(session);
    printer.status(true, String::new);
    result
}

/// Prints the last build's outcome; the exit code.
fn finish(
    args: &BuildArgs,
    opts: &BuildOptions,
    printer: &Printer,
    result: markitect::error::Result<BuildReport>,
    started: std::time::Instant,
) -> i32 {
    match result {
        Err(e) => {
            printer.line(&format!("error: {e}"));
            // still the last line, for scripts, once targets have finished
            if let Some(summary) = printer.summary_so_far(started.elapsed()) {
                printer.line(&summary);
            }
            e.exit_code()
        }
        Ok(r) => {
            if opts.dry_run {
                if let Some(est) = r.estimate.as_ref().filter(|e| !e.targets.is_empty()) {
                    for l in super::estimate::table(est) {
                        printer.stdout(&l);
                    }
                }
                if !args.quiet {
                    printer.line(&format!(
                        "{} of {} targets would run",
                        r.would_run.len(),
                        r.total
                    ));
                }
                return 0;
            }
            // before the summary, which stays the last line (scripts read it)
            if r.stale_outputs > 0 && !args.quiet {
                let n = r.stale_outputs;
                let (what, verb, them) = if n == 1 {
                    ("output of a removed target", "remains", "it")
                } else {
                    ("outputs of removed targets", "remain", "them")
                };
                printer.line(&format!(
                    "{n} {what} {verb}; `mkt clean --stale` removes {them}"
                ));
            }
            if args.timings {
                printer.line(&timings_text(&r.phases));
            }
            if r.pending > 0 && args.detach && !args.quiet {
                printer.line(&format!(
                    "{} waiting in provider batches; `mkt batch status` shows them, a later `mkt build` collects them",
                    plural(r.pending, "target")
                ));
            }
            if !args.quiet || !r.success() {
                printer.line(&summary_line(&r, started.elapsed()));
            }
            if r.interrupted {
                printer.line("mkt: interrupted; targets that finished are saved, `mkt build` goes on from there");
                return 130;
            }
            // `--detach`: what is pending is the point, not a failure
            let pending_ok = args.detach && r.no_failure();
            if r.success() || pending_ok { 0 } else { 1 }
        }
    }
}

/// `--timings`: one line per phase, `   12.3 ms  stat and hash`, then the
/// total of the phases.
fn timings_text(phases: &markitect::build::Phases) -> String {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let mut s = String::from("timings:");
    for (name, d) in &phases.done {
        s.push_str(&format!("\n{:9.1} ms  {name}", ms(*d)));
    }
    let total: std::time::Duration = phases.done.iter().map(|(_, d)| *d).sum();
    s.push_str(&format!("\n{:9.1} ms  in all", ms(total)));
    // model calls overlap: their waits are summed, not a phase of the build
    let waited = markitect::exec::rate_limit_waited();
    if !waited.is_zero() {
        s.push_str(&format!(
            "\nrate limits: requests waited {:.1} s in all",
            waited.as_secs_f64()
        ));
    }
    // where the CPU went: mkt's own work against the commands it ran (a
    // build that spawns a program per target is bound by those spawns)
    let (own_user, own_sys) = cpu_seconds(libc::RUSAGE_SELF);
    let (cmd_user, cmd_sys) = cpu_seconds(libc::RUSAGE_CHILDREN);
    s.push_str(&format!(
        "\ncpu: mkt {:.2} s (user {own_user:.2} s, system {own_sys:.2} s), \
         the commands it ran {:.2} s",
        own_user + own_sys,
        cmd_user + cmd_sys
    ));
    s
}

/// User and system CPU seconds of this process (`RUSAGE_SELF`, all its
/// threads) or of the children it waited for (`RUSAGE_CHILDREN`).
fn cpu_seconds(who: libc::c_int) -> (f64, f64) {
    let mut r = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the zeroed buffer, which
    // is read only when it returned 0.
    if unsafe { libc::getrusage(who, r.as_mut_ptr()) } != 0 {
        return (0.0, 0.0);
    }
    // SAFETY: see above.
    let r = unsafe { r.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(r.ru_utime), secs(r.ru_stime))
}

/// `3 ran, 1 cached, 12 up to date[, 1 failed][, 2 skipped][, 1 from the
/// remote cache] (0.84 s)`.
pub(super) fn summary_line(r: &BuildReport, elapsed: std::time::Duration) -> String {
    let mut s = format!(
        "{} ran, {} cached, {} up to date",
        r.ran,
        r.cached + r.restored,
        r.fresh
    );
    if r.failed > 0 {
        s.push_str(&format!(", {} failed", r.failed));
    }
    if r.skipped > 0 {
        s.push_str(&format!(", {} skipped", r.skipped));
    }
    if r.remote > 0 {
        s.push_str(&format!(", {} from the remote cache", r.remote));
    }
    if r.pending > 0 {
        s.push_str(&format!(", {} pending in batches", r.pending));
    }
    if r.waiting > 0 {
        s.push_str(&format!(", {} waiting for them", r.waiting));
    }
    // only builds that called priced or token-reporting models say so:
    // mock and command builds keep the plain line
    if let Some(spend) = spend_text(&r.spent) {
        s.push_str(&format!("; spent {spend}"));
    }
    if let Some(spend) = spend_text(&r.saved) {
        s.push_str(&format!("; cache saved {spend}"));
    }
    if r.batch_saved_usd > 0.0 {
        let saved = markitect::build::format_usd(r.batch_saved_usd);
        s.push_str(&format!("; batch saved {saved}"));
    }
    if let Some(cached) = prompt_cache_text(&r.prompt_cache) {
        s.push_str(&format!("; {cached}"));
    }
    s.push_str(&format!(" ({:.2} s)", elapsed.as_secs_f64()));
    s
}

/// Ctrl-C / SIGTERM: stop the build (killing running model commands) and
/// save what finished; a second one exits at once.
pub(super) fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        if markitect::exec::interrupted() {
            std::process::exit(130);
        }
        markitect::exec::interrupt();
    });
}
