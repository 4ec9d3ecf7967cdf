//! The Unix sockets the backend listens on, the vhost-user socket and the control socket:
//! bound without ever replacing anything but a stale socket, removed at exit only while
//! they are still the ones this process bound, accept errors backed off, and extra
//! connections refused while the one allowed is being served.

mod backoff;
mod refuse;
mod socket;

#[cfg(test)]
mod tests;

pub use backoff::Backoff;
pub use refuse::Refuser;
pub(crate) use socket::Wait;
pub use socket::{bind, check_free, BoundSocket, SocketError, Waker};
