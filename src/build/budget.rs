//! The cost cap of a build (`--max-cost`, `max_cost_usd`) while it runs:
//! what was spent, and what the calls in flight may still cost. A call
//! takes its upper bound out of the budget before it is sent and gives
//! back what it did not spend when it ends, so with `-j N` the calls in
//! flight together never promise more than the cap has left. The first
//! call that does not fit stops the build's dispatching: it and every
//! target not yet started are skipped, with the reason this gives.

use super::report::format_usd;
use std::sync::{Mutex, OnceLock};

pub(crate) struct Budget {
    cap: f64,
    ledger: Mutex<Ledger>,
    /// Why the build stopped dispatching, once it has.
    reached: OnceLock<String>,
}

#[derive(Default)]
struct Ledger {
    spent: f64,
    in_flight: f64,
}

/// Costs are compared with a little slack: a cap met exactly by sums of
/// prices is not refused for a rounding error.
const SLACK: f64 = 1e-12;

impl Budget {
    pub(crate) fn new(cap: f64) -> Budget {
        Budget {
            cap,
            ledger: Mutex::default(),
            reached: OnceLock::new(),
        }
    }

    /// Takes `high` (the most a call may cost; `None`: no bound) out of the
    /// budget, or, when it does not fit, stops the build and says why.
    pub(crate) fn reserve(&self, high: Option<f64>) -> Result<f64, &str> {
        if let Some(why) = self.reached() {
            return Err(why);
        }
        let mut l = self.ledger.lock().unwrap();
        match high {
            Some(h) if l.spent + l.in_flight + h <= self.cap + SLACK => {
                l.in_flight += h;
                Ok(h)
            }
            _ => {
                let why = format!(
                    "the cost cap of {} was reached ({} spent or in flight)",
                    format_usd(self.cap),
                    format_usd(l.spent + l.in_flight)
                );
                drop(l);
                Err(self.reached.get_or_init(|| why))
            }
        }
    }

    /// A call that took `reserved` ended, having cost `cost`.
    pub(crate) fn settle(&self, reserved: f64, cost: f64) {
        let mut l = self.ledger.lock().unwrap();
        l.in_flight = (l.in_flight - reserved).max(0.0);
        l.spent += cost;
    }

    /// Why the build stopped dispatching, once the cap was reached.
    pub(crate) fn reached(&self) -> Option<&str> {
        self.reached.get().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_in_flight_hold_their_upper_bound_until_they_end() {
        let b = Budget::new(1.0);
        assert_eq!(b.reserve(Some(0.4)), Ok(0.4));
        assert_eq!(b.reserve(Some(0.4)), Ok(0.4));
        // 0.8 in flight: a third call of 0.4 may not start...
        b.settle(0.4, 0.1);
        // ...until one ends having spent less than its bound
        assert_eq!(b.reserve(Some(0.4)), Ok(0.4));
        assert_eq!(b.reached(), None);
        let why = b.reserve(Some(0.4)).unwrap_err().to_string();
        assert_eq!(
            why,
            "the cost cap of $1.00 was reached ($0.9 spent or in flight)"
        );
        // once reached, nothing more starts, whatever it costs
        assert_eq!(b.reserve(Some(0.0)), Err(why.as_str()));
        assert_eq!(b.reached(), Some(why.as_str()));
    }

    #[test]
    fn a_call_without_a_bound_does_not_fit_and_an_exact_fit_does() {
        let b = Budget::new(0.3);
        assert_eq!(b.reserve(Some(0.1)), Ok(0.1));
        assert_eq!(b.reserve(Some(0.2)), Ok(0.2));
        let b = Budget::new(1.0);
        assert!(b.reserve(None).is_err());
    }
}
