//! Mail coming in, on two listeners sharing one server session and socket loop: SMTP
//! submission, through which applications hand volley messages as they would to any
//! mail server (each accepted message is a job of kind `smtp`, stored durably before the
//! 250 and delivered like an API message); and the bounce intake, where receiving
//! servers and feedback loops send what happened later.
//!
//! - [`listener`]: sockets, the connection cap, timeouts, STARTTLS, on the sans-IO
//!   session of [`crate::smtp::server`].
//! - [`intake`]: who may send (authenticated users, trusted networks), rates, and storing.
//! - [`users`]: argon2id password hashes (`volley hash-password`).
//! - [`bounces`], [`reports`]: the bounce and complaint intake — DSNs and ARF reports,
//!   tied to their delivery by a signed VERP address.

pub mod bounces;
pub mod intake;
pub mod listener;
pub mod reports;
pub mod users;

pub use bounces::BounceIntake;
pub use intake::{Intake, Pools, Sender};
pub use listener::{Listener, Policy};
pub use users::{BadHash, Users, hash_password};
