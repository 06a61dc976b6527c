//! What a target consumed, and whether it must be built again, in the
//! manner of cargo's fingerprints: the [`Fingerprint`] of a target (its
//! configuration, model, source files and upstream outputs, by digest),
//! the [`DirtyReason`] it is stale for, and [`staleness`], the one place
//! that decides (the state, `state/mod.rs`, stores the fingerprints; the
//! scheduler asks here).

use crate::hash::Digest;
use rustc_hash::FxHashMap as HashMap;
use std::fmt;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DepKind {
    Template,
    Partial,
    Verbatim,
    Input,
    Item,
}

impl DepKind {
    pub(crate) fn code(self) -> u8 {
        self as u8
    }
    pub(crate) fn from_code(c: u8) -> Option<DepKind> {
        Some(match c {
            0 => DepKind::Template,
            1 => DepKind::Partial,
            2 => DepKind::Verbatim,
            3 => DepKind::Input,
            4 => DepKind::Item,
            _ => return None,
        })
    }
    pub fn word(self) -> &'static str {
        match self {
            DepKind::Template => "template",
            DepKind::Partial => "partial",
            DepKind::Verbatim => "verbatim file",
            DepKind::Input => "input",
            DepKind::Item => "foreach file",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dep {
    pub kind: DepKind,
    pub path: String,
    pub digest: Digest,
}

/// What a target's result is a function of, now or at its last build.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    pub config: Digest,
    pub model: Digest,
    pub deps: Vec<Dep>,
    /// Upstream node key and the output digest consumed.
    pub upstream: Vec<(String, Digest)>,
}

/// A target's last build, as the state keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRecord {
    pub fingerprint: Fingerprint,
    pub ibh: Digest,
    pub output: String,
    pub output_digest: Digest,
    pub run_id: String,
    pub failed: bool,
    /// The model snapshot that answered the run that made the output, as
    /// the provider named it (the manifest's `answered_by`); empty when
    /// it named none, or the record predates the field. Kept here so that
    /// a build can tell which snapshots made the outputs without reading
    /// their manifests (`build/drift.rs`).
    pub answered_by: String,
}

/// Why a target must be (re)built: produced by [`dirty_reason`], rendered by
/// `Display`.
/// Serialised (for `--json`) as `{"cause": "file-changed", "kind":
/// "input", "path": "docs/a.md"}` and the like.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "cause", rename_all = "kebab-case")]
pub enum DirtyReason {
    NeverBuilt,
    Forced,
    PreviousRunFailed,
    ModelChanged,
    ConfigChanged,
    FileChanged {
        kind: DepKind,
        path: String,
    },
    FileAdded {
        kind: DepKind,
        path: String,
    },
    FileRemoved {
        kind: DepKind,
        path: String,
    },
    UpstreamChanged {
        target: String,
    },
    /// `--dry-run` and `status` only: an upstream target would be rebuilt,
    /// so this one may have to be too.
    UpstreamStale {
        target: String,
    },
    UpstreamAdded {
        target: String,
    },
    UpstreamRemoved {
        target: String,
    },
    OutputMissing {
        path: String,
    },
    OutputModified {
        path: String,
    },
}

impl fmt::Display for DirtyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirtyReason::NeverBuilt => write!(f, "never built"),
            DirtyReason::Forced => write!(f, "forced"),
            DirtyReason::PreviousRunFailed => write!(f, "previous run failed"),
            DirtyReason::ModelChanged => write!(f, "model parameters changed"),
            DirtyReason::ConfigChanged => write!(f, "target definition in `prompts.toml` changed"),
            DirtyReason::FileChanged { kind, path } => {
                write!(f, "{} `{path}` changed", kind.word())
            }
            DirtyReason::FileAdded { kind, path } => write!(f, "{} `{path}` added", kind.word()),
            DirtyReason::FileRemoved { kind, path } => {
                write!(f, "{} `{path}` removed", kind.word())
            }
            DirtyReason::UpstreamChanged { target } => {
                write!(f, "upstream `{target}` output changed")
            }
            DirtyReason::UpstreamStale { target } => {
                write!(f, "upstream `{target}` is out of date")
            }
            DirtyReason::UpstreamAdded { target } => write!(f, "upstream `{target}` added"),
            DirtyReason::UpstreamRemoved { target } => write!(f, "upstream `{target}` removed"),
            DirtyReason::OutputMissing { path } => write!(f, "output `{path}` missing"),
            DirtyReason::OutputModified { path } => {
                write!(f, "output `{path}` edited since it was built")
            }
        }
    }
}

impl DirtyReason {
    /// True when only the output file needs restoring: the stored result is
    /// still right, no compilation or model call is needed.
    pub fn output_only(&self) -> bool {
        matches!(
            self,
            DirtyReason::OutputMissing { .. } | DirtyReason::OutputModified { .. }
        )
    }
}

