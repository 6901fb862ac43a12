//! [`SecretToken`]: the one bearer-token type (the API's control token, each remote agent's
//! token): compared exactly and in constant time, never shown.

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Nothing there.
    #[error("the token is empty")]
    Empty,
    /// Spaces, tabs or newlines at either end: HTTP drops them from a header value and they
    /// are invisible in a file, so such a token could not be presented reliably.
    #[error("the token has whitespace at its start or end (a token file may end with one newline, nothing else)")]
    SurroundingWhitespace,
}

/// A secret token. Compared byte for byte (no trimming, no case folding) in time that depends
/// on the lengths only; its `Debug` never shows it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretToken(String);

impl SecretToken {
    /// The token exactly as given (an environment variable, a flag).
    pub fn new(token: &str) -> Result<Self, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        if token.trim() != token {
            return Err(TokenError::SurroundingWhitespace);
        }
        Ok(Self(token.to_string()))
    }

    /// The token from a file's text: the one trailing newline editors and `echo` write
    /// (`\n` or `\r\n`) is not part of it; anything else is.
    pub fn from_file_text(text: &str) -> Result<Self, TokenError> {
        let line = text.strip_suffix('\n').map_or(text, |t| t.strip_suffix('\r').unwrap_or(t));
        Self::new(line)
    }

    /// True when `presented` is exactly the token.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        let mut diff = a.len() ^ b.len();
        for i in 0..a.len().max(b.len()) {
            diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
        }
        std::hint::black_box(diff) == 0
    }

    /// The token, to present it (a QUIC hello); never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The token's bytes, as a key (signing control messages between processes); never log.
    pub fn secret_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        let t = SecretToken::new("secret").unwrap();
        assert!(t.matches("secret"));
        for other in ["secret ", " secret", "secret\n", "Secret", "secre", "secret!", ""] {
            assert!(!t.matches(other), "{other:?}");
        }
        assert_eq!(SecretToken::new("secret "), Err(TokenError::SurroundingWhitespace));
        assert_eq!(SecretToken::new(" secret"), Err(TokenError::SurroundingWhitespace));
        assert_eq!(SecretToken::new("  "), Err(TokenError::SurroundingWhitespace));
        assert_eq!(SecretToken::new(""), Err(TokenError::Empty));
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[test]
    fn a_token_file_may_end_with_one_newline() {
        for text in ["secret\n", "secret\r\n", "secret"] {
            assert!(SecretToken::from_file_text(text).unwrap().matches("secret"), "{text:?}");
        }
        for text in ["secret\n\n", "secret \n", " secret\n", "\n"] {
            assert!(SecretToken::from_file_text(text).is_err(), "{text:?}");
        }
        assert_eq!(SecretToken::from_file_text("\n"), Err(TokenError::Empty));
    }
}
