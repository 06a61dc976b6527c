//! One request per shared prompt prefix first: jobs whose prompts share
//! a cache prefix (`exec/cache.rs`, [`crate::exec::cache::prefix_key`])
//! wait until the first of them has been answered, then go all at once,
//! so that they read the provider's cache instead of all writing it.
//!
//! The scheduler's loop owns the gate, so no lock is involved: a worker
//! that prepared a call with a prefix key hands it back instead of calling
//! the model, and the loop either sends it on (the first of its key, or
//! one whose key was answered) or parks it until the first of its key
//! finishes. A build whose prompts have no cache prefix never hands a
//! call back and never touches the gate.

use crate::hash::Digest;
use rustc_hash::FxHashMap as HashMap;

enum Key<T> {
    /// The first call of the key is out; these wait for it.
    Leading { node: usize, parked: Vec<T> },
    /// The first call of the key finished: the rest go at once.
    Answered,
}

/// The prefixes seen so far, and the calls waiting on them.
pub(super) struct PrefixGate<T> {
    keys: HashMap<Digest, Key<T>>,
    /// The node each leading call is for, with its key.
    leading: HashMap<usize, Digest>,
}

/// What to do with a call that arrived at the gate.
#[derive(Debug, PartialEq)]
pub(super) enum Arrival<T> {
    /// Send it now; `first`: it leads its prefix.
    Go { call: T, first: bool },
    /// Parked until the first call of its prefix finishes.
    Parked,
}

impl<T> Default for PrefixGate<T> {
    fn default() -> Self {
        PrefixGate {
            keys: HashMap::default(),
            leading: HashMap::default(),
        }
    }
}

impl<T> PrefixGate<T> {
    /// A call for `node` whose prompt has prefix `key`.
    pub(super) fn arrive(&mut self, key: Digest, node: usize, call: T) -> Arrival<T> {
        match self.keys.get_mut(&key) {
            None => {
                let parked = Vec::new();
                self.keys.insert(key, Key::Leading { node, parked });
                self.leading.insert(node, key);
                Arrival::Go { call, first: true }
            }
            Some(Key::Leading { parked, .. }) => {
                parked.push(call);
                Arrival::Parked
            }
            Some(Key::Answered) => Arrival::Go { call, first: false },
        }
    }

    /// Node `node`'s job finished (however it went): if it led a prefix,
    /// the calls that waited for it, to send now.
    pub(super) fn finished(&mut self, node: usize) -> Vec<T> {
        let Some(key) = self.leading.remove(&node) else {
            return Vec::new();
        };
        match self.keys.insert(key, Key::Answered) {
            Some(Key::Leading { node: n, parked }) if n == node => parked,
            _ => Vec::new(),
        }
    }

    /// Calls still waiting (none once every leading call has finished).
    #[cfg(test)]
    fn parked(&self) -> usize {
        (self.keys.values())
            .map(|k| match k {
                Key::Leading { parked, .. } => parked.len(),
                Key::Answered => 0,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_a_prefix_goes_alone_and_releases_the_rest() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let mut g = PrefixGate::default();
        assert_eq!(
            g.arrive(a, 1, "a1"),
            Arrival::Go {
                call: "a1",
                first: true
            }
        );
        assert_eq!(g.arrive(a, 2, "a2"), Arrival::Parked);
        // another prefix is not held up by the first
        assert_eq!(
            g.arrive(b, 3, "b3"),
            Arrival::Go {
                call: "b3",
                first: true
            }
        );
        assert_eq!(g.arrive(a, 4, "a4"), Arrival::Parked);
        assert_eq!(g.parked(), 2);
        // a node that led nothing releases nothing
        assert!(g.finished(2).is_empty());
        assert_eq!(g.finished(1), ["a2", "a4"]);
        assert!(g.finished(1).is_empty(), "released once");
        // once answered, the prefix's calls go at once, none leading
        assert_eq!(
            g.arrive(a, 5, "a5"),
            Arrival::Go {
                call: "a5",
                first: false
            }
        );
        assert_eq!(g.arrive(b, 6, "b6"), Arrival::Parked);
        assert_eq!(g.finished(3), ["b6"]);
        assert_eq!(g.parked(), 0);
    }
}
