//! The delivery ids the webhook stored lately. GitHub's "Redeliver" (and an attacker replaying
//! a captured delivery) sends a delivery again with the same id and signature: it is answered as
//! stored, and not queued twice.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// How many ids are remembered: hours of GitHub's traffic for a project like Cockpit's.
pub const REMEMBERED: usize = 10_000;

#[derive(Default)]
pub struct Recent {
    ids: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl Recent {
    /// Claims `id` for storing: false when it was stored (or is being stored) already.
    pub fn claim(&self, id: &str) -> bool {
        let mut ids = self.ids.lock().expect("no panics while held");
        let (set, order) = &mut *ids;
        if !set.insert(id.to_owned()) {
            return false;
        }
        order.push_back(id.to_owned());
        if order.len() > REMEMBERED
            && let Some(oldest) = order.pop_front()
        {
            set.remove(&oldest);
        }
        true
    }

    /// Gives a claim back: the delivery was not stored, so its retry must be.
    pub fn release(&self, id: &str) {
        let mut ids = self.ids.lock().expect("no panics while held");
        let (set, order) = &mut *ids;
        set.remove(id);
        order.retain(|kept| kept != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_claimed_once_until_released_or_forgotten() {
        let recent = Recent::default();
        assert!(recent.claim("a"));
        assert!(!recent.claim("a"));
        recent.release("a");
        assert!(recent.claim("a"));
        for n in 0..REMEMBERED {
            assert!(recent.claim(&n.to_string()));
        }
        assert!(recent.claim("a"), "the oldest id is forgotten past the limit");
        assert!(!recent.claim(&(REMEMBERED - 1).to_string()));
    }
}
