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

/// One value handed from one task to another on the same executor: set once, awaited once.
pub struct Slot<T> {
    value: RefCell<Option<T>>,
    ready: Notify,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot { value: RefCell::new(None), ready: Notify::default() }
    }
}

impl<T> Slot<T> {
    /// Puts `value` in the slot and wakes its waiter.
    pub fn set(&self, value: T) {
        *self.value.borrow_mut() = Some(value);
        self.ready.notify();
    }

    /// Waits for the value at most `limit`; `None` when it did not come in time.
    pub async fn wait_for(&self, limit: std::time::Duration) -> Option<T> {
        futures_lite::future::or(
            async {
                loop {
                    if let Some(v) = self.value.borrow_mut().take() {
                        return Some(v);
                    }
                    self.ready.wait().await;
                }
            },
            async {
                glommio::timer::sleep(limit).await;
                None
            },
        )
        .await
    }
}
