//! Tiny single-threaded wake-up primitives for tasks on one executor.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Wakes one waiting task; a notification sent while nobody waits is kept until the next wait.
#[derive(Default)]
pub struct Notify {
    pending: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Notify {
    /// Wakes the waiter, or makes the next `wait` return at once.
    pub fn notify(&self) {
        self.pending.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Waits for a notification and consumes it.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.pending.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// A flag that, once raised, stays raised and wakes every task waiting on it.
#[derive(Default)]
pub struct Latch {
    raised: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl Latch {
    /// Raises the flag and wakes all waiters.
    pub fn raise(&self) {
        self.raised.set(true);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Whether the flag is raised.
    pub fn is_raised(&self) -> bool {
        self.raised.get()
    }

    /// Returns once the flag is raised.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.raised.get() {
                Poll::Ready(())
            } else {
                let mut wakers = self.wakers.borrow_mut();
                if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }
}
