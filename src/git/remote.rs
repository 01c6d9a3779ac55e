//! One network call to the remote (fetch or push): credentials, the deadline, and the
//! mapping of libgit2's errors to [`GitError`].
//!
//! libgit2 has no per-call timeout. Two things bound a call instead: process-wide socket
//! timeouts (set once, see [`ensure_socket_timeouts`]) catch a silent server, and every
//! callback that libgit2 lets us abort checks the call's deadline. `push_transfer_progress`
//! and `pack_progress` cannot abort (their git2 wrappers return `()`), so a push is checked
//! at credentials, at negotiation (before the upload) and on every sideband message.

use std::cell::RefCell;
use std::sync::Once;
use std::time::{Duration, Instant};

use git2::{CredentialType, ErrorCode, ProxyOptions, RemoteCallbacks};

use super::error::{redact_url, scrub};
use super::{GitAuth, GitError, GitTimeouts, Operation, RemoteSpec};

/// Server messages kept for error reports (a pre-receive hook explains its refusal there).
const MAX_REMOTE_MESSAGES: usize = 4096;

/// Sets libgit2's socket timeouts, once per process: they are C globals, so the first
/// [`GitTimeouts`] seen wins. The daemon has one remote and one configuration, so that is
/// the configured value.
pub(crate) fn ensure_socket_timeouts(timeouts: &GitTimeouts) {
    static ONCE: Once = Once::new();
    let millis = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX).max(1);
    let connect = millis(timeouts.connect);
    // The read/write timeout bounds a stalled socket, where no progress callback fires to
    // notice the deadline. A stall shorter than a connect makes no sense as a limit.
    let io = millis(timeouts.operation.max(timeouts.connect));
    ONCE.call_once(|| {
        // SAFETY: these write plain ints in libgit2's global settings. Every libgit2 network
        // call in this crate goes through `RemoteCall`, whose callers pass this `Once` first,
        // so no libgit2 thread reads the values while they are written, and `Once` orders
        // the write before every later read.
        let results = unsafe {
            [
                git2::opts::set_server_connect_timeout_in_milliseconds(connect),
                git2::opts::set_server_timeout_in_milliseconds(io),
            ]
        };
        for result in results {
            if let Err(e) = result {
                tracing::warn!(error = %e, "cannot set libgit2 socket timeouts");
            }
        }
    });
}

#[derive(Default)]
struct CallState {
    /// Credential types already offered: libgit2 asks again after a refusal, and offering
    /// the same credential again would loop forever.
    tried: Vec<CredentialType>,
    auth_failure: Option<String>,
    timed_out: bool,
    /// `(refname, status)` of every ref the server refused during a push.
    rejected: Vec<(String, String)>,
    remote_messages: String,
}

/// State shared by the callbacks of one fetch or push.
pub(crate) struct RemoteCall<'s> {
    spec: &'s RemoteSpec,
    operation: Operation,
    deadline: Instant,
    limit: Duration,
    state: RefCell<CallState>,
}

impl<'s> RemoteCall<'s> {
    pub(crate) fn new(spec: &'s RemoteSpec, operation: Operation, limit: Duration) -> Self {
        RemoteCall {
            spec,
            operation,
            deadline: Instant::now() + limit,
            limit,
            state: RefCell::new(CallState::default()),
        }
    }

    /// True (and remembered) once the deadline has passed.
    fn expired(&self) -> bool {
        if Instant::now() >= self.deadline {
            self.state.borrow_mut().timed_out = true;
            true
        } else {
            false
        }
    }

