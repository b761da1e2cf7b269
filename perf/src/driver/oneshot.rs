//! A single-use, single-threaded channel: the Redis reader task hands one reply to the request
//! waiting for it.
//!
//! An `Rc` slot with a waker is all one executor needs. If the [`Sender`] is dropped without
//! sending, the [`Receiver`] resolves to `Err(Canceled)`, so no request waits on a reply that
//! nobody will deliver.

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
pub(crate) struct Sender<T>(Rc<Slot<T>>);

/// The receiving side: a future of the value.
pub(crate) struct Receiver<T>(Rc<Slot<T>>);

/// The sender was dropped without sending.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Canceled;

/// A connected pair.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Rc::new(Slot {
        value: RefCell::new(None),
        waker: Cell::new(None),
        sender_gone: Cell::new(false),
    });
    (Sender(slot.clone()), Receiver(slot))
}

impl<T> Sender<T> {
    /// Delivers `value`; a receiver that is gone never reads it. Dropping `self` wakes it.
    pub(crate) fn send(self, value: T) {
        if let Ok(mut v) = self.0.value.try_borrow_mut() {
            *v = Some(value);
        }
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
