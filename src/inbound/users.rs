//! Submission users: argon2id password hashes (PHC strings, as `volley hash-password`
//! prints them) and their checking, which takes the same time whether the user exists
//! or not.

use std::collections::HashMap;

use argon2::password_hash::phc::PasswordHash;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};

/// A user's hash that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "submission.users.{user}: not an argon2 PHC hash ({reason}); make one with `volley hash-password`"
)]
pub struct BadHash {
    /// The user whose hash is refused.
    pub user: String,
    /// What the parser said.
    pub reason: String,
}

/// The users who may authenticate, by name.
#[derive(Debug, Clone, Default)]
pub struct Users {
    hashes: HashMap<String, String>,
    /// Checked against when the user is unknown, so that the answer takes as long.
    decoy: String,
}

impl Users {
    /// Users from `name → PHC hash`; every hash is parsed now, so a typo stops the start.
    pub fn new(hashes: impl IntoIterator<Item = (String, String)>) -> Result<Self, BadHash> {
        let hashes: HashMap<String, String> = hashes.into_iter().collect();
        for (user, hash) in &hashes {
            PasswordHash::new(hash).map_err(|e| BadHash {
                user: user.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(Self {
            hashes,
            decoy: hash_password("a password nobody has"),
        })
    }

    /// Whether there is any user.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether `password` is `user`'s. Takes an argon2 computation either way: run it
    /// off the async threads.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.hashes.get(user) {
            Some(hash) => (hash.as_str(), true),
            None => (self.decoy.as_str(), false),
        };
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        matches && known
    }
}

/// An argon2id PHC hash of `password` with a fresh salt.
pub fn hash_password(password: &str) -> String {
    Argon2::default()
        .hash_password(password.as_bytes())
        .expect("argon2 with its default parameters hashes any password")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_unknown_users_do_not() {
        let hash = hash_password("correct horse");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let users = Users::new([("app".to_owned(), hash)]).unwrap();
        assert!(users.verify("app", "correct horse"));
        assert!(!users.verify("app", "wrong"));
        assert!(!users.verify("nobody", "a password nobody has"));
        let bad = Users::new([("x".to_owned(), "plain".to_owned())]).unwrap_err();
        assert!(bad.to_string().starts_with("submission.users.x: "), "{bad}");
    }
}