    pub(crate) fn proxy_options() -> ProxyOptions<'static> {
        // Honour `http.proxy` and the usual proxy environment variables, as `git` does.
        let mut proxy = ProxyOptions::new();
        proxy.auto();
        proxy
    }

    pub(crate) fn callbacks(&self) -> RemoteCallbacks<'_> {
        let mut callbacks = RemoteCallbacks::new();
        callbacks.credentials(|_url, user_from_url, allowed| {
            if self.expired() {
                return Err(git2::Error::from_str("deadline exceeded"));
            }
            self.credential(user_from_url, allowed)
        });
        callbacks.transfer_progress(|_| !self.expired());
        callbacks.sideband_progress(|data| {
            let text = String::from_utf8_lossy(data);
            let text = scrub(text.trim_end(), &self.spec.url);
            if !text.is_empty() {
                tracing::debug!(remote = %redact_url(&self.spec.url), "remote: {text}");
                let mut state = self.state.borrow_mut();
                if state.remote_messages.len() < MAX_REMOTE_MESSAGES {
                    state.remote_messages.push_str(&text);
                    state.remote_messages.push('\n');
                }
            }
            !self.expired()
        });
        callbacks.push_negotiation(|_| {
            if self.expired() {
                Err(git2::Error::from_str("deadline exceeded"))
            } else {
                Ok(())
            }
        });
        callbacks.push_update_reference(|refname, status| {
            // `Remote::push` returns Ok even when the server refuses a ref; the refusal only
            // shows here.
            if let Some(status) = status {
                self.state
                    .borrow_mut()
                    .rejected
                    .push((refname.to_owned(), scrub(status, &self.spec.url)));
            }
            Ok(())
        });
        callbacks
    }

    fn credential(
        &self,
        user_from_url: Option<&str>,
        allowed: CredentialType,
    ) -> Result<git2::Cred, git2::Error> {
        let mut state = self.state.borrow_mut();
        let mut offer = |kind: CredentialType| {
            if allowed.contains(kind) && !state.tried.contains(&kind) {
                state.tried.push(kind);
                true
            } else {
                false
            }
        };
        let result = match &self.spec.auth {
            GitAuth::None => Err("the remote asks for credentials but none are configured".into()),
            GitAuth::TokenFile(path) => {
                if offer(CredentialType::USER_PASS_PLAINTEXT) {
                    // Read on every use: the file is a mounted secret that may be rotated.
                    match std::fs::read_to_string(path) {
                        Ok(token) if token.trim().is_empty() => {
                            Err(format!("token file {} is empty", path.display()))
                        }
                        Ok(token) => git2::Cred::userpass_plaintext(
                            user_from_url.unwrap_or("x-access-token"),
                            token.trim(),
                        )
                        .map_err(|e| e.message().to_owned()),
                        Err(e) => Err(format!("cannot read token file {}: {e}", path.display())),
                    }
                } else {
                    Err(refused(allowed, "token"))
                }
            }
            GitAuth::SshKey {
                private_key,
                passphrase_file,
            } => {
                let user = user_from_url.unwrap_or("git");
                if offer(CredentialType::USERNAME) {
                    // ssh:// URLs without a user make libgit2 ask for the user name first.
                    git2::Cred::username(user).map_err(|e| e.message().to_owned())
                } else if offer(CredentialType::SSH_KEY) {
                    let passphrase = match passphrase_file {
                        None => Ok(None),
                        Some(path) => std::fs::read_to_string(path)
                            .map(|p| Some(p.trim_end_matches(['\r', '\n']).to_owned()))
                            .map_err(|e| {
                                format!("cannot read passphrase file {}: {e}", path.display())
                            }),
                    };
                    passphrase.and_then(|passphrase| {
                        git2::Cred::ssh_key(user, None, private_key, passphrase.as_deref()).map_err(
                            |e| format!("ssh key {}: {}", private_key.display(), e.message()),
                        )
                    })
                } else {
                    Err(refused(allowed, "ssh key"))
                }
            }
        };
        result.map_err(|message| {
            let error = git2::Error::from_str(&message);
            state.auth_failure = Some(message);
            error
        })
    }

    /// The server's refusal of a ref during the last push, if any.
    pub(crate) fn rejection(&self) -> Option<String> {
        let state = self.state.borrow();
        if state.rejected.is_empty() {
            return None;
        }
        let mut reason = state
            .rejected
            .iter()
            .map(|(refname, status)| format!("{refname}: {status}"))
            .collect::<Vec<_>>()
            .join("; ");
        if !state.remote_messages.is_empty() {
            reason.push_str("; remote said: ");
            reason.push_str(state.remote_messages.trim_end());
        }
        Some(reason)
    }

    /// Maps a libgit2 error of this call to a [`GitError`], using what the callbacks saw.
    pub(crate) fn map_error(&self, error: git2::Error) -> GitError {
        let url = redact_url(&self.spec.url);
        let operation = self.operation;
        let state = self.state.borrow();
        // libgit2's socket stream reports a stalled read as GIT_TIMEOUT, but the smart
        // protocol layers above it pass on only the message.
        let socket_timeout =
            error.class() == git2::ErrorClass::Net && error.message().contains("timed out");
        if state.timed_out || error.code() == ErrorCode::Timeout || socket_timeout {
            return GitError::Timeout {
                operation,
                url,
                after: self.limit,
            };
        }
        if let Some(message) = &state.auth_failure {
            return GitError::Auth {
                operation,
                url,
                message: message.clone(),
            };
        }
        let message = scrub(error.message(), &self.spec.url);
        match error.code() {
            ErrorCode::Auth => GitError::Auth {
                operation,
                url,
                message,
            },
            // libgit2 checks fast-forward itself before uploading, against the refs the
            // server advertised: the usual "someone pushed first" case.
            ErrorCode::NotFastForward if operation == Operation::Push => GitError::Rejected {
                url,
                reason: message,
            },
            _ => GitError::Remote {
                operation,
                url,
                message,
            },
        }
    }
}

fn refused(allowed: CredentialType, what: &str) -> String {
    if allowed.intersects(CredentialType::USER_PASS_PLAINTEXT | CredentialType::SSH_KEY) {
        format!("the remote refused the configured {what}")
    } else {
        format!("the remote asks for credentials of type {allowed:?}, not a {what}")
    }
}
