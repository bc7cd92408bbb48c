//! The parameters of the provider's redirect back to the caller (RFC 6749 §4.1.2), given one
//! by one or as the whole callback URL.

use secrecy::SecretString;
use url::Url;

/// What the callback said: a code, or an error. Always with the state.
#[derive(Debug)]
pub struct CallbackParams {
    pub state: String,
    pub outcome: CallbackOutcome,
}

#[derive(Debug)]
pub enum CallbackOutcome {
    Code(SecretString),
    Error { error: String, description: Option<String> },
}

/// Why a callback could not be read; `field` is the request field to name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {problem}")]
pub struct CallbackUrlError {
    pub field: &'static str,
    pub problem: &'static str,
}

fn bad(field: &'static str, problem: &'static str) -> CallbackUrlError {
    CallbackUrlError { field, problem }
}

/// The longest callback parameter accepted; real codes and states are far shorter.
pub const MAX_PARAM_LEN: usize = 4096;
/// The longest `error` accepted: RFC 6749 error codes are short ASCII words. Kept small because
/// a denial's `error` and `error_description` are echoed back to the caller in the status
/// message and details (response headers, which clients limit to a few KiB).
pub const MAX_ERROR_LEN: usize = 128;
/// The longest `error_description` accepted (see `MAX_ERROR_LEN`).
pub const MAX_ERROR_DESCRIPTION_LEN: usize = 1024;
/// The longest whole callback URL accepted.
pub const MAX_CALLBACK_URL_LEN: usize = 4 * MAX_PARAM_LEN;

impl CallbackParams {
    /// From the individual request fields; empty strings mean absent.
    pub fn from_fields(
        state: &str,
        code: &str,
        error: &str,
        error_description: &str,
    ) -> Result<Self, CallbackUrlError> {
        Self::build(
            (!state.is_empty()).then_some(state),
            (!code.is_empty()).then_some(code),
            (!error.is_empty()).then_some(error),
            (!error_description.is_empty()).then_some(error_description),
            "",
        )
    }

    /// From a callback URL's query. Parameters repeated in the query are refused: a duplicated
    /// `state` or `code` is a sign of tampering, not something to guess about.
    pub fn from_url(callback_url: &str) -> Result<Self, CallbackUrlError> {
        const FIELD: &str = "callback_url";
        if callback_url.len() > MAX_CALLBACK_URL_LEN {
            return Err(bad(FIELD, "is too long"));
        }
        let url = Url::parse(callback_url).map_err(|_| bad(FIELD, "is not an absolute URL"))?;
        let (mut state, mut code, mut error, mut description) = (None, None, None, None);
        for (key, value) in url.query_pairs() {
            let slot = match key.as_ref() {
                "state" => &mut state,
                "code" => &mut code,
                "error" => &mut error,
                "error_description" => &mut description,
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(bad(FIELD, "repeats a callback parameter"));
            }
        }
        Self::build(
            state.as_deref().filter(|s| !s.is_empty()),
            code.as_deref().filter(|s| !s.is_empty()),
            error.as_deref().filter(|s| !s.is_empty()),
            description.as_deref().filter(|s| !s.is_empty()),
            "callback_url.",
        )
    }

