//! The CLI's one error type: a single line for the operator, with the fix in it,
//! and the exit code scripts can branch on (see the `--help` footer).

/// What went wrong, by exit code; the text is the whole line printed after `error: `.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// Exit 1: the cluster refused, or an object is missing or invalid.
    #[error("{0}")]
    Failed(String),
    /// Exit 2: bad flags, arguments, kubeconfig or context.
    #[error("{0}")]
    Usage(String),
    /// Exit 3: the cluster could not be reached at all.
    #[error("{0}")]
    Unreachable(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Failed(_) => 1,
            Self::Usage(_) => 2,
            Self::Unreachable(_) => 3,
        }
    }
}

/// Where a request went, for error lines: the server URL and the context used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://host:port` of the apiserver.
    pub server: String,
    /// The kubeconfig context name.
    pub context: String,
}

impl Endpoint {
    /// Turns a kube error from doing `what` into one line: unreachable clusters get
    /// exit code 3 and the flags to check; API refusals name the status and reason.
    pub fn error(&self, what: &str, err: kube::Error) -> CliError {
        match err {
            kube::Error::Api(status) => {
                let hint = match status.code {
                    401 => "; the kubeconfig's credentials were rejected, refresh them",
                    403 => "; the kubeconfig's user lacks the permission",
                    _ => "",
                };
                CliError::Failed(format!(
                    "{what} on cluster at {} (context {:?}): {} ({}){hint}",
                    self.server, self.context, status.message, status.code
                ))
            }
            kube::Error::HyperError(_)
            | kube::Error::Service(_)
            | kube::Error::RustlsTls(_)
            | kube::Error::Auth(_) => CliError::Unreachable(format!(
                "cannot reach cluster at {} (context {:?}): {}; check --kubeconfig/--context",
                self.server,
                self.context,
                root_cause(&err)
            )),
            other => CliError::Failed(format!(
                "{what} on cluster at {}: {}",
                self.server,
                root_cause(&other)
            )),
        }
    }
}

/// The innermost error message: "connection refused (os error 111)" says more than
/// "client error (Connect)".
pub fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    let text = current.to_string();
    // io::Error text is capitalised ("Connection refused"); an error line is not.
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => err.to_string(),
    }
}

/// Whether a kube error is the apiserver's 404.
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_cause_is_the_innermost_error_lowercased() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(root_cause(&Outer(io)), "connection refused");
    }

    #[test]
    fn exit_codes_follow_the_help_text() {
        assert_eq!(CliError::Failed(String::new()).exit_code(), 1);
        assert_eq!(CliError::Usage(String::new()).exit_code(), 2);
        assert_eq!(CliError::Unreachable(String::new()).exit_code(), 3);
    }
}
