//! A tokio timer for a deadline that moves on every request but rarely
//! passes: a connection's head and idle deadlines, an upstream exchange's
//! timeout.
//!
//! Moving a tokio timer is a timer-wheel update (a lock, an unlink and a
//! link), and so is arming a fresh one and dropping it. A [`LazyTimer`] is
//! moved only when its deadline comes earlier than the time it is armed
//! for; when it fires for a deadline since pushed back, it is armed again.
//! Moving the deadline itself is a store, and a firing that comes early
//! costs one check.

use std::pin::Pin;
use std::task::Context;

use tokio::time::{Instant, Sleep};

pub struct LazyTimer {
    deadline: Instant,
    /// Armed at or before `deadline`.
    sleep: Pin<Box<Sleep>>,
}

impl LazyTimer {
    pub fn new(deadline: Instant) -> LazyTimer {
        LazyTimer {
            deadline,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Moves the deadline, earlier or later; the timer follows lazily.
    pub fn set(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// Whether the deadline has passed; if not, the timer is armed to wake
    /// `cx` by then. A timer armed for a later time is brought forward; one
    /// that fired for a deadline since pushed back is armed again.
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.deadline < self.sleep.deadline() {
            self.sleep.as_mut().reset(self.deadline);
        }
        while self.sleep.as_mut().poll(cx).is_ready() {
            if Instant::now() >= self.deadline {
                return true;
            }
            self.sleep.as_mut().reset(self.deadline);
        }
        false
    }
}
