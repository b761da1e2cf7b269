//! A single-use, single-threaded channel: the reader task hands one response to the request
//! waiting for it.
//!
//! It is an `Rc` slot with a waker, which is all one executor needs (no atomics, no lock). If the
//! [`Sender`] is dropped without sending, the [`Receiver`] resolves to [`Canceled`], so a request
//! never waits on a response nobody will deliver.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

struct Slot<T> {
    value: RefCell<Option<T>>,
    waker: Cell<Option<Waker>>,
    sender_gone: Cell<bool>,
}

/// The sending side; consumed by [`Sender::send`].
pub struct Sender<T>(Rc<Slot<T>>);

/// The receiving side; a future of the value.
pub struct Receiver<T>(Rc<Slot<T>>);

/// The sender was dropped without sending.
#[derive(Debug, PartialEq, Eq)]
pub struct Canceled;

/// A connected pair.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Rc::new(Slot {
        value: RefCell::new(None),
        waker: Cell::new(None),
        sender_gone: Cell::new(false),
    });
    (Sender(slot.clone()), Receiver(slot))
}

impl<T> Sender<T> {
    /// Delivers `value` and wakes the receiver. A receiver that is gone simply never reads it.
    pub fn send(self, value: T) {
        if let Ok(mut v) = self.0.value.try_borrow_mut() {
            *v = Some(value);
        }
        // Drop wakes the receiver.
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.sender_gone.set(true);
        if let Some(w) = self.0.waker.take() {
            w.wake();
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Result<T, Canceled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let taken = self.0.value.try_borrow_mut().ok().and_then(|mut v| v.take());
        if let Some(v) = taken {
            return Poll::Ready(Ok(v));
        }
        if self.0.sender_gone.get() {
            return Poll::Ready(Err(Canceled));
        }
        self.0.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_or_reports_cancel() {
        futures_lite::future::block_on(async {
            let (tx, rx) = channel::<u32>();
            tx.send(7);
            assert_eq!(rx.await, Ok(7));
            let (tx, rx) = channel::<u32>();
            drop(tx);
            assert_eq!(rx.await, Err(Canceled));
        });
    }
}
