//! Socket helpers shared by the client and other glommio protocol drivers (the load harness's
//! Redis driver): address resolution and a socket split into a reading and a writing half.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// Parses `host:port`. IP literals never block; a host name goes through the system resolver,
/// which can block the executor while it runs (use IP addresses on hot paths).
pub fn resolve(addr: &str) -> io::Result<SocketAddr> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    addr.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, format!("address {addr} resolves to nothing"))
    })
}

/// One direction of the socket. glommio's stream keeps separate readiness sources for reading
/// and writing, so the reader and the writer can each have an operation outstanding; the
/// `RefCell` is borrowed only for the duration of one synchronous `poll_*` call.
pub struct Half(pub Rc<RefCell<TcpStream>>);

fn busy() -> io::Error {
    io::Error::other("socket borrowed twice (bug)")
}

impl AsyncRead for Half {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.0.try_borrow_mut() {
            Ok(mut s) => Pin::new(&mut *s).poll_read(cx, buf),
            Err(_) => Poll::Ready(Err(busy())),
        }
    }
}

impl AsyncWrite for Half {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.0.try_borrow_mut() {
            Ok(mut s) => Pin::new(&mut *s).poll_write(cx, buf),
            Err(_) => Poll::Ready(Err(busy())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.0.try_borrow_mut() {
            Ok(mut s) => Pin::new(&mut *s).poll_flush(cx),
            Err(_) => Poll::Ready(Err(busy())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.0.try_borrow_mut() {
            Ok(mut s) => Pin::new(&mut *s).poll_close(cx),
            Err(_) => Poll::Ready(Err(busy())),
        }
    }
}
