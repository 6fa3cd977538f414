//! Resource names: what a user may call an instance, flavor, image or host.

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is longer than 63 characters")]
    TooLong,
    #[error("name must start with a lowercase letter")]
    BadStart,
    #[error("name may contain only lowercase letters, digits and '-' (found {0:?})")]
    BadChar(char),
    #[error("name must not end with '-'")]
    BadEnd,
}

/// Checks a resource name: a DNS label (lowercase letters, digits, '-', starting with a
/// letter, at most 63 characters), so it can serve as a guest hostname.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let first = name.chars().next().ok_or(NameError::Empty)?;
    if name.len() > 63 {
        return Err(NameError::TooLong);
    }
    if !first.is_ascii_lowercase() {
        return Err(NameError::BadStart);
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadChar(c));
    }
    if name.ends_with('-') {
        return Err(NameError::BadEnd);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "web1", "web-1", "x2-y3"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name("1web"), Err(NameError::BadStart));
        assert_eq!(validate_name("Web"), Err(NameError::BadStart));
        assert_eq!(validate_name("web_1"), Err(NameError::BadChar('_')));
        assert_eq!(validate_name("web-"), Err(NameError::BadEnd));
        assert_eq!(validate_name(&"a".repeat(64)), Err(NameError::TooLong));
    }
}
