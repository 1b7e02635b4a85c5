//! The names a lease's files have in the lock directory.
//!
//! A lease NAME of up to [`MAX_PLAIN`] characters is stored under its own name. A longer one (Lease names
//! may have 253 characters, and a file name at most 255 bytes) is stored under its first
//! [`KEPT_PREFIX`] characters, `~`, and the first 32 hex digits of the SHA-256 of the whole name: `~`
//! never appears in a lease name, so the two kinds never collide, and the record names its lease
//! (`metadata.name`), which every read checks.

use crate::error::Error;
use crate::store::StoreError;
use crate::validate::is_dns1123_subdomain;

/// The longest lease name kept as it is on disk; every file name below stays far under 255 bytes.
pub const MAX_PLAIN: usize = 200;

/// How much of a longer name is kept, for people listing the directory.
const KEPT_PREFIX: usize = 160;

/// The files of one lease, as names inside the lock directory.
#[derive(Clone, Debug)]
pub struct LeaseFiles {
    /// The lease's name.
    pub name: String,
    /// `STEM.json`: the record.
    pub record: String,
    /// `.STEM.last`: the last record written, kept when the record is deleted, so that its resourceVersion
    /// and fencing token never restart and its holder is not forgotten.
    pub last: String,
    /// `.STEM.tmp`: the new record while it is written (left behind only by a crash: the next write of
    /// this lease removes it).
    pub temp: String,
    /// `.STEM.last.tmp`: the new `.STEM.last` while it is put in place.
    pub last_temp: String,
}

impl LeaseFiles {
    /// The files of `name`, which must be a DNS-1123 subdomain, as the API server requires: that keeps
    /// every path inside the directory and clear of mpsync's own dot-files, whatever a caller passes.
    pub fn new(name: &str) -> Result<LeaseFiles, StoreError> {
        if !is_dns1123_subdomain(name) {
            return Err(StoreError::Fatal(Error::File(format!(
                "invalid lease name {name:?} for the file backend: it must be a DNS-1123 subdomain"
            ))));
        }
        let stem = stem(name);
        Ok(LeaseFiles {
            name: name.to_string(),
            record: format!("{stem}.json"),
            last: format!(".{stem}.last"),
            temp: format!(".{stem}.tmp"),
            last_temp: format!(".{stem}.last.tmp"),
        })
    }

    /// The names mpsync writes besides the record: a directory at one of them (made by hand) is in the way
    /// of every write of the lease (see `dir::directory_in_the_way`).
    pub fn written(&self) -> [&str; 3] {
        [&self.temp, &self.last_temp, &self.last]
    }
}

/// What a lease's file names start with.
fn stem(name: &str) -> String {
    if name.len() <= MAX_PLAIN {
        return name.to_string();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let hex: String = digest.as_ref()[..16].iter().map(|byte| format!("{byte:02x}")).collect();
    // Lease names are ASCII: any byte index is a character boundary.
    format!("{}~{hex}", &name[..KEPT_PREFIX])
}

/// A valid lease name of `len` characters (labels of 63 characters joined by dots), for tests.
#[cfg(test)]
pub fn long_name(len: usize, fill: char) -> String {
    let mut name = String::new();
    while name.len() < len {
        name.push(if name.len() % 64 == 63 { '.' } else { fill });
    }
    assert!(is_dns1123_subdomain(&name), "{name}");
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept_as_they_are() {
        let files = LeaseFiles::new("backup").expect("a valid name");
        assert_eq!(
            (files.record.as_str(), files.last.as_str(), files.temp.as_str()),
            ("backup.json", ".backup.last", ".backup.tmp")
        );
        let longest = long_name(MAX_PLAIN, 'a');
        assert_eq!(LeaseFiles::new(&longest).expect("valid").record, format!("{longest}.json"));
    }

    #[test]
    fn every_valid_name_fits_a_file_name_and_long_ones_stay_distinct() {
        let a = long_name(253, 'a');
        let mut b = a.clone();
        b.replace_range(252.., "b");
        let (fa, fb) = (LeaseFiles::new(&a).expect("valid"), LeaseFiles::new(&b).expect("valid"));
        for file in [&fa.record, &fa.last, &fa.temp, &fa.last_temp] {
            assert!(file.len() <= 255, "{} bytes: {file}", file.len());
        }
        assert_ne!(fa.record, fb.record, "names differing only after the kept prefix");
        assert!(fa.record.contains('~'));
        // Stable: a hash that changed between builds would put two versions of mpsync on different files.
        assert_eq!(stem(&a), stem(&a.clone()));
    }

    #[test]
    fn the_hash_is_sha256_of_the_name() {
        let name = long_name(201, 'z');
        let stem = stem(&name);
        // `printf %s NAME | sha256sum | cut -c1-32` finds the same file.
        let expected = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
        let hex: String = expected.as_ref()[..16].iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(stem, format!("{}~{hex}", &name[..160]));
    }

    #[test]
    fn invalid_names_are_refused() {
        for name in ["", "a/b", "../escape", ".hidden", "UPPER", "a~b", "a b", &"a".repeat(254)] {
            assert!(LeaseFiles::new(name).is_err(), "{name:?}");
        }
    }
}
