//! Checks made once, before any API call, on what a user or a program passes in: Lease names,
//! namespaces, identities and slot counts. Every failure is an `Error::Usage` of one or two lines.

use crate::error::{Error, Result};

/// The most slots a semaphore may have.
pub const MAX_SLOTS: u32 = 1000;

/// A Lease name: a lowercase RFC 1123 subdomain, as the API server validates it.
pub fn name(name: &str) -> Result<()> {
    if is_dns1123_subdomain(name) {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "invalid lease name {name:?}: must be a lowercase RFC 1123 subdomain (lowercase letters, digits, \
         '-' and '.', starting and ending with a letter or digit, at most 253 characters)"
    )))
}

/// A namespace: a lowercase RFC 1123 label.
pub fn namespace(namespace: &str) -> Result<()> {
    let label_ok = namespace.len() <= 63 && is_dns1123_subdomain(namespace) && !namespace.contains('.');
    if label_ok {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "invalid namespace {namespace:?}: must be a lowercase RFC 1123 label (letters, digits and '-', at most 63)"
    )))
}

/// The longest identity: far more than a pod name and a UUID need, far less than a record may hold.
pub const MAX_IDENTITY: usize = 1024;

/// An identity given explicitly: not blank, at most `MAX_IDENTITY` bytes.
pub fn identity(identity: String) -> Result<String> {
    identity_from(identity, "--identity")
}

/// As `identity`, for one that comes from `origin` (the side-car's `POD_NAME`: found by review,
/// helper-165, it was written into Leases and logs unchecked).
pub fn identity_from(identity: String, origin: &str) -> Result<String> {
    if identity.trim().is_empty() {
        return Err(Error::Usage(format!("{origin} must not be empty")));
    }
    // It is printed in logs, errors and `status`: a newline or an escape sequence there would forge lines
    // or move the terminal, a bidi override would show another identity than the one held (found by review).
    if identity.chars().any(is_unshowable) {
        return Err(Error::Usage(format!(
            "{origin} {identity:?} must not contain control, bidi or invisible characters"
        )));
    }
    if identity.len() > MAX_IDENTITY {
        return Err(Error::Usage(format!(
            "{origin} is {} bytes long; at most {MAX_IDENTITY} are allowed",
            identity.len()
        )));
    }
    Ok(identity)
}

/// Whether `c` may not be printed as it is: a control character; a Unicode bidi control (an override,
/// embedding, isolate or mark), which reorders what follows it on a terminal; or one that shows as
/// nothing or as a blank (a format character, a default-ignorable code point, a space other than
/// U+0020, a line or paragraph separator, a blank filler), which makes one name look like another
/// (found by review).
pub fn is_unshowable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00A0}'
                | '\u{00AD}'
                | '\u{034F}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{08E2}'
                | '\u{115F}'..='\u{1160}'
                | '\u{1680}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{2000}'..='\u{200F}'
                | '\u{2028}'..='\u{202F}'
                | '\u{205F}'..='\u{206F}'
                | '\u{2800}'
                | '\u{3000}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

pub fn is_dns1123_subdomain(name: &str) -> bool {
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)
}

/// The Lease objects of a lock: NAME, or NAME-0 .. NAME-(N-1) for a semaphore of N > 1 slots (one slot is
/// the plain lease NAME).
pub fn slot_names(name: &str, slots: Option<u32>) -> Result<Vec<String>> {
    let Some(n) = slots else {
        return Ok(vec![name.to_string()]);
    };
    if !(1..=MAX_SLOTS).contains(&n) {
        return Err(Error::Usage(format!("--slots must be between 1 and {MAX_SLOTS}, not {n}")));
    }
    if n == 1 {
        // One slot is the plain lease: `lock foo --slots 1` and `lock foo` exclude each other.
        return Ok(vec![name.to_string()]);
    }
    let names: Vec<String> = (0..n).map(|slot| format!("{name}-{slot}")).collect();
    self::name(name)?;
    if let Some(last) = names.last()
        && self::name(last).is_err()
    {
        return Err(Error::Usage(format!(
            "lease name is too long for --slots {n}: its last slot's Lease, NAME-{}, would be {} characters (at most 253)",
            n - 1,
            last.len()
        )));
    }
    Ok(names)
}

/// `<POD_NAME or hostname>_<random>`: unique per call, so two processes (or two locks in one process)
/// never share an identity by accident (klock's fixed default let two instances both lead).
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()))
        .unwrap_or_else(|| "mpsync".into());
    format!("{host}_{}", random_hex(4))
}

fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buffer = vec![0u8; bytes];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buffer)).is_ok();
    if !filled {
        // No /dev/urandom (a very bare container): fall back to a pseudo-random number seeded by time, pid
        // and address, still unique per process.
        let mix = crate::retry::random_u64();
        buffer.iter_mut().enumerate().for_each(|(i, b)| *b = (mix >> (8 * (i % 8))) as u8);
    }
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_neither_blank_nor_longer_than_a_record_should_carry() {
        assert!(identity(" ".into()).is_err());
        assert!(identity("x".repeat(MAX_IDENTITY)).is_ok());
        let Err(Error::Usage(message)) = identity("x".repeat(1 << 20)) else { panic!("a 1 MiB identity") };
        assert!(message.contains("1048576 bytes") && message.contains("1024"), "{message}");
        // Found by review: printed in logs and `status`, a newline forged a line.
        let Err(Error::Usage(message)) = identity("a\nholder: b".into()) else { panic!("a newline") };
        assert_eq!(message, r#"--identity "a\nholder: b" must not contain control, bidi or invisible characters"#);
        // Found by review: a right-to-left override shows `job-a` for `a-boj`.
        assert!(identity("\u{202E}boj-a".into()).is_err());
        assert!(identity("\u{2067}x".into()).is_err());
        // Found by review (helper-94): a zero-width space shows `pod\u{200B}-a` as `pod-a`.
        assert!(identity("pod\u{200B}-a".into()).is_err());
        assert!(identity("pod\u{FEFF}".into()).is_err());
        // Found by review (helper-95): tag characters, variation selectors, blank fillers, other spaces.
        for c in ['\u{E0041}', '\u{FE0F}', '\u{3164}', '\u{034F}', '\u{2800}', '\u{202F}', '\u{00A0}', '\u{3000}'] {
            assert!(identity(format!("pod-a{c}")).is_err(), "{:x}", c as u32);
        }
        assert!(identity("Zürich-holder-日本".into()).is_ok());
    }

    #[test]
    fn shown_escapes_what_would_forge_or_reorder_a_line() {
        assert_eq!(crate::lease::shown("pod-1"), "pod-1");
        assert_eq!(crate::lease::shown("a\nb"), r#""a\nb""#);
        assert_eq!(crate::lease::shown("\u{202E}boj-a"), r#""\u{202e}boj-a""#);
        assert_eq!(crate::lease::shown("x\u{200F}"), r#""x\u{200f}""#);
        assert_eq!(crate::lease::shown("pod\u{200B}-a"), r#""pod\u{200b}-a""#);
        // Escaped where `{:?}` would print them as they are.
        assert_eq!(crate::lease::shown("pod-a\u{3164}\u{2800}"), r#""pod-a\u{3164}\u{2800}""#);
        assert_eq!(crate::lease::shown("it's \"x\"\u{200B}"), r#""it's \"x\"\u{200b}""#);
    }

    #[test]
    fn default_identity_is_unique_per_call() {
        assert_ne!(default_identity(), default_identity());
    }

    #[test]
    fn dns1123_subdomain() {
        for good in ["a", "job-1", "a.b.c", "0x"] {
            assert!(is_dns1123_subdomain(good), "{good}");
        }
        for bad in ["", "A", "a_b", "-a", "a-", "a..b", &"x".repeat(254)] {
            assert!(!is_dns1123_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn slots_name_one_lease_each() {
        assert_eq!(slot_names("pool", Some(3)).unwrap(), vec!["pool-0", "pool-1", "pool-2"]);
        assert_eq!(slot_names("pool", None).unwrap(), vec!["pool"]);
        assert_eq!(slot_names("pool", Some(1)).unwrap(), vec!["pool"], "one slot is the plain lease");
        assert!(slot_names("pool", Some(0)).is_err());
        assert!(slot_names(&"x".repeat(252), Some(2)).is_err());
    }

    /// Found by review (helper-155): a name valid alone but too long with its slot suffix was refused by
    /// quoting `NAME-0`, a name the user never gave, as not a valid lease name, with no word of `--slots`.
    #[test]
    fn a_name_too_long_for_its_slots_says_so() {
        let err = slot_names(&"x".repeat(252), Some(2)).unwrap_err().to_string();
        assert!(err.contains("too long for --slots 2") && err.contains("NAME-1") && err.contains("254"), "{err}");
        assert!(!err.contains("-0\""), "{err}");
        assert_eq!(slot_names(&"x".repeat(250), Some(1000)).unwrap_err().to_string().lines().count(), 1);
        let bad = slot_names("Pool", Some(2)).unwrap_err().to_string();
        assert!(bad.contains("\"Pool\""), "the name itself is checked first: {bad}");
    }
}