/// Compares a target's current fingerprint and output digest with its last
/// record. `None` means fresh.
pub fn dirty_reason(
    record: Option<&TargetRecord>,
    now: &Fingerprint,
    output_path: &str,
    output_digest: Option<Digest>,
) -> Option<DirtyReason> {
    let Some(rec) = record else {
        return Some(DirtyReason::NeverBuilt);
    };
    if rec.failed {
        return Some(DirtyReason::PreviousRunFailed);
    }
    let was = &rec.fingerprint;
    if was.model != now.model {
        return Some(DirtyReason::ModelChanged);
    }
    if was.config != now.config {
        return Some(DirtyReason::ConfigChanged);
    }
    if was.deps != now.deps {
        let old: HashMap<(DepKind, &str), Digest> = was
            .deps
            .iter()
            .map(|d| ((d.kind, d.path.as_str()), d.digest))
            .collect();
        for d in &now.deps {
            match old.get(&(d.kind, d.path.as_str())) {
                None => {
                    return Some(DirtyReason::FileAdded {
                        kind: d.kind,
                        path: d.path.clone(),
                    });
                }
                Some(o) if *o != d.digest => {
                    return Some(DirtyReason::FileChanged {
                        kind: d.kind,
                        path: d.path.clone(),
                    });
                }
                _ => {}
            }
        }
        let new: HashMap<(DepKind, &str), ()> = now
            .deps
            .iter()
            .map(|d| ((d.kind, d.path.as_str()), ()))
            .collect();
        if let Some(d) = was
            .deps
            .iter()
            .find(|d| !new.contains_key(&(d.kind, d.path.as_str())))
        {
            return Some(DirtyReason::FileRemoved {
                kind: d.kind,
                path: d.path.clone(),
            });
        }
        return Some(DirtyReason::ConfigChanged); // same files, other order
    }
    if was.upstream != now.upstream {
        let old: HashMap<&str, Digest> =
            was.upstream.iter().map(|(k, d)| (k.as_str(), *d)).collect();
        for (k, d) in &now.upstream {
            match old.get(k.as_str()) {
                None => return Some(DirtyReason::UpstreamAdded { target: k.clone() }),
                Some(o) if o != d => {
                    return Some(DirtyReason::UpstreamChanged { target: k.clone() });
                }
                _ => {}
            }
        }
        let new: HashMap<&str, ()> = now.upstream.iter().map(|(k, _)| (k.as_str(), ())).collect();
        if let Some((k, _)) = was
            .upstream
            .iter()
            .find(|(k, _)| !new.contains_key(k.as_str()))
        {
            return Some(DirtyReason::UpstreamRemoved { target: k.clone() });
        }
        return Some(DirtyReason::ConfigChanged); // same upstreams, other order
    }
    if rec.output != output_path {
        return Some(DirtyReason::OutputMissing {
            path: output_path.to_string(),
        });
    }
    match output_digest {
        None => Some(DirtyReason::OutputMissing {
            path: output_path.to_string(),
        }),
        Some(d) if d != rec.output_digest => Some(DirtyReason::OutputModified {
            path: output_path.to_string(),
        }),
        Some(_) => None,
    }
}

/// Why a target is stale, if it is: `forced` (`--force` named it), else
/// what [`dirty_reason`] finds comparing `now` with its `record` and its
/// output file (`output_digest`, `None` when it is missing). An upstream
/// output that changed is only out of date when `pending` says that
/// upstream target will itself be rebuilt (`--dry-run` cannot know what
/// it will produce).
pub fn staleness(
    record: Option<&TargetRecord>,
    now: &Fingerprint,
    output_path: &str,
    output_digest: Option<Digest>,
    forced: bool,
    pending: impl Fn(&str) -> bool,
) -> Option<DirtyReason> {
    if forced {
        return Some(DirtyReason::Forced);
    }
    match dirty_reason(record, now, output_path, output_digest)? {
        DirtyReason::UpstreamChanged { target } if pending(&target) => {
            Some(DirtyReason::UpstreamStale { target })
        }
        reason => Some(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(upstream_digest: &[u8]) -> TargetRecord {
        TargetRecord {
            fingerprint: Fingerprint {
                upstream: vec![("up".into(), Digest::of(upstream_digest))],
                ..Default::default()
            },
            ibh: Digest::default(),
            output: "out.md".into(),
            output_digest: Digest::of(b"out"),
            run_id: "r".into(),
            failed: false,
            answered_by: String::new(),
        }
    }

    #[test]
    fn staleness_is_forced_first_and_an_upstream_to_be_rebuilt_is_out_of_date() {
        let rec = record(b"old");
        let now = record(b"new").fingerprint;
        let out = Some(Digest::of(b"out"));
        let is = |forced, pending: bool| {
            staleness(Some(&rec), &now, "out.md", out, forced, |t| {
                pending && t == "up"
            })
        };
        assert_eq!(is(true, true), Some(DirtyReason::Forced));
        let target = "up".to_string();
        assert_eq!(
            is(false, false),
            Some(DirtyReason::UpstreamChanged {
                target: target.clone()
            })
        );
        assert_eq!(is(false, true), Some(DirtyReason::UpstreamStale { target }));
        let same = record(b"old").fingerprint;
        assert_eq!(
            staleness(Some(&rec), &same, "out.md", out, false, |_| true),
            None
        );
    }
}
