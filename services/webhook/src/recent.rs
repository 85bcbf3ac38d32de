//! The deliveries the webhook stored lately, by the SHA-256 of their body: what GitHub signs.
//! A delivery sent again (GitHub's "Redeliver", or an attacker replaying a captured one, with
//! the same, another or no delivery id) is answered as stored, and not queued twice; a
//! delivery whose publishing failed is released, so that its retry is stored.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// How many deliveries are remembered: hours of GitHub's traffic for a project like Cockpit's,
/// in about half a megabyte.
pub const REMEMBERED: usize = 10_000;

type Fingerprint = [u8; 32];

#[derive(Default)]
pub struct Recent {
    seen: Mutex<(HashSet<Fingerprint>, VecDeque<Fingerprint>)>,
}

/// What identifies a delivery: the digest of its signed body.
pub fn fingerprint(body: &[u8]) -> Fingerprint {
    Sha256::digest(body).into()
}

impl Recent {
    /// Claims a delivery for storing: false when it was stored (or is being stored) already.
    pub fn claim(&self, delivery: Fingerprint) -> bool {
        let mut seen = self.seen.lock().expect("no panics while held");
        let (set, order) = &mut *seen;
        if !set.insert(delivery) {
            return false;
        }
        order.push_back(delivery);
        if order.len() > REMEMBERED
            && let Some(oldest) = order.pop_front()
        {
            set.remove(&oldest);
        }
        true
    }

    /// Gives a claim back: the delivery was not stored, so its retry must be.
    pub fn release(&self, delivery: Fingerprint) {
        let mut seen = self.seen.lock().expect("no panics while held");
        let (set, order) = &mut *seen;
        set.remove(&delivery);
        order.retain(|kept| *kept != delivery);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_claimed_once_until_released_or_forgotten() {
        let recent = Recent::default();
        let a = fingerprint(b"a");
        assert!(recent.claim(a));
        assert!(!recent.claim(a));
        recent.release(a);
        assert!(recent.claim(a));
        for n in 0..REMEMBERED {
            assert!(recent.claim(fingerprint(n.to_string().as_bytes())));
        }
        assert!(recent.claim(a), "the oldest is forgotten past the limit");
        assert!(!recent.claim(fingerprint((REMEMBERED - 1).to_string().as_bytes())));
    }
}
