//! Mail coming in: the SMTP submission listener, through which applications hand volley
//! messages as they would to any mail server. Each accepted message is a job of kind
//! `smtp`, stored durably before the 250 and delivered like an API message.
//!
//! - [`listener`]: sockets, the connection cap, timeouts, STARTTLS, on the sans-IO
//!   session of [`crate::smtp::server`].
//! - [`intake`]: who may send (authenticated users, trusted networks), rates, and storing.
//! - [`users`]: argon2id password hashes (`volley hash-password`).

pub mod intake;
pub mod listener;
pub mod users;

pub use intake::{Intake, Sender};
pub use listener::Listener;
pub use users::{BadHash, Users, hash_password};