    fn build(
        state: Option<&str>,
        code: Option<&str>,
        error: Option<&str>,
        description: Option<&str>,
        prefix: &'static str,
    ) -> Result<Self, CallbackUrlError> {
        let field = |name: &'static str| -> &'static str {
            match (prefix.is_empty(), name) {
                (true, n) => n,
                (false, "state") => "callback_url.state",
                (false, "code") => "callback_url.code",
                (false, "error") => "callback_url.error",
                (false, _) => "callback_url.error_description",
            }
        };
        let state = state.ok_or_else(|| bad(field("state"), "is required"))?;
        for (name, value, max_len) in [
            ("state", Some(state), MAX_PARAM_LEN),
            ("code", code, MAX_PARAM_LEN),
            ("error", error, MAX_ERROR_LEN),
            ("error_description", description, MAX_ERROR_DESCRIPTION_LEN),
        ] {
            if value.is_some_and(|v| v.len() > max_len) {
                return Err(bad(field(name), "is too long"));
            }
            if value.is_some_and(|v| v.chars().any(char::is_control)) {
                return Err(bad(field(name), "contains control characters"));
            }
        }
        let outcome = match (code, error) {
            (_, Some(error)) => CallbackOutcome::Error {
                error: error.to_owned(),
                description: description.map(str::to_owned),
            },
            (Some(code), None) => CallbackOutcome::Code(SecretString::from(code.to_owned())),
            (None, None) => return Err(bad(field("code"), "is required when there is no error")),
        };
        Ok(Self {
            state: state.to_owned(),
            outcome,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn a_code_callback_url_parses() {
        let p = CallbackParams::from_url("https://example.com/cb?code=abc%2Fd&state=xyz&iss=x").unwrap();
        assert_eq!(p.state, "xyz");
        match p.outcome {
            CallbackOutcome::Code(c) => assert_eq!(c.expose_secret(), "abc/d"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_error_callback_wins_over_a_code() {
        let p = CallbackParams::from_url(
            "https://example.com/cb?error=access_denied&error_description=The+user+denied+the+request&state=s",
        )
        .unwrap();
        match p.outcome {
            CallbackOutcome::Error { error, description } => {
                assert_eq!(error, "access_denied");
                assert_eq!(description.as_deref(), Some("The user denied the request"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_callbacks_name_the_field() {
        assert_eq!(CallbackParams::from_url("not a url").unwrap_err().field, "callback_url");
        assert_eq!(
            CallbackParams::from_url("https://x/cb?code=a").unwrap_err().field,
            "callback_url.state"
        );
        assert_eq!(
            CallbackParams::from_url("https://x/cb?state=a").unwrap_err().field,
            "callback_url.code"
        );
        assert_eq!(
            CallbackParams::from_url("https://x/cb?state=a&state=b&code=c")
                .unwrap_err()
                .problem,
            "repeats a callback parameter"
        );
        assert_eq!(CallbackParams::from_fields("", "c", "", "").unwrap_err().field, "state");
        assert_eq!(CallbackParams::from_fields("s", "", "", "").unwrap_err().field, "code");
        assert_eq!(
            CallbackParams::from_fields("s\n", "c", "", "").unwrap_err().field,
            "state"
        );
    }

    #[test]
    fn every_parameter_has_a_length_limit() {
        let long = |n: usize| "e".repeat(n);
        assert!(CallbackParams::from_fields("s", "", &long(MAX_ERROR_LEN), "").is_ok());
        assert_eq!(
            CallbackParams::from_fields("s", "", &long(MAX_ERROR_LEN + 1), "").unwrap_err(),
            bad("error", "is too long")
        );
        assert!(CallbackParams::from_fields("s", "", "denied", &long(MAX_ERROR_DESCRIPTION_LEN)).is_ok());
        assert_eq!(
            CallbackParams::from_fields("s", "", "denied", &long(MAX_ERROR_DESCRIPTION_LEN + 1)).unwrap_err(),
            bad("error_description", "is too long")
        );
        assert_eq!(
            CallbackParams::from_fields("s", &long(MAX_PARAM_LEN + 1), "", "").unwrap_err(),
            bad("code", "is too long")
        );
        let url = format!("https://x/cb?state=s&error={}", long(MAX_ERROR_LEN + 1));
        assert_eq!(
            CallbackParams::from_url(&url).unwrap_err(),
            bad("callback_url.error", "is too long")
        );
        let url = format!("https://x/cb?state=s&code=c&pad={}", long(MAX_CALLBACK_URL_LEN));
        assert_eq!(
            CallbackParams::from_url(&url).unwrap_err(),
            bad("callback_url", "is too long")
        );
    }

    #[test]
    fn the_code_never_shows_in_debug_output() {
        let p = CallbackParams::from_fields("s", "very-secret-code", "", "").unwrap();
        assert!(!format!("{p:?}").contains("very-secret-code"));
    }
}
